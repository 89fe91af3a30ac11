"""Speed of the MetaFormer dense backbone next to timm's and mmpretrain's, on the same weights.

Measured in one run, interleaving the implementations inside every repeat (so machine load hits
all of them alike) and rotating their order from repeat to repeat:

* backbones, batch 1, forward without gradients and forward + backward, for PoolFormer-S12 and
  -S36 at 800x1216 (detection) and 512x512 (segmentation):
  - ``toolkit``: :class:`metaformer_dense.MetaFormerBackbone` as the configs build it (its
    defaults: channels-last), in eval mode for the forward;
  - ``toolkit-nchw``: the same with ``channels_last=False`` (what the layout alone buys);
  - ``toolkit-torch-norms`` (CUDA): the same with torch's own ``group_norm`` instead of the
    CUDA path's (:mod:`metaformer_dense.cuda_path`: what the spread statistics buy);
  - ``timm``: ``timm.create_model(arch, features_only=True)``, eager;
  - ``mmpretrain``: ``mmpretrain.models.PoolFormer(arch=..., out_indices=(0, 2, 4, 6))``;
* one RetinaNet-S12 training step (``configs/retinanet_poolformer_s12.py``: data preprocessing,
  forward, losses, backward, AdamW step) with each of these backbones;
* scaling of latency and memory with the input's short side (512, 800, 1024, 1333);
* the speed switches of the toolkit backbone: ``compile=True`` and bf16 autocast; on CUDA
  torch's norms and each block rewrite of ``cuda_path.block_options``.

``--batch-backward 2`` times forward + backward at batch 2 (what detection trains with);
``--impls`` left out drops mmpretrain with a note when it does not import (a GPU machine without
mmcv), so ``--skip retinanet scaling`` needs only torch, timm and mmengine.

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

    .venv/bin/python -m benchmarks.speed                 # full run, ~20 min on 2 CPU cores
    .venv/bin/python -m benchmarks.speed --quick         # smoke run: S12, small inputs
    .venv/bin/python -m benchmarks.speed --help

The jobs live next to this command: ``speed_models`` (the implementations on identical weights,
agreement checks), ``speed_timing`` (interleaved timing; backbones, RetinaNet step, switches),
``speed_scaling`` (input-size scaling in fresh processes) and ``speed_record`` (the record).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from metaformer_dense import cuda_path

from .common import parse_size, write_record
from .speed_models import ATOL, CUDA_ONLY_IMPLS, IMPLS
from .environment import machine_info, versions
from .speed_record import to_markdown
from .speed_scaling import SCALE_SHORT_SIDES, bench_scaling, scaling_worker
from .speed_timing import bench_backbones, bench_retinanet, bench_switches

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments of the speed benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=['poolformer_s12', 'poolformer_s36'],
                   help='PoolFormer v1 archs (mmpretrain implements v1 only)')
    p.add_argument('--sizes', nargs='+', type=parse_size, default=[(800, 1216), (512, 512)],
                   help='HxW inputs (default: 800x1216 512x512)')
    p.add_argument('--impls', nargs='+', default=None, choices=IMPLS,
                   help='default: all (toolkit-torch-norms on CUDA only; mmpretrain where it '
                        'imports)')
    p.add_argument('--batch-forward', type=int, default=1, help='batch of the forward rows')
    p.add_argument('--batch-backward', type=int, default=1,
                   help='batch of the forward+backward rows')
    p.add_argument('--cuda-path', action='store_true',
                   help="on CPU, run the toolkit's CUDA path (metaformer_dense.cuda_path) to "
                        'exercise what a GPU run times; CPU times of it mean nothing for a GPU')
    p.add_argument('--repeats', type=int, default=5, help='timed repeats per cell')
    p.add_argument('--warmup', type=int, default=1, help='untimed repeats per cell')
    p.add_argument('--threads', type=int, default=2, help='torch threads on CPU')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--retinanet-config', default='configs/retinanet_poolformer_s12.py')
    p.add_argument('--retinanet-input', type=parse_size, default='800x1216',
                   help='HxW of the training images')
    p.add_argument('--retinanet-batch', type=int, default=2)
    p.add_argument('--skip', nargs='*', default=[], choices=['retinanet', 'scaling', 'switches'])
    p.add_argument('--quick', action='store_true',
                   help='smoke run: S12 only, 256x320 inputs, 1 repeat, small RetinaNet step')
    p.add_argument('--out', default=None,
                   help='output stem (default: benchmarks/results/speed_<device>; '
                        '--quick: no files written unless given)')
    p.add_argument('--scaling-worker', nargs=6, metavar='ARG', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the benchmark, print and (unless --quick) write the record; return it."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.scaling_worker:
        impl, arch, mode, dev, rep, sizes = args.scaling_worker
        print(json.dumps(scaling_worker(impl, arch, mode, dev, int(rep),
                                        [parse_size(s) for s in sizes.split(',')])))
        return {}
    from tqdm import tqdm

    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda, but torch sees no GPU; use --device cpu')
    notes = []
    explicit = args.impls is not None
    if not explicit:
        args.impls = [i for i in IMPLS if device.type == 'cuda' or args.cuda_path
                      or i not in CUDA_ONLY_IMPLS]
    if 'mmpretrain' in args.impls or 'retinanet' not in args.skip:
        try:
            import mmpretrain.models  # noqa: F401
        except Exception as e:  # not installed, or one of its own imports breaks
            if not explicit and 'retinanet' in args.skip:  # the default list: go on without it
                args.impls.remove('mmpretrain')
                notes.append(f'mmpretrain left out: importing it failed ({type(e).__name__}: '
                             f'{e})')
                print(f'note: {notes[-1]}', flush=True)
            else:
                raise SystemExit(
                    f'mmpretrain is needed for the comparison, and importing it failed: '
                    f'{type(e).__name__}: {e}. Install it (.venv/bin/pip install '
                    'mmpretrain==1.2.0) or repair what it imports, or run with --impls '
                    'without mmpretrain --skip retinanet') from None
    if 'toolkit' not in args.impls:
        args.impls = ['toolkit'] + args.impls
    sizes, retina_size = args.sizes, args.retinanet_input
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
               command='.venv/bin/python -m benchmarks.speed' + (
                   ' ' + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else ''),
               machine=machine_info(device), versions=versions(),
               load_avg_before=[round(v, 2) for v in os.getloadavg()],
               repeats=args.repeats, warmup=args.warmup, impls=list(args.impls))
    if args.cuda_path:
        notes.append("the toolkit ran its CUDA path on CPU (--cuda-path): a check of the "
                     "script, not a measurement of that path")
    if notes:
        rec['notes'] = notes
    t_start = time.time()
    out = args.out or (None if args.quick else f'benchmarks/results/speed_{device.type}')
    # A timeout's SIGTERM or a Ctrl-C keeps the sections already measured: they are written,
    # marked as an interrupted run, instead of being lost with the process.
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with tqdm(total=total, desc='speed', unit='run', dynamic_ncols=True) as bar, \
                (cuda_path.used_on(device.type, 'cuda') if args.cuda_path
                 else contextlib.nullcontext()):
            rec['backbones'], rec['checks'] = bench_backbones(
                archs, sizes, args.impls, args.repeats, args.warmup, device, amps, bar,
                (args.batch_forward, args.batch_backward))
            if do['retinanet']:
                rec['retinanet'] = bench_retinanet(retina_config, args.impls,
                                                   args.retinanet_batch, retina_size,
                                                   args.repeats, args.warmup, device, bar)
            if do['scaling'] and not args.quick:
                rec['scaling'] = bench_scaling('poolformer_s12', scale_points, scale_repeats,
                                               device, bar)
            if do['switches']:
                rec['switches'] = bench_switches('poolformer_s12', sizes[0], args.repeats,
                                                 args.warmup, device, bar)
    except KeyboardInterrupt:
        if 'backbones' not in rec:
            raise
        rec['interrupted'] = True
        print('interrupted: writing the sections measured so far', flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)  # main() may run inside another program
    rec['load_avg_after'] = [round(v, 2) for v in os.getloadavg()]
    rec['wall_s'] = round(time.time() - t_start, 1)
    md = to_markdown(rec)
    print(md)
    if out:
        stem = write_record(ROOT / out if not Path(out).is_absolute() else Path(out), rec, md)
        print(f'wrote {stem}.json and {stem}.md')
    if rec.get('interrupted'):
        raise SystemExit(130)
    failed = [c for c in rec['checks'] for v in list(c.get('outputs', {}).values())
              + [c.get('gradients_vs_mmpretrain', {'ok': True})] if not v['ok']]
    if failed:
        raise SystemExit(f'outputs or gradients disagree beyond atol {ATOL}: {failed}')
    return rec


if __name__ == '__main__':
    main()
