"""How fast can a PoolFormer training step be on this CPU? The matrix-product floor, measured.

Every implementation of a PoolFormer block's forward + backward, ours or timm's, runs six matrix
products per block with fixed shapes: ``fc1`` and ``fc2`` forward, and for each of them the
input gradient and the weight gradient. The stem and the downsampling layers are convolutions
with fixed shapes too. This benchmark times exactly those products, with torch's own kernels,
on preallocated buffers and with nothing else in between (no pooling, norm, activation,
allocation or autograd). Any implementation built on torch's kernels takes at least that long,
so ``timm / floor`` is the largest training-step speed-up over timm that is possible here.

It also counts the step's floating-point work (``torch.utils.flop_counter``) and measures the
machine's fp32 matrix-product peak on one large square product, for a second, looser bound.

Side by side in one interleaved run, medians: timm's ``features_only`` model, the toolkit's
default backbone, and the floor; with ``--compile`` also the toolkit with ``compile=True``, where
torch's compiler fuses the element-wise work between the products into generated C++ kernels
(what hand-written fused kernels could at best add over eager).

Usage::

    python -m benchmarks.studies.step_floor                       # S12, 1x800x1216, CPU
    python -m benchmarks.studies.step_floor --archs poolformer_s12 poolformer_m48 --size 800x1216
    python -m benchmarks.studies.step_floor --compile     # + the compiled step (minutes to compile)
"""
from __future__ import annotations

import datetime
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

from metaformer_dense import MetaFormerBackbone
from benchmarks.common import STUDY_RESULTS, step_parser, write_record
from benchmarks.speed_models import randomize_, timm_features
from benchmarks.environment import machine_info, versions
from benchmarks.speed_timing import interleaved

IMPLS = ('timm', 'toolkit (default)', 'floor: matrix products only')
COMPILED = 'toolkit compile=True'


def step(model: nn.Module, x: torch.Tensor) -> None:
    sum(o.float().square().mean() for o in model(x)).backward()


def matrix_product_floor(model: MetaFormerBackbone, x: torch.Tensor) -> Callable[[], None]:
    """A function that runs only the step's matrix products and convolutions, once each."""
    if not model._pooling_mixers:
        raise SystemExit(f'{model.arch}: the floor is written for pooling token mixers '
                         '(PoolFormer v1/v2)')
    work: List[Callable[[], None]] = []
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    # the stem and the downsampling convolutions: forward, input and weight gradients
    feats = []
    with torch.no_grad():
        h = model.stem(x)
        feats.append((model.stem.conv, x, h))
        for stage in model.stages:
            if hasattr(stage.downsample, 'conv'):
                y = stage.downsample(h)
                feats.append((stage.downsample.conv, h, y))
                h = y
            rows, dim = h.shape[0] * h.shape[2] * h.shape[3], h.shape[1]
            hidden = stage.blocks[0].mlp.fc1.out_channels
            a, w1, w2 = rand(rows, dim), rand(hidden, dim), rand(dim, hidden)
            hid, out = torch.empty(rows, hidden), torch.empty(rows, dim)
            g_out, g_hid, g_in = rand(rows, dim), torch.empty(rows, hidden), torch.empty(rows, dim)
            gw1, gw2 = torch.empty(hidden, dim), torch.empty(dim, hidden)

            def block(a=a, w1=w1, w2=w2, hid=hid, out=out, g_out=g_out, g_hid=g_hid, g_in=g_in,
                      gw1=gw1, gw2=gw2):
                torch.mm(a, w1.t(), out=hid)          # fc1
                torch.mm(hid, w2.t(), out=out)        # fc2
                torch.mm(g_out, w2, out=g_hid)        # fc2: input gradient
                torch.mm(g_out.t(), hid, out=gw2)     # fc2: weight gradient
                torch.mm(g_hid, w1, out=g_in)         # fc1: input gradient
                torch.mm(g_hid.t(), a, out=gw1)       # fc1: weight gradient
            work += [block] * len(stage.blocks)
    for conv, inp, out in feats:
        inp = inp.detach().requires_grad_(inp is not x)
        weight = conv.weight.detach().clone().requires_grad_(True)
        grad = torch.randn_like(out)

        def run(conv=conv, inp=inp, weight=weight, grad=grad):
            y = torch.nn.functional.conv2d(inp, weight, conv.bias, conv.stride, conv.padding)
            y.backward(grad)
        work.append(run)

    def floor():
        for fn in work:
            fn()
    return floor


