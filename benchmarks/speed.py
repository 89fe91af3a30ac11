"""Speed of the MetaFormer dense backbone next to timm's and mmpretrain's, on the same weights.

Measured in one run, interleaving the implementations inside every repeat (so machine load hits
all of them alike) and rotating their order from repeat to repeat:

* backbones, batch 1, forward without gradients and forward + backward, for PoolFormer-S12 and
  -S36 at 800x1216 (detection) and 512x512 (segmentation):
  - ``toolkit``: :class:`metaformer_dense.MetaFormerBackbone` as the configs build it (its
    defaults: channels-last), in eval mode for the forward;
  - ``toolkit-nchw``: the same with ``channels_last=False`` (what the layout alone buys);
  - ``timm``: ``timm.create_model(arch, features_only=True)``, eager;
  - ``mmpretrain``: ``mmpretrain.models.PoolFormer(arch=..., out_indices=(0, 2, 4, 6))``;
* one RetinaNet-S12 training step (``configs/retinanet_poolformer_s12.py``: data preprocessing,
  forward, losses, backward, AdamW step) with each of these backbones;
* scaling of latency and memory with the input's short side (512, 800, 1024, 1333);
* the speed switches of the toolkit backbone: ``compile=True`` and bf16 autocast.

All implementations receive identical weights (random, with layer scales large enough that every
block matters). Before timing, their outputs are compared in fp32 with ``atol=1e-4``: the toolkit's
and mmpretrain's normalised outputs directly; timm's ``features_only`` has no output norms, so
its raw stage outputs are compared with the toolkit's stage outputs before the norms. Parameter
gradients of the toolkit backbone are compared with mmpretrain's as well.

On a CUDA machine the same benchmark runs on the GPU in fp32 and under bf16 autocast, and the
record holds absolute times and ``torch.cuda.max_memory_allocated``. On CPU the record holds
medians labelled as CPU and ratios, with the machine's load average: CPU timings of a shared
machine are only comparable inside one run.

Usage::

    .venv/bin/python benchmarks/speed.py                 # full run, ~20 min on 2 CPU cores
    .venv/bin/python benchmarks/speed.py --quick         # smoke run: S12, small inputs
    .venv/bin/python benchmarks/speed.py --help
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from metaformer_dense import MetaFormerBackbone, convert_state_dict  # noqa: E402

IMPLS = ('toolkit', 'toolkit-nchw', 'timm', 'mmpretrain')
ATOL = 1e-4
SCALE_SHORT_SIDES = (512, 800, 1024, 1333)


# ----------------------------------------------------------------------------------------------
# Building the three implementations on identical weights
# ----------------------------------------------------------------------------------------------
def randomize_(model: nn.Module, seed: int = 0) -> None:
    """Give a toolkit backbone random weights under which every block changes the output.

    ImageNet initialisation sets layer scales to 1e-5/1e-6, which would make all blocks
    near-identities and an agreement check meaningless.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if 'layer_scale' in name:
                p.copy_(0.1 + 0.2 * noise.abs())
            elif 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith('bias'):
                p.copy_(0.02 * noise)
            else:  # conv weights, fan-in scaled so activations stay O(1)
                fan_in = p[0].numel()
                p.copy_(noise / fan_in ** 0.5)


def _copy_by_names(dst: nn.Module, src_state: Dict[str, torch.Tensor],
                   name_map: Dict[str, str]) -> None:
    """Copy ``src_state[name_map[k]]`` into every tensor ``k`` of ``dst``; all must be covered."""
    own = dst.state_dict()
    missing = [k for k in own if name_map.get(k) not in src_state]
    if missing:
        raise RuntimeError(f'no source weight for {len(missing)} keys of {type(dst).__name__} '
                           f'(first: {missing[:3]})')
    dst.load_state_dict({k: src_state[name_map[k]].reshape(own[k].shape) for k in own})


def timm_features(arch: str, state: Dict[str, torch.Tensor]) -> nn.Module:
    """timm ``features_only`` model (no output norms) carrying the toolkit's weights."""
    import timm
    model = timm.create_model(arch, features_only=True, pretrained=False)
    # FeatureListNet flattens `stages.N` into `stages_N`; everything else keeps timm's names.
    names = {k: k.replace('stages_', 'stages.', 1) for k in model.state_dict()}
    _copy_by_names(model, state, names)
    return model


