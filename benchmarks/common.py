"""What the benchmark scripts share: where records go, their common options, an ``HxW`` size,
writing a record."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence, Tuple, Union

#: The repository root (configs and data are found from here).
REPO = Path(__file__).resolve().parents[1]
#: Records of the user tools (speed, report, learning runs).
RESULTS = REPO / 'benchmarks' / 'results'
#: Records of the studies behind the defaults (``benchmarks/studies/``).
STUDY_RESULTS = REPO / 'benchmarks' / 'studies' / 'results'


def parse_size(text: str) -> Tuple[int, int]:
    """``'800x1216'`` -> ``(800, 1216)``; an ``argparse`` type, so a bad size is a usage error."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        h = w = 0
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f'bad size {text!r}: write HxW, e.g. 800x1216')
    return h, w


def write_record(out: Union[str, Path], rec: dict, markdown: str) -> Path:
    """Write ``<out>.json`` (the record) and ``<out>.md`` (its rendering); return ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f'{out}.json').write_text(json.dumps(rec, indent=1) + '\n')
    Path(f'{out}.md').write_text(markdown)
    return out


def step_parser(doc: str, archs: Sequence[str], batch: int, repeats: int,
                warmup: int) -> argparse.ArgumentParser:
    """The options of the training-step benchmarks: archs, image size, batch, repeats."""
    p = argparse.ArgumentParser(description=doc.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=list(archs))
    p.add_argument('--size', type=parse_size, default='800x1216', help='HxW of the images')
    p.add_argument('--batch', type=int, default=batch)
    p.add_argument('--repeats', type=int, default=repeats, help='timed repeats (medians)')
    p.add_argument('--warmup', type=int, default=warmup, help='untimed repeats first')
    return p
