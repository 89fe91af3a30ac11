"""What the benchmark scripts share: reading an ``HxW`` size, and writing a record."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Tuple, Union


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
