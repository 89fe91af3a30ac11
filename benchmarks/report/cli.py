"""Benchmark report: params, FLOPs, speed, memory and accuracy of configs next to the paper.

For every config (default: all ``configs/*.py`` at the top level) the built model's parameters,
its FLOPs at the paper's input size (detection 1280x800, segmentation 512x512), inference
latency / FPS and peak training memory (on a GPU only), and the box AP / mask AP / mIoU that the
user's own ``tools/test.py`` runs wrote under ``work_dirs/<config name>/`` are put next to the
published numbers (``benchmarks/published.py``), with the difference. A cell that cannot be
filled says why. A PNG plots accuracy against params and against FLOPs, paper points and the
user's.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.report              # all configs -> benchmarks/results/report.*
    .venv/bin/python -m benchmarks.report configs/retinanet_poolformer_s12.py \\
        --out /tmp/report.md --plot /tmp/report.png
    .venv/bin/python -m benchmarks.report --update configs/retinanet_new.py  # new rows only
    make report
"""
from __future__ import annotations

import argparse
import datetime
import glob
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ..environment import describe, machine_info, versions
from .merge import merge_reports
from .render import plot, to_markdown
from .rows import analyse

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments of the report."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0] + ' Writes a markdown '
                                'report and a PNG plot, and prints the report.',
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('configs', nargs='*', help='config files (default: configs/*.py)')
    p.add_argument('--work-dirs', default='work_dirs',
                   help='where tools/test.py wrote results (default: work_dirs)')
    p.add_argument('--out', default='benchmarks/results/report.md', help='markdown report path')
    p.add_argument('--plot', default='benchmarks/results/report.png', help='PNG plot path')
    p.add_argument('--no-flops', action='store_true', help='skip FLOP counting (fast)')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                   help='cuda measures latency and training memory (default: cuda if present)')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    p.add_argument('--update', action='store_true',
                   help='measure only the configs given and put their rows into the existing '
                   '--out report (other rows stay as they are; the plot is not redrawn: a full '
                   'run redraws it)')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Measure every config, write the markdown report and the plot; return the markdown."""
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    device = args.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    elif device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda, but torch sees no GPU: drop --device or use cpu')
    if args.update and not (args.configs and Path(args.out).is_file()):
        raise SystemExit('--update puts the rows of the configs given into an existing report: '
                         f'name the configs, and make sure --out {args.out} exists')
    configs = args.configs or sorted(glob.glob(str(ROOT / 'configs' / '*.py')))
    missing = [c for c in configs if not Path(c).is_file()]
    if missing:
        raise SystemExit(f'config file(s) not found: {missing}')
    if not configs:
        raise SystemExit('no configs: pass config files or add configs/*.py')
    work_dirs = Path(args.work_dirs)
    t0 = time.time()
    rows = []
    with tqdm(configs, desc='report', unit='config', dynamic_ncols=True) as bar:
        for config in bar:
            bar.set_postfix_str(Path(config).stem)
            rows.append(analyse(config, work_dirs, not args.no_flops, device))
    machine = describe(machine_info(torch.device(device)), versions())
    meta = dict(date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
                command=' '.join(['python -m benchmarks.report',
                                  *(sys.argv[1:] if argv is None else argv)]),
                machine=machine, device=device,
                elapsed_s=time.time() - t0)
    md = to_markdown(rows, meta)
    out = Path(args.out)
    if args.update:
        names = ', '.join(Path(c).stem for c in configs)
        md = merge_reports(out.read_text(), md, (
            f'Rows of {names} measured {meta["date"]} by `{meta["command"]}` on '
            f'{meta["machine"]} ({meta["elapsed_s"]:.0f} s).'))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    if args.plot and not args.update:
        plot(rows, Path(args.plot))
    print(md)
    print(f'wrote {out}' + (f' and {args.plot}' if args.plot and not args.update else ''))
    return md