def mmpretrain_poolformer(arch: str, state: Dict[str, torch.Tensor]) -> nn.Module:
    """mmpretrain's PoolFormer with output norms after network positions 0, 2, 4, 6."""
    from mmpretrain.models.backbones import PoolFormer
    size = arch.split('_')[-1]
    # frozen_stages=-1: mmpretrain's default (0) freezes the stem, ours and timm's train it.
    model = PoolFormer(arch=size, out_indices=(0, 2, 4, 6), frozen_stages=-1)
    # The toolkit's converter names every mmpretrain key (official layout) in toolkit terms.
    conv = convert_state_dict(model.state_dict(), reference=state)
    _copy_by_names(model, state, dict(conv.renamed) | {
        k: k for k in model.state_dict() if k not in dict(conv.renamed)})
    return model


def build_backbones(arch: str, impls: Sequence[str], seed: int = 0) -> Dict[str, nn.Module]:
    """The requested implementations of ``arch``, all with the same random weights."""
    ours = MetaFormerBackbone(arch)
    randomize_(ours, seed)
    state = {k: v.contiguous() for k, v in ours.state_dict().items()}
    models = {}
    for impl in impls:
        if impl == 'toolkit':
            models[impl] = ours
        elif impl == 'toolkit-nchw':
            m = MetaFormerBackbone(arch, channels_last=False)
            m.load_state_dict(state)
            models[impl] = m
        elif impl == 'timm':
            models[impl] = timm_features(arch, state)
        elif impl == 'mmpretrain':
            models[impl] = mmpretrain_poolformer(arch, state)
        else:
            raise ValueError(f'unknown implementation {impl!r}; choose from {IMPLS}')
    return models


# ----------------------------------------------------------------------------------------------
# Agreement checks
# ----------------------------------------------------------------------------------------------
def _stage_outputs(model: MetaFormerBackbone, x: torch.Tensor) -> List[torch.Tensor]:
    """Raw stage outputs of a toolkit backbone: the inputs of its output norms.

    (Hooks on the stages themselves would send the backbone down timm's module path, which
    is not the path being measured.)
    """
    raw: List[torch.Tensor] = []
    hooks = [n.register_forward_pre_hook(lambda _m, args: raw.append(args[0]))
             for n in model.out_norms.values()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return raw


def _max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> Tuple[float, float]:
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b)):
        raise RuntimeError(f'output shapes differ: {[tuple(p.shape) for p in a]} vs '
                           f'{[tuple(q.shape) for q in b]}')
    diff = max((p.float() - q.float()).abs().max().item() for p, q in zip(a, b))
    scale = max(q.float().abs().max().item() for q in b)
    return diff, scale


class _NoTF32:
    """Full fp32 matrix products and convolutions on CUDA for the agreement checks (timing keeps
    torch's defaults: cuDNN convolutions in TF32, which differ from fp32 by ~1e-3)."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def check_agreement(models: Dict[str, nn.Module], x: torch.Tensor) -> Dict[str, dict]:
    """Compare every implementation's fp32 outputs with the toolkit's (``atol=1e-4``)."""
    with _NoTF32():
        return _check_agreement(models, x)


def _check_agreement(models: Dict[str, nn.Module], x: torch.Tensor) -> Dict[str, dict]:
    for model in models.values():
        model.eval()  # (mmpretrain's train() returns None, so no chaining)
    ours = models['toolkit']
    result = {}
    with torch.no_grad():
        ref = ours(x)
        ref_raw = _stage_outputs(ours, x)
        for impl, model in models.items():
            if impl == 'toolkit':
                continue
            if impl == 'timm':
                diff, scale = _max_diff(model(x), ref_raw)
                what = 'raw stage outputs (timm features_only has no output norms)'
            else:
                diff, scale = _max_diff(model(x), ref)
                what = 'normalised outputs'
            result[impl] = dict(compared=what, max_abs_diff=diff, max_abs_value=scale,
                                ok=diff <= ATOL)
    return result


def check_gradients(ours: nn.Module, other: nn.Module, x: torch.Tensor) -> dict:
    """Backward through both backbones with the same loss; compare the stem's weight gradient."""
    with _NoTF32():
        return _check_gradients(ours, other, x)


