"""What the backbone keeps for backward in training, next to timm's modules, per architecture.

Counts the bytes of the distinct storages autograd saves during one training forward
(:func:`benchmarks.saved_tensors.saved_tensor_bytes`, parameters left out), at 800x1216, for:

* ``toolkit (lean)``: :class:`metaformer_dense.MetaFormerBackbone` with ``lean_training=True``
  (the CPU default; each block keeps its input and ``fc1``'s output);
* ``toolkit (timm modules)``: the same with ``lean_training=False`` on a non-CPU device, i.e.
  the stages run as timm's modules (the CUDA default today);
* ``timm``: ``timm.create_model(arch, features_only=True)``;
* ``timm + with_cp``: the backbone with ``with_cp=True`` (timm's modules under timm's
  ``checkpoint_seq``: only stage boundaries kept, every block recomputed in backward).

Saved bytes depend on shapes and on which tensors each operation keeps, not on the device or the
values, so the table is measured on PyTorch's ``meta`` device (no memory, seconds per model).
A check on real CPU tensors then repeats the PoolFormer-S12 measurement (the CPU default path,
chunked MLP included), confirms it equals the meta one, and compares every parameter's and the
input's gradient with timm's modules on the same weights at the same size.

Usage::

    python -m benchmarks.studies.memory            # ~5 min on 2 CPU cores
    python -m benchmarks.studies.memory --help
"""
from __future__ import annotations

import argparse
import copy
import datetime
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from benchmarks.common import STUDY_RESULTS, parse_size, write_record
from benchmarks.environment import describe, machine_info, versions
from metaformer_dense import MetaFormerBackbone
from benchmarks.saved_tensors import saved_tensor_bytes

ARCHS = ('poolformer_s12', 'poolformer_s24', 'poolformer_s36', 'poolformer_m36',
         'poolformer_m48', 'convformer_s18', 'caformer_s18')
IMPLS = ('toolkit (lean)', 'toolkit (timm modules)', 'timm', 'timm + with_cp')
MIB = 2 ** 20
# Activation budget per GPU used for the batch column: a 24 GB card less weights, optimizer
# state, FPN/head activations and allocator slack (a round assumption, stated in the record).
BUDGET_GIB = 16


def _build(impl: str, arch: str, device: str) -> torch.nn.Module:
    import timm
    if impl == 'timm':
        return timm.create_model(arch, features_only=True, pretrained=False).to(device)
    model = MetaFormerBackbone(arch, lean_training=impl == 'toolkit (lean)',
                               with_cp=impl == 'timm + with_cp')
    return model.to(device)


def saved_mib(model: torch.nn.Module, x: torch.Tensor) -> float:
    """MiB that one training forward of ``model`` on ``x`` keeps for backward (no parameters)."""
    model.train()
    nbytes, outs = saved_tensor_bytes(lambda: model(x), exclude=model.parameters())
    del outs
    return nbytes / MIB


def table(archs, size: Tuple[int, int], batches) -> List[dict]:
    rows = []
    for arch in archs:
        for batch in batches:
            x = torch.empty(batch, 3, *size, device='meta')
            mib = {impl: saved_mib(_build(impl, arch, 'meta'), x) for impl in IMPLS}
            rows.append(dict(arch=arch, input=list(size), batch=batch, saved_mib=mib))
            print(arch, batch, {k: round(v) for k, v in mib.items()}, flush=True)
    return rows


def _loss(outs) -> torch.Tensor:
    return sum((o * torch.linspace(-1, 1, o.shape[1])[:, None, None]).square().mean()
               for o in outs)


def cpu_check(arch: str, size: Tuple[int, int], batch: int) -> dict:
    """Real-tensor saved bytes of the CPU default path and gradients vs timm's modules."""
    torch.manual_seed(0)
    ours = MetaFormerBackbone(arch).train()  # lean_training=None: on for CPU
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # layer scales large enough that every block matters
        for name, p in ours.named_parameters():
            if 'layer_scale' in name:
                p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g))
    ref = copy.deepcopy(ours)
    ref.channels_last = False  # timm's modules (NCHW), same weights
    x0 = torch.randn(batch, 3, *size, generator=g)
    res = {}
    for name, model in (('toolkit', ours), ('timm modules', ref)):
        x = x0.clone().requires_grad_()
        nbytes, outs = saved_tensor_bytes(lambda: model(x), exclude=model.parameters())
        _loss(outs).backward()
        del outs
        res[name] = (nbytes / MIB, {'input': x.grad, **dict(
            (n, p.grad) for n, p in model.named_parameters())})
    worst_rel, worst_abs, worst_name = 0.0, 0.0, ''
    for name, gref in res['timm modules'][1].items():
        diff = (res['toolkit'][1][name] - gref).abs().max().item()
        rel = diff / max(gref.abs().max().item(), 1e-30)
        # PoolFormer v1's norm1 biases cancel in pool(y) - y: true gradient 0, both sides noise.
        if 'norm1.bias' not in name and rel > worst_rel:
            worst_rel, worst_abs, worst_name = rel, diff, name
    return dict(arch=arch, input=list(size), batch=batch,
                saved_mib={k: v[0] for k, v in res.items()},
                worst_grad=dict(name=worst_name, max_abs_diff=worst_abs,
                                max_abs_diff_over_max_abs_grad=worst_rel),
                n_grads=len(res['timm modules'][1]))


