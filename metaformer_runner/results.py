"""What runs leave behind: the metrics in a work dir.

mmengine's Runner writes, under ``<work_dir>/<timestamp>/``, ``vis_data/scalars.json`` (one JSON
object per logged training step or validation) and, for ``tools/test.py``, ``<timestamp>.json``
(the test metrics). :func:`read_metrics` is the one reader of both; the report, the quick start
and the learning benchmarks use it.
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Dict, List, Tuple, Union


__all__ = ['load_records', 'newest_training_log', 'read_metrics']

PathLike = Union[str, Path]


def load_records(path: PathLike) -> List[dict]:
    """The JSON objects of a file as mmengine writes them: one object, or one object per line.

    Lines that are not JSON objects are skipped.
    """
    text = Path(path).read_text()
    try:
        obj = json.loads(text)
        return [obj] if isinstance(obj, dict) else []
    except json.JSONDecodeError:
        records = []
        for line in text.splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                records.append(obj)
        return records


def newest_training_log(work_dir: PathLike) -> Path:
    """``<work_dir>/<timestamp>/vis_data/scalars.json`` of the newest run.

    Raises:
        FileNotFoundError: No run has logged under ``work_dir``.
    """
    runs = sorted(Path(work_dir).glob('*/vis_data/scalars.json'), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f'no training log (*/vis_data/scalars.json) under {work_dir}')
    return runs[-1]


def read_metrics(work_dir: PathLike, keys: Sequence[str]) -> Tuple[Dict[str, float], str]:
    """The newest evaluation metrics under ``work_dir`` (searched recursively), as logged.

    ``tools/test.py`` results come first; validation records inside training logs
    (``vis_data/``) are used only when no test result holds any of ``keys``. Newest file first
    in each group, and the last matching record of a file.

    Args:
        work_dir: A run's work directory.
        keys: Metric names as mmengine logs them, e.g. ``'coco/bbox_mAP'`` or ``'mIoU'``.

    Returns:
        ``({key: value}, 'path (date)')`` for the keys that record holds; ``({}, '')`` when no
        record holds any of them.
    """
    files = list(Path(work_dir).glob('**/*.json'))
    files.sort(key=lambda p: ('vis_data' not in p.parts, p.stat().st_mtime), reverse=True)
    for path in files:
        for rec in reversed(load_records(path)):
            found = {k: float(rec[k]) for k in keys if k in rec}
            if found:
                when = datetime.datetime.fromtimestamp(path.stat().st_mtime)
                return found, f'{path} ({when:%Y-%m-%d %H:%M})'
    return {}, ''