def _check_gradients(ours: nn.Module, other: nn.Module, x: torch.Tensor) -> dict:
    grads = []
    for model in (ours, other):
        model.train()
        model.zero_grad(set_to_none=True)
        sum(o.square().mean() for o in model(x)).backward()
        stem = model.stem.conv if hasattr(model, 'stem') else model.patch_embed.proj
        grads.append(stem.weight.grad.detach().clone())
        model.zero_grad(set_to_none=True)
    diff = (grads[0] - grads[1]).abs().max().item()
    return dict(compared='stem conv weight gradient of sum(mean(out**2))', max_abs_diff=diff,
                max_abs_value=grads[1].abs().max().item(), flows=bool(grads[0].abs().sum() > 0),
                ok=diff <= ATOL and bool(grads[0].abs().sum() > 0))


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _forward(model: nn.Module, x: torch.Tensor, amp: Optional[torch.dtype]) -> None:
    with torch.no_grad(), torch.autocast(x.device.type, dtype=amp or torch.float32,
                                         enabled=amp is not None):
        model(x)


def _forward_backward(model: nn.Module, x: torch.Tensor, amp: Optional[torch.dtype]) -> None:
    with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        outs = model(x)
        loss = sum(o.float().square().mean() for o in outs)
    loss.backward()


def interleaved(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int,
                device: torch.device, progress=None, after: Optional[Callable] = None
                ) -> Dict[str, List[float]]:
    """Time every function once per repeat, rotating their order; return seconds per function."""
    names = list(fns)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            dt = time.perf_counter() - t0
            if after is not None:
                after(name)
            if r >= warmup:
                times[name].append(dt)
            if progress is not None:
                progress.update(1)
    return times


def _summary(times: Dict[str, List[float]], ref: str = 'toolkit') -> Dict[str, dict]:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: dict(median_s=med[k], times_s=v, vs_toolkit=med[k] / med[ref])
            for k, v in times.items()}


def bench_backbones(archs: Sequence[str], sizes: Sequence[Tuple[int, int]], impls: Sequence[str],
                    repeats: int, warmup: int, device: torch.device,
                    amps: Sequence[Optional[torch.dtype]], progress) -> Tuple[list, list]:
    """Backbone forward / forward+backward timings and agreement checks."""
    rows, checks = [], []
    for arch in archs:
        models = build_backbones(arch, impls)
        for m in models.values():
            m.to(device)
        for h, w in sizes:
            x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(device)
            progress.set_postfix_str(f'{arch} {h}x{w}: checking outputs')
            checks.append(dict(arch=arch, input=[h, w], device=device.type,
                               outputs=check_agreement(models, x)))
            for amp in amps:
                for mode in ('forward', 'forward+backward'):
                    progress.set_postfix_str(f'{arch} {h}x{w} {mode} {_amp_name(amp)}')
                    for m in models.values():
                        m.train(mode != 'forward')
                    fn = _forward if mode == 'forward' else _forward_backward
                    fns = {k: (lambda m=m: fn(m, x, amp)) for k, m in models.items()}
                    times = interleaved(
                        fns, repeats, warmup, device, progress,
                        after=lambda k: models[k].zero_grad(set_to_none=True))
                    rows.append(dict(arch=arch, input=[h, w], mode=mode, batch=1,
                                     precision=_amp_name(amp), device=device.type,
                                     impls=_summary(times)))
        if 'mmpretrain' in models:
            small = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(2))
            grad = check_gradients(models['toolkit'], models['mmpretrain'], small.to(device))
            checks.append(dict(arch=arch, input=[128, 96], device=device.type,
                               gradients_vs_mmpretrain=grad))
        del models
        gc.collect()
    return rows, checks


def _amp_name(amp: Optional[torch.dtype]) -> str:
    return 'fp32' if amp is None else f'{str(amp).split(".")[-1]} autocast'