def fp32_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    c = torch.empty(size, size)
    torch.mm(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2 * size ** 3 / min(times) / 1e9


def step_flops(model: nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step(model, x)
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run(archs, size, batch, repeats, warmup, compile_: bool = False) -> list:
    from tqdm import tqdm
    rows = []
    progress = tqdm(total=len(archs) * (warmup + repeats) * (len(IMPLS) + compile_), unit='step')
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    for arch in archs:
        ours = MetaFormerBackbone(arch)
        randomize_(ours)
        timm_model = timm_features(arch, {k: v.contiguous() for k, v in ours.state_dict().items()})
        models = {'timm': timm_model.train(), 'toolkit (default)': ours.train()}
        progress.set_postfix_str(f'{arch}: counting FLOPs')
        flops = step_flops(timm_model, x)
        fns: Dict[str, Callable[[], None]] = {k: (lambda m=m: step(m, x))
                                              for k, m in models.items()}
        fns[IMPLS[2]] = matrix_product_floor(ours, x)
        compile_s = rejected = None
        if compile_:
            compiled = MetaFormerBackbone(arch, compile=True)
            compiled.load_state_dict(ours.state_dict())
            models[COMPILED] = compiled.train()
            progress.set_postfix_str(f'{arch}: compiling the training step')
            t0 = time.perf_counter()
            step(compiled, x)  # compiles forward and backward; checked against eager once
            compile_s = time.perf_counter() - t0
            compiled.zero_grad(set_to_none=True)
            rejected = compiled._compiled_forward.rejected
            fns[COMPILED] = lambda m=compiled: step(m, x)
        progress.set_postfix_str(f'{arch}: timing')
        times = interleaved(fns, repeats, warmup, torch.device('cpu'), progress,
                            after=lambda k: k in models and models[k].zero_grad(set_to_none=True))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(dict(arch=arch, input=list(size), batch=batch, step_gflop=flops / 1e9,
                         median_s=med, times_s=times, compile_first_step_s=compile_s,
                         compile_rejected=rejected,
                         best_possible_speedup_vs_timm=med['timm'] / med[IMPLS[2]]))
    progress.close()
    return rows


def to_markdown(rec: dict) -> str:
    m = rec['machine']
    peak = rec['fp32_peak_gflops']
    lines = ['# How fast a PoolFormer training step can be on this CPU: the matrix-product floor',
             '', f'`{rec["command"]}` on {m["cpu"]} ({m["torch_threads"]} threads), {rec["date"]}; '
             + ', '.join(f'{k} {v}' for k, v in rec['versions'].items()) + '.', '',
             'Backbone forward + backward, fp32, medians of interleaved repeats. "floor" runs only '
             'the step\'s matrix products (fc1/fc2 forward, input and weight gradients, every '
             'block) and its convolutions (stem, downsampling) with torch\'s kernels on '
             'preallocated buffers: no implementation built on those kernels can be faster. '
             f'Matrix-product peak of this machine (2048x2048x2048, fp32): {peak:.0f} GFLOP/s.', '',
             '| arch | batch x input | step GFLOP | timm | toolkit (default) | floor | '
             'toolkit / timm | best possible vs timm (timm / floor) | floor at peak |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rec['rows']:
        t = r['median_s']
        lines.append(
            f'| {r["arch"]} | {r["batch"]}x{r["input"][0]}x{r["input"][1]} | '
            f'{r["step_gflop"]:.0f} | {t["timm"] * 1e3:.0f} ms | '
            f'{t["toolkit (default)"] * 1e3:.0f} ms | {t[IMPLS[2]] * 1e3:.0f} ms | '
            f'{t["timm"] / t["toolkit (default)"]:.2f}x faster | '
            f'{r["best_possible_speedup_vs_timm"]:.2f}x | '
            f'{r["step_gflop"] / peak * 1e3:.0f} ms |')
    compiled = [r for r in rec['rows'] if COMPILED in r['median_s']]
    if compiled:
        lines += ['', 'With `compile=True` (torch\'s compiler fuses GELU, GroupNorm, pooling and '
                  'the residual updates, forward and backward, into generated C++ kernels; the '
                  'matrix products stay torch\'s): how close fused element-wise work gets to '
                  'the floor, in the same interleaved run.', '',
                  '| arch | batch x input | compiled step | compiled / timm | above the floor '
                  '| first step (compiling) | checked against eager |',
                  '|---|---|---|---|---|---|---|']
        for r in compiled:
            t = r['median_s']
            lines.append(
                f'| {r["arch"]} | {r["batch"]}x{r["input"][0]}x{r["input"][1]} | '
                f'{t[COMPILED] * 1e3:.0f} ms | {t["timm"] / t[COMPILED]:.2f}x faster | '
                f'{(t[COMPILED] - t[IMPLS[2]]) * 1e3:.0f} ms | '
                f'{r["compile_first_step_s"]:.0f} s | '
                + ('agreed' if r['compile_rejected'] is None
                   else f'**rejected** ({r["compile_rejected"]}; the row times eager)') + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
    p = step_parser(__doc__, ['poolformer_s12'], batch=1, repeats=7, warmup=1)
    p.add_argument('--compile', action='store_true',
                   help='also time the toolkit with compile=True (compiling takes minutes)')
    p.add_argument('--out', default=None, help='record path without extension (default: '
                   'benchmarks/studies/results/step_floor_cpu)')
    args = p.parse_args(argv)
    rec = dict(date=datetime.datetime.now().isoformat(timespec='seconds'),
               command=shlex.join(['python', '-m', 'benchmarks.studies.step_floor']
                                  + list(sys.argv[1:] if argv is None else argv)),
               machine=machine_info(torch.device('cpu')), versions=versions(),
               fp32_peak_gflops=fp32_peak_gflops(),
               rows=run(args.archs, args.size, args.batch, args.repeats, args.warmup,
                        args.compile))
    out = Path(args.out or STUDY_RESULTS / 'step_floor_cpu')
    write_record(out, rec, to_markdown(rec))
    print(to_markdown(rec))
    return rec


if __name__ == '__main__':
    main()
