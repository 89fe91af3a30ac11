"""Where the PoolFormer backbone's time goes, kernel by kernel: torch.profiler tables.

The question behind the CUDA default of :mod:`metaformer_dense.cuda_path`: what share of a
PoolFormer forward and training step do the ``GroupNorm(1, C)`` statistics take when torch's own
``group_norm`` computes them (one thread block per sample), and what is left when
:func:`metaformer_dense.group_norm.group_norm1` computes them with many-block reductions. For each
arch, on the same random weights, NCHW without lean blocks (the backbone's CUDA defaults, forced
on CPU too):

* ``forward``: batch ``--batch-forward`` (default 1), no gradients, eval mode;
* ``training step``: forward + backward of a scalar loss, batch ``--batch-backward`` (default 2);

each with ``torch norms`` (timm's modules and ``F.group_norm``: the CUDA path off) and
``spread norms`` (the backbone's default on CUDA), and optionally the block rewrites of
``cuda_path.block_options`` (``--rewrites``). Each is profiled over ``--repeats`` calls after a
warm-up; the record holds the total device time per call, the time per kernel category (torch's
GroupNorm kernels, Welford / sum reductions, convolutions and matrix products, pooling,
element-wise, other) and the top kernels by self device time. On CPU the same tables hold CPU
operator times (the profiler has no kernels there), labelled as such: exercise the script there,
take nothing from it for a GPU.

Usage::

    python -m benchmarks.studies.profile_norms --device cuda           # S12 and M48, 800x1216
    python -m benchmarks.studies.profile_norms --device cpu --archs poolformer_s12 \\
        --size 128x160 --repeats 1 --out /tmp/profile_norms                # a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from metaformer_dense import MetaFormerBackbone, cuda_path
from benchmarks.common import STUDY_RESULTS, parse_size, write_record
from benchmarks.environment import describe, machine_info, versions
from benchmarks.speed_models import randomize_

#: Kernel (CUDA) or operator (CPU) categories: the first whose patterns match a name wins.
CATEGORIES = (
    ('torch GroupNorm', ('groupnorm', 'group_norm', 'rowwisemoments', 'computefusedparams',
                         'computeinternalgradients', 'computebackwardfusedparams',
                         'gammabeta')),
    ('Welford reductions (var_mean)', ('welford', 'var_mean')),
    ('sum reductions', ('reduce_kernel', 'aten::sum')),
    ('convolution / matmul', ('conv', 'gemm', 'cudnn', 'xmma', 'cutlass', 'aten::mm',
                              'aten::addmm', 'mkldnn', 'sm80_', 'sm90_')),
    ('pooling', ('avg_pool', 'avgpool')),
    ('element-wise', ('elementwise', 'aten::add', 'aten::mul', 'aten::sub', 'aten::addcmul',
                      'aten::gelu', 'aten::rsqrt', 'aten::copy_', 'aten::div')),
)
VARIANTS = ('torch norms', 'spread norms')
REWRITES = {'spread + algebraic mixer': dict(algebraic_mixer=True),
            'spread + fold norm2': dict(fold_norm2=True),
            'spread + both rewrites': dict(algebraic_mixer=True, fold_norm2=True)}


def category(name: str) -> str:
    """The :data:`CATEGORIES` entry a kernel or operator name falls in (``'other'`` if none)."""
    low = name.lower()
    for label, patterns in CATEGORIES:
        if any(p in low for p in patterns):
            return label
    return 'other'


def _run(model: MetaFormerBackbone, x: torch.Tensor, train: bool, amp: Optional[torch.dtype]):
    dev = x.device.type
    with torch.autocast(dev, dtype=amp or torch.float32, enabled=amp is not None):
        if not train:
            with torch.no_grad():
                return model(x)
        loss = sum(o.float().square().mean() for o in model(x))
    loss.backward()
    model.zero_grad(set_to_none=True)


def profile_one(model: MetaFormerBackbone, x: torch.Tensor, train: bool, variant: str,
                repeats: int, warmup: int, amp: Optional[torch.dtype] = None) -> dict:
    """Profile ``repeats`` calls of one variant; times are per call, in milliseconds."""
    cuda = x.device.type == 'cuda'
    options = REWRITES.get(variant, {})
    devices = () if variant == 'torch norms' else ('cuda', x.device.type)
    model.train(train)
    with cuda_path.used_on(*devices), cuda_path.block_options(**options):
        for _ in range(warmup):
            _run(model, x, train, amp)
        if cuda:
            torch.cuda.synchronize()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(repeats):
                _run(model, x, train, amp)
            if cuda:
                torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        if cuda:
            t = evt.self_device_time_total
            if evt.device_type != torch.autograd.DeviceType.CUDA or t <= 0:
                continue
        else:
            t = evt.self_cpu_time_total
            if not evt.key.startswith('aten::') or t <= 0:
                continue
        rows.append(dict(name=evt.key, ms=t / 1e3 / repeats, calls=evt.count / repeats))
    total = sum(r['ms'] for r in rows)
    by_cat: Dict[str, float] = defaultdict(float)
    for r in rows:
        by_cat[category(r['name'])] += r['ms']
    rows.sort(key=lambda r: -r['ms'])
    return dict(variant=variant, mode='training step' if train else 'forward',
                batch=x.shape[0], input=list(x.shape[2:]), total_ms=total,
                categories=dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
                top=rows[:15], kernels='CUDA kernels' if cuda else 'CPU operators (aten::)')


def to_markdown(rec: dict) -> str:
    """The record as markdown: per profile the category shares, then the top kernels."""
    cuda = rec['machine']['device'] == 'cuda'
    what = 'self device time of CUDA kernels' if cuda else \
        'self CPU time of aten operators (a CPU run: nothing here is a GPU number)'
    lines = ['# Where the PoolFormer backbone time goes: torch.profiler '
             f'({rec["machine"]["device"].upper()})', '',
             f'Recorded {rec["date"]} by `{rec["command"]}`.', '',
             f'Machine: {describe(rec["machine"], rec["versions"])}.', '',
             f'Times: {what}, per call, summed over {rec["repeats"]} profiled calls after '
             f'{rec["warmup"]} warm-up; precision {rec["precision"]}. `torch norms`: timm\'s '
             'modules and `F.group_norm`; `spread norms`: the CUDA path '
             '(`metaformer_dense/cuda_path.py`).', '']
    for arch, profs in rec['profiles'].items():
        lines += [f'## {arch}', '']
        cats = sorted({c for p in profs for c in p['categories']},
                      key=lambda c: -max(p['categories'].get(c, 0) for p in profs))
        lines += ['| mode | batch | input | variant | total | ' + ' | '.join(cats) + ' |',
                  '|' + '---|' * (5 + len(cats))]
        for p in profs:
            cells = [f'{p["categories"].get(c, 0):.2f} ms ({100 * p["categories"].get(c, 0) / max(p["total_ms"], 1e-9):.0f}%)'
                     for c in cats]
            lines.append(f'| {p["mode"]} | {p["batch"]} | {p["input"][0]}x{p["input"][1]} | '
                         f'{p["variant"]} | {p["total_ms"]:.2f} ms | ' + ' | '.join(cells) + ' |')
        for p in profs:
            lines += ['', f'Top {p["kernels"]}: {p["mode"]}, {p["variant"]}', '',
                      '| kernel | category | ms per call | calls per call |', '|---|---|---|---|']
            for r in p['top']:
                name = r['name'] if len(r['name']) <= 90 else r['name'][:87] + '...'
                name = name.replace('|', '\\|')
                lines.append(f'| `{name}` | {category(r["name"])} | {r["ms"]:.3f} | '
                             f'{r["calls"]:.0f} |')
        lines.append('')
    return '\n'.join(lines) + '\n'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=['poolformer_s12', 'poolformer_m48'])
    p.add_argument('--size', type=parse_size, default=(800, 1216), help='HxW (default 800x1216)')
    p.add_argument('--batch-forward', type=int, default=1)
    p.add_argument('--batch-backward', type=int, default=2)
    p.add_argument('--repeats', type=int, default=5, help='profiled calls per variant')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--bf16', action='store_true', help='under bf16 autocast')
    p.add_argument('--rewrites', action='store_true',
                   help='also profile the block rewrites of cuda_path.block_options')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=2, help='torch threads on CPU')
    p.add_argument('--out', default=None, help='output stem (default on CUDA: '
                   'benchmarks/studies/results/profile_norms_cuda; on CPU only if given)')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Profile, print and write the record; return it."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda, but torch sees no GPU; use --device cpu')
    torch.set_num_threads(args.threads)
    amp = torch.bfloat16 if args.bf16 else None
    variants = list(VARIANTS) + (list(REWRITES) if args.rewrites else [])
    rec = dict(date=datetime.datetime.now().isoformat(timespec='seconds'),
               command='python -m benchmarks.studies.profile_norms' + (
                   ' ' + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else ''),
               machine=machine_info(device), versions=versions(), repeats=args.repeats,
               warmup=args.warmup, precision='bf16 autocast' if amp else 'fp32', profiles={})
    g = torch.Generator().manual_seed(0)
    for arch in args.archs:
        # NCHW, no lean blocks: the CUDA defaults, also on CPU, where the backbone would take
        # its CPU path (its own stage loop) instead of the blocks profiled here.
        model = MetaFormerBackbone(arch, channels_last=False, lean_training=False)
        randomize_(model)
        model.to(device)
        profs: List[dict] = []
        for train, batch in ((False, args.batch_forward), (True, args.batch_backward)):
            x = torch.randn(batch, 3, *args.size, generator=g).to(device)
            for variant in variants:
                print(f'{arch} {"training step" if train else "forward"} batch {batch}: '
                      f'{variant}', flush=True)
                profs.append(profile_one(model, x, train, variant, args.repeats, args.warmup,
                                         amp))
        rec['profiles'][arch] = profs
        del model
    md = to_markdown(rec)
    print(md)
    out = args.out or (str(STUDY_RESULTS / f'profile_norms_{device.type}')
                       if device.type == 'cuda' else None)
    if out:
        stem = write_record(out, rec, md)
        print(f'wrote {stem}.json and {stem}.md')
    return rec


if __name__ == '__main__':
    main()