# ----------------------------------------------------------------------------------------------
# RetinaNet training step
# ----------------------------------------------------------------------------------------------
class TimmWithOutputNorms(nn.Module):
    """timm's ``features_only`` model followed by the dense backbone's output GroupNorms.

    Used inside the detector so that all backbones compute the same function; only the stages
    (the part being compared) differ in implementation.
    """

    def __init__(self, features: nn.Module, norms: Sequence[nn.Module]):
        super().__init__()
        self.features = features
        self.norms = nn.ModuleList(norms)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(n(f) for n, f in zip(self.norms, self.features(x)))


def build_retinanets(config: Path, impls: Sequence[str]) -> Dict[str, nn.Module]:
    """RetinaNet-S12 detectors that differ only in the backbone implementation, same weights.

    The detector is built from ``config`` (backbone: the toolkit's, as the config says); for the
    other implementations its backbone is replaced by an equivalent one with the same weights.
    """
    import copy

    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import mmdet_plugin  # noqa: F401  (registers type='MetaFormer')
    from mmpretrain.models.backbones import PoolFormer

    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None  # no ImageNet file needed: random weights below
    init_default_scope('mmdet')
    ref = MODELS.build(cfg.model)
    randomize_(ref.backbone)
    bstate = {k: v.contiguous() for k, v in ref.backbone.state_dict().items()}
    arch, out_indices = ref.backbone.arch, ref.backbone.out_indices
    dets = {}
    for impl in impls:
        if impl == 'toolkit':
            dets[impl] = ref
            continue
        det = copy.deepcopy(ref)
        if impl == 'toolkit-nchw':
            det.backbone = MetaFormerBackbone(arch, out_indices=out_indices, channels_last=False)
            det.backbone.load_state_dict(bstate)
        elif impl == 'timm':
            import timm
            feats = timm.create_model(arch, features_only=True, out_indices=out_indices)
            _copy_by_names(feats, bstate,
                           {k: k.replace('stages_', 'stages.', 1) for k in feats.state_dict()})
            det.backbone = TimmWithOutputNorms(
                feats, [copy.deepcopy(ref.backbone.out_norms[str(i)]) for i in out_indices])
        elif impl == 'mmpretrain':
            det.backbone = PoolFormer(arch=arch.split('_')[-1], frozen_stages=-1,
                                      out_indices=tuple(2 * i for i in out_indices))
            conv = convert_state_dict(det.backbone.state_dict(), reference=bstate)
            ren = dict(conv.renamed)
            _copy_by_names(det.backbone, bstate,
                           {k: ren.get(k, k) for k in det.backbone.state_dict()})
        else:
            raise ValueError(f'unknown implementation {impl!r}')
        dets[impl] = det
    return dets


def bench_retinanet(config: Path, impls: Sequence[str], batch: int, size: Tuple[int, int],
                    repeats: int, warmup: int, device: torch.device, progress) -> dict:
    """Median time of one training step (``model.train_step``) per backbone implementation."""
    from mmengine.optim import OptimWrapper
    from mmdet.testing import demo_mm_inputs

    dets = build_retinanets(config, impls)
    data = demo_mm_inputs(batch_size=batch, image_shapes=[(3, *size)] * batch, num_items=[5] * batch,
                          num_classes=80)
    wrappers = {}
    for impl, det in dets.items():
        det.to(device).train()
        wrappers[impl] = OptimWrapper(torch.optim.AdamW(det.parameters(), lr=1e-4,
                                                        weight_decay=1e-4))
    # The same losses before any update: the detectors compute the same function.
    losses = {}
    with torch.no_grad():
        for impl, det in dets.items():
            processed = det.data_preprocessor(data, True)
            parsed = det.parse_losses(det(**processed, mode='loss'))[0]
            losses[impl] = float(parsed)
    states = {impl: {k: v.clone() for k, v in det.state_dict().items()}
              for impl, det in dets.items()}

    def step(impl):
        dets[impl].train_step(data, wrappers[impl])

    def restore(impl):  # every timed step starts from the same weights
        dets[impl].load_state_dict(states[impl])

    progress.set_postfix_str(f'RetinaNet-S12 train step, {batch}x{size[0]}x{size[1]}')
    times = interleaved({k: (lambda k=k: step(k)) for k in dets}, repeats, warmup, device,
                        progress, after=restore)
    return dict(config=str(config.relative_to(ROOT)), batch=batch, input=list(size),
                device=device.type, step='model.train_step: preprocessing, forward, losses, '
                'backward, AdamW update', initial_loss=losses,
                loss_max_rel_diff=max(abs(v / losses['toolkit'] - 1) for v in losses.values()),
                impls=_summary(times))


