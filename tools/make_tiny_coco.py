"""Generate the carried tiny COCO-format dataset (``data/tiny_coco``) deterministically.

Each image (128-160 px a side) is a textured background (stripes plus noise in muted colours)
with one to three large (40-95 px), saturated, non-overlapping shapes: ``circle``, ``square``
or ``triangle``. Shape colour is drawn independently of the class, so a detector must learn
shape, not colour.
Every instance has a box and a polygon mask; the mask is the very polygon that was painted,
so boxes, masks and pixels agree exactly.

Layout (what mmdet's ``CocoDataset`` / ``CocoMetric`` read unchanged)::

    data/tiny_coco/train/000000.jpg ...
    data/tiny_coco/val/000000.jpg ...
    data/tiny_coco/annotations/instances_train.json
    data/tiny_coco/annotations/instances_val.json

The output depends only on the seed and the counts (numpy's PCG64 stream, PIL drawing and
JPEG encoding), so re-running with the defaults reproduces the carried files; the test suite
checks that. Needs numpy, Pillow and pycocotools only.

Usage::

    python tools/make_tiny_coco.py                      # (re)write data/tiny_coco
    python tools/make_tiny_coco.py --out /tmp/tc --seed 1 --num-train 100
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

#: Category names, in COCO id order (ids start at 1).
CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle')
#: Saturated fill colours (RGB); any class may take any of them.
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (230, 40, 40), (40, 200, 60), (50, 90, 240), (245, 220, 30),
    (220, 60, 220), (40, 220, 230), (250, 140, 20), (250, 250, 250))
DEFAULT_SEED = 20240601
DEFAULT_NUM_TRAIN = 48
DEFAULT_NUM_VAL = 16
JPEG_QUALITY = 85
_CIRCLE_VERTICES = 24


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted base colour + oriented sine stripes + pixel noise, as uint8 HxWx3."""
    base = rng.uniform(50, 130, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 16)
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
    stripes = 18.0 * np.sin(phase)[..., None] * rng.uniform(0.5, 1.0, size=3)
    noise = rng.normal(0, 4.0, size=(height, width, 3))
    return np.clip(base + stripes + noise, 0, 255).astype(np.uint8)


def _polygon(rng: np.random.Generator, cls: str, cx: float, cy: float, r: float) -> List[float]:
    """Vertices (x0, y0, x1, y1, ...) of a shape of circumradius ``r`` centred at (cx, cy)."""
    if cls == 'circle':
        angles = np.linspace(0, 2 * math.pi, _CIRCLE_VERTICES, endpoint=False)
    elif cls == 'square':
        # Mostly upright squares, tilted by up to 15 degrees.
        start = math.pi / 4 + rng.uniform(-math.pi / 12, math.pi / 12)
        angles = start + np.arange(4) * (math.pi / 2)
    else:
        start = rng.uniform(0, 2 * math.pi)
        angles = start + np.arange(3) * (2 * math.pi / 3)
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    # One decimal is what the JSON stores; paint exactly what is stored.
    return [round(float(v), 1) for v in pts.reshape(-1)]


def _place(rng: np.random.Generator, height: int, width: int, count: int
           ) -> List[Tuple[float, float, float]]:
    """Non-overlapping circles (cx, cy, r) that bound the shapes, fully inside the image."""
    placed: List[Tuple[float, float, float]] = []
    for _ in range(200):
        if len(placed) == count:
            break
        r = rng.uniform(0.15, 0.3) * min(height, width)
        cx = rng.uniform(r + 2, width - r - 2)
        cy = rng.uniform(r + 2, height - r - 2)
        if all(math.hypot(cx - x, cy - y) > r + q + 4 for x, y, q in placed):
            placed.append((cx, cy, r))
    return placed


def _make_split(rng: np.random.Generator, out: Path, split: str, num_images: int,
                ann_start: int) -> Dict:
    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = ann_start
    for img_id in range(1, num_images + 1):
        width = int(rng.integers(128, 161))
        height = int(rng.integers(128, 161))
        canvas = Image.fromarray(_background(rng, height, width))
        draw = ImageDraw.Draw(canvas)
        for cx, cy, r in _place(rng, height, width, int(rng.integers(1, 4))):
            cls_idx = int(rng.integers(len(CLASSES)))
            poly = _polygon(rng, CLASSES[cls_idx], cx, cy, r)
            colour = PALETTE[int(rng.integers(len(PALETTE)))]
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=colour)
            xs, ys = poly[0::2], poly[1::2]
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
            annotations.append(dict(
                id=ann_id, image_id=img_id, category_id=cls_idx + 1,
                bbox=[round(min(xs), 1), round(min(ys), 1),
                      round(max(xs) - min(xs), 1), round(max(ys) - min(ys), 1)],
                area=float(mask_utils.area(rle)), segmentation=[poly], iscrowd=0))
            ann_id += 1
        file_name = f'{img_id:06d}.jpg'
        canvas.save(img_dir / file_name, format='JPEG', quality=JPEG_QUALITY)
        images.append(dict(id=img_id, file_name=file_name, width=width, height=height))
    return dict(
        info=dict(description=f'tiny synthetic shapes ({split}), tools/make_tiny_coco.py',
                  version='1.0'),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CLASSES)])


def make_tiny_coco(out: Path, seed: int = DEFAULT_SEED, num_train: int = DEFAULT_NUM_TRAIN,
                   num_val: int = DEFAULT_NUM_VAL) -> Dict[str, Path]:
    """Write the tiny COCO-format dataset under ``out``.

    Args:
        out: Dataset root; ``train/``, ``val/`` and ``annotations/`` are created in it.
        seed: Seed of the single numpy random stream all content is drawn from.
        num_train: Number of training images.
        num_val: Number of validation images.

    Returns:
        Paths of the written annotation files, keyed ``'train'`` and ``'val'``.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need at least one image per split, got num_train={num_train}, '
                         f'num_val={num_val}')
    out = Path(out)
    rng = np.random.default_rng(seed)
    (out / 'annotations').mkdir(parents=True, exist_ok=True)
    written = {}
    ann_start = 1
    for split, n in (('train', num_train), ('val', num_val)):
        coco = _make_split(rng, out, split, n, ann_start)
        ann_start += len(coco['annotations'])
        path = out / 'annotations' / f'instances_{split}.json'
        path.write_text(json.dumps(coco, separators=(',', ':')) + '\n')
        written[split] = path
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path,
                        default=Path(__file__).resolve().parents[1] / 'data' / 'tiny_coco',
                        help='dataset root to write (default: data/tiny_coco in this repo)')
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED, help='random seed')
    parser.add_argument('--num-train', type=int, default=DEFAULT_NUM_TRAIN, help='training images')
    parser.add_argument('--num-val', type=int, default=DEFAULT_NUM_VAL, help='validation images')
    args = parser.parse_args()
    written = make_tiny_coco(args.out, args.seed, args.num_train, args.num_val)
    for split, path in written.items():
        coco = json.loads(path.read_text())
        print(f'{split}: {len(coco["images"])} images, {len(coco["annotations"])} instances '
              f'-> {path}')


if __name__ == '__main__':
    main()