def to_markdown(rec: dict) -> str:
    h, w = rec['size']
    lines = ['# Activation memory: what training keeps for backward', '',
             f'Recorded {rec["date"]} by `{rec["command"]}` on '
             f'{describe(rec["machine"], rec["versions"])}.', '',
             'MiB of the distinct storages autograd saves for backward during one training '
             f'forward at {h}x{w} (`saved_tensors_hooks`; parameters not counted), measured on '
             "PyTorch's `meta` device: the count depends on shapes, not on the device. "
             '`toolkit (lean)` is `MetaFormerBackbone(lean_training=True)` (the CPU default), '
             '`toolkit (timm modules)` the backbone with `lean_training=False` off CPU (the '
             "CUDA default), `timm` is `timm.create_model(arch, features_only=True)`, "
             '`timm + with_cp` the backbone with `with_cp=True` (timm\'s `checkpoint_seq`: '
             'every block recomputed in backward).', '',
             '| arch | batch | toolkit (lean) | toolkit (timm modules) | timm | timm + with_cp '
             '| lean / timm |', '|---|---|---|---|---|---|---|']
    for r in rec['table']:
        m = r['saved_mib']
        lines.append(f'| {r["arch"]} | {r["batch"]} | {m["toolkit (lean)"]:.0f} | '
                     f'{m["toolkit (timm modules)"]:.0f} | {m["timm"]:.0f} | '
                     f'{m["timm + with_cp"]:.0f} | {m["toolkit (lean)"] / m["timm"]:.3f} |')
    lines += ['', f'## What it means for the batch per GPU ({h}x{w})', '',
              f'Backbone activations per image (batch-1 rows) and how many images\' backbone '
              f'activations fit in {BUDGET_GIB} GiB, a round budget for a 24 GB card after '
              'weights, optimizer state, FPN/head activations and allocator slack (an '
              'assumption: the neck and heads of RetinaNet / Mask R-CNN add their own '
              'activations per image, so real batches are smaller; the ratio is what carries '
              'over).', '',
              '| arch | lean MiB/image | timm MiB/image | images in budget, lean | '
              'images in budget, timm |', '|---|---|---|---|---|']
    budget = BUDGET_GIB * 1024
    for r in rec['table']:
        if r['batch'] != 1:
            continue
        m = r['saved_mib']
        lines.append(f'| {r["arch"]} | {m["toolkit (lean)"]:.0f} | {m["timm"]:.0f} | '
                     f'{int(budget // m["toolkit (lean)"])} | {int(budget // m["timm"])} |')
    c = rec.get('cpu_check')
    if c:
        m, gw = c['saved_mib'], c['worst_grad']
        meta = next((r['saved_mib'] for r in rec['table']
                     if r['arch'] == c['arch'] and r['batch'] == c['batch']), None)
        lines += ['', '## Check on real CPU tensors', '',
                  f'{c["arch"]}, batch {c["batch"]}, {c["input"][0]}x{c["input"][1]}, the '
                  'default backbone (lean, chunked MLP) vs the same weights through timm\'s '
                  'modules, fp32:', '',
                  f'* saved for backward: toolkit {m["toolkit"]:.1f} MiB, timm modules '
                  f'{m["timm modules"]:.1f} MiB, ratio {m["toolkit"] / m["timm modules"]:.3f}'
                  + (f' (meta table: {meta["toolkit (lean)"]:.1f} / '
                     f'{meta["toolkit (timm modules)"]:.1f} MiB)' if meta else '') + ';',
                  f'* gradients of the input and all {c["n_grads"] - 1} parameters: largest '
                  f'max|diff| / max|grad| is {gw["max_abs_diff_over_max_abs_grad"]:.2e} '
                  f'(`{gw["name"]}`, max abs diff {gw["max_abs_diff"]:.2e}); PoolFormer v1\'s '
                  '`norm1.bias` gradients are left out of that maximum: their true value is 0 '
                  '(the bias cancels in `pool(y) - y`) and both sides are rounding noise.']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=list(ARCHS))
    p.add_argument('--size', type=parse_size, default='800x1216',
                   help='HxW of the training images')
    p.add_argument('--batches', nargs='+', type=int, default=[1, 2])
    p.add_argument('--check-arch', default='poolformer_s12',
                   help='arch of the real-CPU check ("none" to skip)')
    p.add_argument('--out', default=str(STUDY_RESULTS / 'memory'),
                   help='record path without extension (.json and .md are written)')
    args = p.parse_args(argv)
    size = args.size
    rec = dict(date=datetime.datetime.now().isoformat(timespec='seconds'),
               command=shlex.join(['python', '-m', 'benchmarks.studies.memory']
                                  + (argv or sys.argv[1:])),
               machine=machine_info(torch.device('cpu')), versions=versions(),
               size=list(size), table=table(args.archs, size, args.batches))
    if args.check_arch != 'none':
        rec['cpu_check'] = cpu_check(args.check_arch, size, 1)
        print(rec['cpu_check'], flush=True)
    write_record(args.out, rec, to_markdown(rec))
    return rec


if __name__ == '__main__':
    main()