# ----------------------------------------------------------------------------------------------
# Scaling with input size (one fresh process per point, for clean peak-memory numbers)
# ----------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS so the next RSS peak counts new memory only."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: peaks after the first may read low
        pass


def scaling_worker(impl: str, arch: str, mode: str, device_name: str, repeats: int,
                   sizes: Sequence[Tuple[int, int]]) -> List[dict]:
    """Measure scaling points, smallest input first, in this fresh process (``--scaling-worker``)."""
    device = torch.device(device_name)
    model = build_backbones(arch, [impl] if impl == 'toolkit' else ['toolkit', impl])[impl]
    model.to(device).train(mode != 'forward')
    fn = _forward if mode == 'forward' else _forward_backward
    # One call first, so one-time costs (kernel libraries' set-up) are in no point's numbers.
    fn(model, torch.randn(1, 3, *sizes[0]).to(device), None)
    model.zero_grad(set_to_none=True)
    rows = []
    for h, w in sizes:
        x = torch.randn(1, 3, h, w).to(device)
        _release_freed_memory()
        if device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            with open('/proc/self/clear_refs', 'w') as f:  # resets the peak RSS (VmHWM)
                f.write('5')
            base = _status_kb('VmRSS') * 1024
        t0 = time.perf_counter()
        fn(model, x, None)
        _sync(device)
        first = time.perf_counter() - t0
        if device.type == 'cuda':
            peak = torch.cuda.max_memory_allocated() - base
            mem_kind = 'torch.cuda.max_memory_allocated minus memory allocated before'
        else:
            peak = _status_kb('VmHWM') * 1024 - base
            mem_kind = ('peak RSS (VmHWM) minus RSS before the call, freed heap returned to the '
                        'OS before each point')
        model.zero_grad(set_to_none=True)
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn(model, x, None)
            _sync(device)
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        rows.append(dict(impl=impl, arch=arch, input=[h, w], mode=mode, device=device.type,
                         first_call_s=first, median_s=statistics.median(times), times_s=times,
                         peak_mem_mb=peak / 2 ** 20, memory=mem_kind))
        del x
    return rows


def scaling_size(short: int) -> Tuple[int, int]:
    """(short, long) with COCO's typical 1.52 aspect, long side a multiple of 32."""
    return short, 32 * round(short * 1.52 / 32)


def bench_scaling(arch: str, points: Sequence[Tuple[str, str]], repeats: int,
                  device: torch.device, progress) -> list:
    """One fresh process per (implementation, mode), each measuring all sizes, smallest first."""
    sizes = [scaling_size(s) for s in SCALE_SHORT_SIDES]
    rows = []
    for impl, mode in points:
        progress.set_postfix_str(f'scaling {impl} {mode}')
        cmd = [sys.executable, str(Path(__file__).resolve()), '--scaling-worker',
               impl, arch, mode, device.type, str(repeats),
               ','.join(f'{h}x{w}' for h, w in sizes)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f'scaling worker failed: {shlex.join(cmd)}\n{out.stderr}')
        rows += json.loads(out.stdout.strip().splitlines()[-1])
        progress.update(len(sizes))
    return rows


