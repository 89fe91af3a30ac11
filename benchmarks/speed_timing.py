"""Timing for the speed benchmark: interleaved repeats, and the backbone, RetinaNet-step and
speed-switch measurements built on them.

Every repeat runs each implementation once, in an order rotated from repeat to repeat, so that
machine load hits all of them alike.
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from metaformer_dense import MetaFormerBackbone
from metaformer_dense import cuda_path, fast_path
from metaformer_dense.cuda_graphs import GraphedInference

from .speed_models import (build_backbones, build_retinanets, check_agreement, check_gradients,
                           max_diff)

ROOT = Path(__file__).resolve().parents[1]
#: The switches row of the CPU path with fc1 and GELU as separate addmm and GELU passes.
UNFUSED = 'unfused MLP (addmm + GELU)'


@contextlib.contextmanager
def unfused_mlp() -> Iterator[None]:
    """Within it, the backbone's CPU path runs fc1 and its GELU as addmm + F.gelu instead of
    oneDNN's fused linear (what builds without the fused op run), so that the speed record can
    time what the fused op buys side by side. The default is back on exit."""
    saved = fast_path._fused_linear
    fast_path._fused_linear = False  # the CPU path's own "fused op unavailable" state
    try:
        yield
    finally:
        fast_path._fused_linear = saved


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_forward(model: nn.Module, x: torch.Tensor, amp: Optional[torch.dtype]) -> None:
    with torch.no_grad(), torch.autocast(x.device.type, dtype=amp or torch.float32,
                                         enabled=amp is not None):
        model(x)


def run_forward_backward(model: nn.Module, x: torch.Tensor, amp: Optional[torch.dtype]) -> None:
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
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            dt = time.perf_counter() - t0
            if after is not None:
                after(name)
            if r >= warmup:
                times[name].append(dt)
            if progress is not None:
                progress.update(1)
    return times


def summarise(times: Dict[str, List[float]], ref: str = 'toolkit') -> Dict[str, dict]:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: dict(median_s=med[k], times_s=v, vs_toolkit=med[k] / med[ref])
            for k, v in times.items()}


def bench_backbones(archs: Sequence[str], sizes: Sequence[Tuple[int, int]], impls: Sequence[str],
                    repeats: int, warmup: int, device: torch.device,
                    amps: Sequence[Optional[torch.dtype]], progress,
                    batches: Tuple[int, int] = (1, 1)) -> Tuple[list, list]:
    """Backbone forward / forward+backward timings (batch ``batches[0]`` / ``batches[1]``)
    and agreement checks."""
    rows, checks = [], []
    for arch in archs:
        models = build_backbones(arch, impls)
        for m in models.values():
            m.to(device)
        for h, w in sizes:
            inputs = {b: torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(1)
                                     ).to(device) for b in set(batches)}
            progress.set_postfix_str(f'{arch} {h}x{w}: checking outputs')
            checks.append(dict(arch=arch, input=[h, w], device=device.type,
                               outputs=check_agreement(models, inputs[batches[0]])))
            for amp in amps:
                for mode, batch in zip(('forward', 'forward+backward'), batches):
                    x = inputs[batch]
                    progress.set_postfix_str(f'{arch} {h}x{w} {mode} {amp_name(amp)}')
                    for m in models.values():
                        m.train(mode != 'forward')
                    fn = run_forward if mode == 'forward' else run_forward_backward
                    fns = {k: (lambda m=m: fn(m, x, amp)) for k, m in models.items()}
                    times = interleaved(
                        fns, repeats, warmup, device, progress,
                        after=lambda k: models[k].zero_grad(set_to_none=True))
                    rows.append(dict(arch=arch, input=[h, w], mode=mode, batch=batch,
                                     precision=amp_name(amp), device=device.type,
                                     impls=summarise(times)))
        if 'mmpretrain' in models:
            small = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(2))
            grad = check_gradients(models['toolkit'], models['mmpretrain'], small.to(device))
            checks.append(dict(arch=arch, input=[128, 96], device=device.type,
                               gradients_vs_mmpretrain=grad))
        del models
        gc.collect()
    return rows, checks


def amp_name(amp: Optional[torch.dtype]) -> str:
    return 'fp32' if amp is None else f'{str(amp).split(".")[-1]} autocast'


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
                impls=summarise(times))


def bench_switches(arch: str, size: Tuple[int, int], repeats: int, warmup: int,
                   device: torch.device, progress) -> dict:
    """Default vs ``compile=True`` vs bf16 autocast, forward; on CPU vs the unfused MLP, where the
    CUDA path runs (:func:`metaformer_dense.cuda_path.wanted`) vs torch's norms and each block
    rewrite; on CUDA the forward replayed from a CUDA graph."""
    base = build_backbones(arch, ['toolkit'])['toolkit'].to(device).eval()
    state = base.state_dict()
    compiled = MetaFormerBackbone(arch, compile=True).to(device).eval()
    compiled.load_state_dict(state)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        ref = base(x)
        progress.set_postfix_str(f'switches: compiling {arch} at {size[0]}x{size[1]}')
        sync(device)
        t0 = time.perf_counter()
        out_c = compiled(x)
        sync(device)
        compile_s = time.perf_counter() - t0
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out_bf = base(x)
        if device.type == 'cpu':
            with unfused_mlp():
                out_unfused = base(x)
    # compile=True checks its first call against eager and drops a compiled forward that
    # disagrees (metaformer_dense/compile_guard.py): then the compile row times eager.
    rejected = compiled._compiled_forward.rejected
    diffs = {'compile': max_diff(out_c, ref)[0], 'bf16 autocast': max_diff(out_bf, ref)[0]}
    fns = {'toolkit': lambda: run_forward(base, x, None),
           'compile': lambda: run_forward(compiled, x, None),
           'bf16 autocast': lambda: run_forward(base, x, torch.bfloat16)}
    if cuda_path.wanted(device.type):  # the CUDA path off, and its block rewrites on
        variants = {'torch norms': ((), {})} | {
            f'rewrite: {k}': ((device.type,), {k: True}) for k in cuda_path.OPTIONS}
        for name, (devices, options) in variants.items():
            def run_variant(devices=devices, options=options):
                with cuda_path.used_on(*devices), cuda_path.block_options(**options):
                    run_forward(base, x, None)
            with torch.no_grad(), cuda_path.used_on(*devices), \
                    cuda_path.block_options(**options):
                diffs[name] = max_diff(base(x), ref)[0]
            fns[name] = run_variant
    if device.type == 'cuda':  # the forward replayed from a CUDA graph (cuda_graphs)
        graphed = GraphedInference(base)
        with torch.no_grad():
            diffs['cuda graph'] = max_diff(graphed(x), ref)[0]
        fns['cuda graph'] = lambda: run_forward(graphed, x, None)
    if device.type == 'cpu':  # what the CPU path's oneDNN-fused fc1 + GELU buys (fast_path)
        def run_unfused():
            with unfused_mlp():
                run_forward(base, x, None)
        fns[UNFUSED] = run_unfused
        diffs[UNFUSED] = max_diff(out_unfused, ref)[0]
    progress.set_postfix_str(f'switches: timing {arch} at {size[0]}x{size[1]}')
    times = interleaved(fns, repeats, warmup, device, progress)
    return dict(arch=arch, input=list(size), mode='forward', device=device.type,
                compile_first_call_s=compile_s, compile_rejected=rejected,
                max_abs_diff_vs_fp32_eager=diffs,
                impls=summarise(times))
