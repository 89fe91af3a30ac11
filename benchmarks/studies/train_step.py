"""Backbone training step (forward + backward) per implementation: time, peak memory, gradients.

The record behind two defaults of :class:`metaformer_dense.MetaFormerBackbone` on a GPU:
``lean_training`` (blocks that keep only their input and ``fc1``'s output) and ``channels_last``.
For each arch, on the same random weights and the same batch:

* ``lean (NHWC)``: ``lean_training=True`` (it needs channels-last);
* ``default``: the backbone as configs build it (on CPU: NHWC, with the lean blocks for pooling
  archs; on CUDA: NCHW, timm's blocks with the spread GroupNorm of ``cuda_path``);
* ``not lean (NHWC)``: ``lean_training=False, channels_last=True`` (on CPU the fast path's chunked
  MLP, :mod:`metaformer_dense.fast_path`; elsewhere timm's modules, on CUDA with the spread
  GroupNorm);
* ``not lean (NCHW)``: ``lean_training=False, channels_last=False``: timm's modules (on CUDA
  with the spread GroupNorm of ``cuda_path``);
* ``with_cp (NCHW)``: ``with_cp=True, channels_last=False`` (checkpointing per block);
* ``timm``: ``timm.create_model(arch, features_only=True)`` (no output norms).

Times are medians of interleaved repeats (each repeat runs every implementation once, the order
rotated), so load hits all alike. Peak memory is ``torch.cuda.max_memory_allocated`` above what
was allocated before the step (CUDA only; on CPU benchmarks/studies/memory.py counts saved bytes).
Gradients of the input and of every parameter are compared with ``not lean (NCHW)`` on a
second, TF32-free pass: the largest max|diff| / max|grad| over all of them (max|grad| taken as
at least 1e-3 of the largest gradient, so that gradients whose true value is 0 do not count).

Usage::

    python -m benchmarks.studies.train_step --device cuda          # ~1 min on an H100
    python -m benchmarks.studies.train_step --device cpu --archs poolformer_s12 --size 256x256
"""
from __future__ import annotations

import datetime
import gc
import shlex
import sys
from pathlib import Path
from typing import Callable, Dict

import torch
from torch import nn

from metaformer_dense import MetaFormerBackbone
from benchmarks.common import STUDY_RESULTS, step_parser, write_record
from benchmarks.speed_models import randomize_, timm_features
from benchmarks.environment import machine_info, versions
from benchmarks.speed_timing import interleaved, summarise, sync

ARCHS = ('poolformer_s12', 'poolformer_m48', 'convformer_s18', 'caformer_s18')
BACKBONE_IMPLS: Dict[str, dict] = {
    'default': dict(),
    'lean (NHWC)': dict(lean_training=True),
    'not lean (NHWC)': dict(lean_training=False, channels_last=True),
    'not lean (NCHW)': dict(lean_training=False, channels_last=False),
    'with_cp (NCHW)': dict(with_cp=True, channels_last=False),
}
IMPLS = tuple(BACKBONE_IMPLS) + ('timm',)
REF = 'not lean (NCHW)'
MIB = 2 ** 20


def build(arch: str, device: torch.device) -> Dict[str, nn.Module]:
    ref = MetaFormerBackbone(arch)
    randomize_(ref)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    models = {}
    for name, kwargs in BACKBONE_IMPLS.items():
        m = MetaFormerBackbone(arch, **kwargs)
        m.load_state_dict(state)
        models[name] = m
    models['timm'] = timm_features(arch, state)
    return {k: m.to(device).train() for k, m in models.items()}


def step(model: nn.Module, x: torch.Tensor) -> None:
    loss = sum(o.float().square().mean() for o in model(x))
    loss.backward()


def peak_mib(fn: Callable[[], None], device: torch.device) -> float:
    if device.type != 'cuda':
        return float('nan')
    gc.collect()
    torch.cuda.empty_cache()
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / MIB