# ----------------------------------------------------------------------------------------------
# Speed switches of the toolkit backbone: torch.compile and bf16 autocast
# ----------------------------------------------------------------------------------------------
def bench_switches(arch: str, size: Tuple[int, int], repeats: int, warmup: int,
                   device: torch.device, progress) -> dict:
    """Default vs ``compile=True`` vs bf16 autocast vs NCHW, forward, same weights."""
    base = build_backbones(arch, ['toolkit'])['toolkit'].to(device).eval()
    state = base.state_dict()
    compiled = MetaFormerBackbone(arch, compile=True).to(device).eval()
    compiled.load_state_dict(state)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        ref = base(x)
        progress.set_postfix_str(f'switches: compiling {arch} at {size[0]}x{size[1]}')
        _sync(device)
        t0 = time.perf_counter()
        out_c = compiled(x)
        _sync(device)
        compile_s = time.perf_counter() - t0
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out_bf = base(x)
    diffs = {'compile': _max_diff(out_c, ref)[0], 'bf16 autocast': _max_diff(out_bf, ref)[0]}
    fns = {'toolkit': lambda: _forward(base, x, None),
           'compile': lambda: _forward(compiled, x, None),
           'bf16 autocast': lambda: _forward(base, x, torch.bfloat16)}
    progress.set_postfix_str(f'switches: timing {arch} at {size[0]}x{size[1]}')
    times = interleaved(fns, repeats, warmup, device, progress)
    return dict(arch=arch, input=list(size), mode='forward', device=device.type,
                compile_first_call_s=compile_s, max_abs_diff_vs_fp32_eager=diffs,
                impls=_summary(times))


# ----------------------------------------------------------------------------------------------
# Record
# ----------------------------------------------------------------------------------------------
def _versions() -> Dict[str, str]:
    import importlib.metadata as md
    out = {'python': platform.python_version()}
    for pkg in ('torch', 'timm', 'mmengine', 'mmcv', 'mmdet', 'mmpretrain'):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = 'not installed'
    return out


def _machine(device: torch.device) -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    info = dict(cpu=cpu, logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                platform=platform.platform(), device=device.type)
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def _ms(s: float) -> str:
    return f'{s * 1e3:.0f} ms' if s < 10 else f'{s:.1f} s'


