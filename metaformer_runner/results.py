"""What a run leaves behind: prediction dumps for ``tools/test.py --out``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mmengine.evaluator import DumpResults

__all__ = ['DumpSegResults']


class DumpSegResults(DumpResults):
    """Pickle each image's predicted label map for offline evaluation (``tools/test.py --out``).

    Stores per image a dict with ``img_path``, ``seg_map_path`` (ground truth, if any) and
    ``pred_sem_seg``: an ``(H, W)`` uint8 array (int16 beyond 256 classes) at the original image
    size. Logits and ground-truth maps are dropped to keep the file small.
    """

    def process(self, data_batch: Any, predictions: Sequence[dict]) -> None:
        num_classes = len((self.dataset_meta or {}).get('classes', ())) or 256
        dtype = np.uint8 if num_classes <= 256 else np.int16
        for sample in predictions:
            labels = sample['pred_sem_seg']['data'].squeeze(0).cpu().numpy()
            self.results.append(dict(
                img_path=sample.get('img_path'), seg_map_path=sample.get('seg_map_path'),
                pred_sem_seg=labels.astype(dtype)))