def grad_check(models: Dict[str, nn.Module], x: torch.Tensor) -> Dict[str, tuple]:
    """(largest max|diff| / max|grad|, its tensor's name) vs the reference, over the input and
    all parameters."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        grads = {}
        for name, m in models.items():
            if name == 'timm':  # other parameter names (and no output norms): not compared
                continue
            m.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_(True)
            step(m, xi)
            g = {'input': xi.grad}
            g.update({k: p.grad for k, p in m.named_parameters() if p.grad is not None})
            grads[name] = g
            m.zero_grad(set_to_none=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    ref = grads[REF]
    # A gradient whose true value is 0 (PoolFormer v1's norm1.bias cancels in pool(y) - y) is
    # rounding noise on both sides: scale every difference by at least 1e-3 of the largest
    # gradient, so that noise does not count as a relative error of 1.
    floor = 1e-3 * max(float(v.abs().max()) for v in ref.values())
    out = {}
    for name, g in grads.items():
        if set(g) != set(ref):
            raise RuntimeError(f'{name}: gradients for other parameters than {REF}')
        out[name] = max((float((g[k] - ref[k]).abs().max()) / max(float(ref[k].abs().max()),
                                                                   floor), k) for k in ref)
    return out


def run(archs, size, batch, repeats, warmup, device) -> list:
    from tqdm import tqdm
    rows = []
    progress = tqdm(total=len(archs) * (warmup + repeats) * len(IMPLS), unit='step')
    for arch in archs:
        models = build(arch, device)
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1)).to(device)
        progress.set_postfix_str(f'{arch}: gradients')
        grads = grad_check(models, x)
        progress.set_postfix_str(f'{arch}: peak memory')
        peaks = {k: peak_mib(lambda m=m: step(m, x), device) for k, m in models.items()}
        for m in models.values():
            m.zero_grad(set_to_none=True)
        progress.set_postfix_str(f'{arch}: timing')
        times = interleaved({k: (lambda m=m: step(m, x)) for k, m in models.items()}, repeats,
                            warmup, device, progress,
                            after=lambda k: models[k].zero_grad(set_to_none=True))
        rows.append(dict(arch=arch, input=list(size), batch=batch, peak_mib=peaks,
                         grad_rel_diff_vs_ref=grads, impls=summarise(times, ref='timm')))
        del models
        gc.collect()
    progress.close()
    return rows


def to_markdown(rec: dict) -> str:
    m = rec['machine']
    where = m.get('gpu') or f'{m["cpu"]} ({m["torch_threads"]} threads)'
    lines = ['# Backbone training step: lean blocks or not, NHWC or NCHW, with_cp, timm', '',
             f'`{rec["command"]}` on {where}, {rec["date"]}; '
             + ', '.join(f'{k} {v}' for k, v in rec['versions'].items()) + '.', '',
             'Forward + backward of the backbone alone (loss: mean square of the stage outputs), '
             'fp32, torch\'s default TF32 settings; median of interleaved repeats. '
             '"vs timm" < 1 is faster / smaller than timm\'s `features_only` model. Gradients: '
             f'largest max|diff| / max|grad| over the input and all parameters vs `{REF}`, '
             'TF32 off; max|grad| floored at 1e-3 of the largest gradient.', '',
             '| arch | batch x input | implementation | step (median) | vs timm | '
             'peak memory | vs timm | gradients vs ref |', '|---|---|---|---|---|---|---|---|']
    for r in rec['rows']:
        t, p, g = r['impls'], r['peak_mib'], r['grad_rel_diff_vs_ref']
        for k in t:
            mem = ('-' if p[k] != p[k] else f'{p[k]:.0f} MiB')
            mem_ratio = '-' if p[k] != p[k] else f'{p[k] / p["timm"]:.2f}'
            lines.append(f'| {r["arch"]} | {r["batch"]}x{r["input"][0]}x{r["input"][1]} | {k} | '
                         f'{t[k]["median_s"] * 1e3:.1f} ms | {t[k]["vs_toolkit"]:.2f} | {mem} | '
                         f'{mem_ratio} | {"-" if k not in g else f"{g[k][0]:.1e} (`{g[k][1]}`)"} |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
    p = step_parser(__doc__, ARCHS, batch=2, repeats=10, warmup=2)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--out', default=None, help='record path without extension (default: '
                   'benchmarks/studies/results/train_step_<device>)')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rec = dict(date=datetime.datetime.now().isoformat(timespec='seconds'),
               command=shlex.join(['python', '-m', 'benchmarks.studies.train_step']
                                  + list(sys.argv[1:] if argv is None else argv)),
               machine=machine_info(device), versions=versions(),
               rows=run(args.archs, args.size, args.batch, args.repeats, args.warmup, device))
    out = Path(args.out or STUDY_RESULTS / f'train_step_{device.type}')
    write_record(out, rec, to_markdown(rec))
    print(to_markdown(rec))
    return rec


if __name__ == '__main__':
    main()