def to_markdown(rec: dict) -> str:
    """Render a record as the markdown file committed next to the JSON."""
    gpu = rec['machine']['device'] == 'cuda'
    lab = '' if gpu else ' (CPU)'
    lines = [f'# Backbone speed: toolkit vs timm vs mmpretrain ({rec["machine"]["device"].upper()})',
             '',
             f'Recorded {rec["date"]} by `{rec["command"]}`.', '',
             f'Machine: {rec["machine"]["cpu"]}, {rec["machine"]["logical_cpus"]} logical CPUs, '
             f'torch threads {rec["machine"]["torch_threads"]}'
             + (f', GPU {rec["machine"].get("gpu")}' if gpu else '')
             + f'; load average before/after the run: {rec["load_avg_before"]} / '
             f'{rec["load_avg_after"]}.', '',
             'Versions: ' + ', '.join(f'{k} {v}' for k, v in rec['versions'].items()) + '.', '',
             f'Each cell is the median of {rec["repeats"]} timed repeats after {rec["warmup"]} '
             'warm-up, the implementations interleaved within every repeat (order rotated). '
             'Batch 1, same random weights in all implementations. '
             + ('' if gpu else 'CPU timings of a shared machine: compare the ratios within this '
                'run, not the absolute medians with other machines or runs.'), '',
             'Ratio = implementation median / toolkit median (above 1: the toolkit is faster).', '']
    lines += ['## Backbones', '',
              f'| arch | input | mode | precision | ' + ' | '.join(
                  f'{i} median{lab}' for i in rec['impls']) + ' | ' + ' | '.join(
                  f'{i} / toolkit' for i in rec['impls'] if i != 'toolkit') + ' |',
              '|' + '---|' * (4 + 2 * len(rec['impls']) - 1)]
    for r in rec['backbones']:
        im = r['impls']
        lines.append(f'| {r["arch"]} | {r["input"][0]}x{r["input"][1]} | {r["mode"]} | '
                     f'{r["precision"]} | ' + ' | '.join(_ms(im[i]['median_s']) for i in im)
                     + ' | ' + ' | '.join(f'{im[i]["vs_toolkit"]:.2f}x' for i in im
                                          if i != 'toolkit') + ' |')
    lines += ['', '## Output agreement (fp32)', '',
              '| arch | input | compared with the toolkit | what | max abs diff | within 1e-4 |',
              '|---|---|---|---|---|---|']
    for c in rec['checks']:
        for impl, v in c.get('outputs', {}).items():
            lines.append(f'| {c["arch"]} | {c["input"][0]}x{c["input"][1]} | {impl} | '
                         f'{v["compared"]} | {v["max_abs_diff"]:.2e} | {"yes" if v["ok"] else "NO"} |')
        if 'gradients_vs_mmpretrain' in c:
            v = c['gradients_vs_mmpretrain']
            lines.append(f'| {c["arch"]} | {c["input"][0]}x{c["input"][1]} | mmpretrain | '
                         f'{v["compared"]} | {v["max_abs_diff"]:.2e} | '
                         f'{"yes" if v["ok"] else "NO"} |')
    if rec.get('retinanet'):
        r = rec['retinanet']
        im = r['impls']
        lines += ['', '## RetinaNet-S12 training step', '',
                  f'`{r["config"]}` with each backbone implementation; batch {r["batch"]} of '
                  f'{r["input"][0]}x{r["input"][1]} synthetic images with 5 boxes each; '
                  f'{r["step"]}. Every timed step starts from the same weights. Initial losses '
                  f'agree to a relative {r["loss_max_rel_diff"]:.1e}.', '',
                  '| backbone | median' + lab + ' | / toolkit |', '|---|---|---|']
        for i, v in im.items():
            lines.append(f'| {i} | {_ms(v["median_s"])} | {v["vs_toolkit"]:.2f}x |')
    if rec.get('scaling'):
        lines += ['', '## Scaling with the input short side', '',
                  'Each point in a fresh process: latency is the median of the repeats after a '
                  'first call; memory is ' + rec['scaling'][0]['memory'] + '.', '',
                  '| impl | mode | input | median' + lab + ' | peak memory (MB) |',
                  '|---|---|---|---|---|']
        for r in rec['scaling']:
            lines.append(f'| {r["impl"]} | {r["mode"]} | {r["input"][0]}x{r["input"][1]} | '
                         f'{_ms(r["median_s"])} | {r["peak_mem_mb"]:.0f} |')
    if rec.get('switches'):
        s = rec['switches']
        lines += ['', '## Speed switches of the toolkit backbone', '',
                  f'{s["arch"]}, {s["input"][0]}x{s["input"][1]}, forward. First call with '
                  f'`compile=True` (includes compiling): {s["compile_first_call_s"]:.1f} s.', '',
                  '| variant | median' + lab + ' | / toolkit | max abs diff vs fp32 eager |',
                  '|---|---|---|---|']
        for i, v in s['impls'].items():
            d = s['max_abs_diff_vs_fp32_eager'].get(i)
            lines.append(f'| {i} | {_ms(v["median_s"])} | {v["vs_toolkit"]:.2f}x | '
                         f'{"-" if d is None else f"{d:.2e}"} |')
    return '\n'.join(lines) + '\n'


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=['poolformer_s12', 'poolformer_s36'],
                   help='PoolFormer v1 archs (mmpretrain implements v1 only)')
    p.add_argument('--sizes', nargs='+', default=['800x1216', '512x512'], help='HxW inputs')
    p.add_argument('--impls', nargs='+', default=list(IMPLS), choices=IMPLS)
    p.add_argument('--repeats', type=int, default=5, help='timed repeats per cell')
    p.add_argument('--warmup', type=int, default=1, help='untimed repeats per cell')
    p.add_argument('--threads', type=int, default=2, help='torch threads on CPU')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--retinanet-config', default='configs/retinanet_poolformer_s12.py')
    p.add_argument('--retinanet-input', default='800x1216', help='HxW of the training images')
    p.add_argument('--retinanet-batch', type=int, default=2)
    p.add_argument('--skip', nargs='*', default=[], choices=['retinanet', 'scaling', 'switches'])
    p.add_argument('--quick', action='store_true',
                   help='smoke run: S12 only, 256x320 inputs, 1 repeat, small RetinaNet step')
    p.add_argument('--out', default=None,
                   help='output stem (default: benchmarks/results/speed_<device>; '
                        '--quick: no files written unless given)')
    p.add_argument('--scaling-worker', nargs=6, metavar='ARG', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _size(s: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split('x'))
    except ValueError:
        raise SystemExit(f'bad size {s!r}: write HxW, e.g. 800x1216') from None
    return h, w


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.scaling_worker:
        impl, arch, mode, dev, rep, sizes = args.scaling_worker
        print(json.dumps(scaling_worker(impl, arch, mode, dev, int(rep),
                                        [_size(s) for s in sizes.split(',')])))
        return {}
    from tqdm import tqdm

    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda, but torch sees no GPU; use --device cpu')
    if 'mmpretrain' in args.impls or 'retinanet' not in args.skip:
        try:
            import mmpretrain  # noqa: F401
        except ImportError:
            raise SystemExit('mmpretrain is needed for the comparison: '
                             '.venv/bin/pip install mmpretrain==1.2.0 (or --impls without '
                             'mmpretrain --skip retinanet)') from None
    if 'toolkit' not in args.impls:
        args.impls = ['toolkit'] + args.impls
    sizes = [_size(s) for s in args.sizes]
    retina_size = _size(args.retinanet_input)
    archs = args.archs
    scale_repeats = 2
    if args.quick:
        archs, sizes, args.repeats, args.warmup = ['poolformer_s12'], [(256, 320)], 1, 1
        retina_size, args.retinanet_batch, scale_repeats = (256, 320), 1, 1
    amps = [None, torch.bfloat16] if device.type == 'cuda' else [None]
    retina_config = ROOT / args.retinanet_config
    do = {k: k not in args.skip for k in ('retinanet', 'scaling', 'switches')}
    if do['retinanet'] and not retina_config.exists():
        print(f'note: {retina_config} does not exist: skipping the RetinaNet step', flush=True)
        do['retinanet'] = False
    # Inference memory of toolkit and timm; training memory of the toolkit.
    scale_points = [('toolkit', 'forward'), ('toolkit', 'forward+backward')] + (
        [('timm', 'forward')] if 'timm' in args.impls else [])

    per_cell = args.warmup + args.repeats
    total = len(archs) * len(sizes) * len(amps) * 2 * per_cell * len(args.impls)
    total += do['retinanet'] * per_cell * len(args.impls)
    total += do['scaling'] * (0 if args.quick else len(SCALE_SHORT_SIDES)) * len(scale_points)
    total += do['switches'] * per_cell * 3

    rec = dict(date=datetime.datetime.now().isoformat(timespec='seconds'),
               command='.venv/bin/python benchmarks/speed.py' + (
                   ' ' + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else ''),
               machine=_machine(device), versions=_versions(),
               load_avg_before=[round(v, 2) for v in os.getloadavg()],
               repeats=args.repeats, warmup=args.warmup, impls=list(args.impls))
    t_start = time.time()
    with tqdm(total=total, desc='speed', unit='run', dynamic_ncols=True) as bar:
        rec['backbones'], rec['checks'] = bench_backbones(
            archs, sizes, args.impls, args.repeats, args.warmup, device, amps, bar)
        if do['retinanet']:
            rec['retinanet'] = bench_retinanet(retina_config, args.impls, args.retinanet_batch,
                                               retina_size, args.repeats, args.warmup, device,
                                               bar)
        if do['scaling'] and not args.quick:
            rec['scaling'] = bench_scaling('poolformer_s12', scale_points, scale_repeats, device,
                                           bar)
        if do['switches']:
            rec['switches'] = bench_switches('poolformer_s12', sizes[0], args.repeats,
                                             args.warmup, device, bar)
    rec['load_avg_after'] = [round(v, 2) for v in os.getloadavg()]
    rec['wall_s'] = round(time.time() - t_start, 1)
    md = to_markdown(rec)
    print(md)
    out = args.out or (None if args.quick else f'benchmarks/results/speed_{device.type}')
    if out:
        stem = ROOT / out if not Path(out).is_absolute() else Path(out)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix('.json').write_text(json.dumps(rec, indent=1) + '\n')
        stem.with_suffix('.md').write_text(md)
        print(f'wrote {stem}.json and {stem}.md')
    failed = [c for c in rec['checks'] for v in list(c.get('outputs', {}).values())
              + [c.get('gradients_vs_mmpretrain', {'ok': True})] if not v['ok']]
    if failed:
        raise SystemExit(f'outputs or gradients disagree beyond atol {ATOL}: {failed}')
    return rec


if __name__ == '__main__':
    main()
