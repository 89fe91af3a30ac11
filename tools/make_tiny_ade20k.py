"""Generate ``data/tiny_ade20k``: a small synthetic dataset in ADE20K's layout.

The full ADE20K (``data/ade/ADEChallengeData2016``) is 1 GB and cannot be carried in the
repository. This script draws a few dozen small outdoor scenes (sky, buildings, trees, road, grass,
water) with numpy and PIL, so the segmentation demo and tests can train and evaluate a real
mmseg ``ADE20KDataset`` offline on a CPU. Layout, as mmseg expects::

    data/tiny_ade20k/images/{training,validation}/ADE_{train,val}_%08d.jpg
    data/tiny_ade20k/annotations/{training,validation}/ADE_{train,val}_%08d.png

Label maps are 8-bit PNGs holding ADE20K's raw values: ``0`` = unlabelled / other (small clutter
objects are drawn with it) and ``1..150`` = the ADE20K classes, so ``reduce_zero_label=True``
maps ``0`` to the ignore index 255 and class ``k`` to training id ``k - 1``. Output is a pure
function of ``--seed`` and the counts: re-running reproduces the checked-in files.

Example::

    python tools/make_tiny_ade20k.py                       # rewrites data/tiny_ade20k
    python tools/make_tiny_ade20k.py --out /tmp/t --num-train 8 --num-val 2
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw

#: Raw ADE20K label values (1-based positions in ``ADE20KDataset.METAINFO['classes']``).
CLASSES: Dict[str, int] = {
    'building': 2, 'sky': 3, 'tree': 5, 'road': 7, 'grass': 10, 'water': 22,
}
OTHER = 0  # ADE20K's "unlabelled": becomes the ignore index under reduce_zero_label=True
JPEG_QUALITY = 80


def smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], cells: int,
                 amplitude: float) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bilinearly to ``shape`` (H, W)."""
    h, w = shape
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    img = Image.fromarray(grid).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) * amplitude


def class_textures(rng: np.random.Generator, h: int, w: int, horizon: int) -> Dict[int, np.ndarray]:
    """One full-frame float RGB texture per class; the label map picks pixels from them."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tex = {}

    # Sky: blue gradient brightening towards the horizon, with soft clouds.
    t = np.clip(yy / max(horizon, 1), 0, 1)[..., None]
    top = np.array([70, 130, 220], np.float32) + rng.uniform(-15, 15, 3)
    low = np.array([175, 205, 240], np.float32) + rng.uniform(-10, 10, 3)
    clouds = np.clip(smooth_noise(rng, (h, w), 6, 1.0), 0, 1)[..., None] * 70
    tex[CLASSES['sky']] = top * (1 - t) + low * t + clouds

    # Tree: dark green foliage with strong fine speckle.
    base = np.array([40, 100, 35], np.float32) + rng.uniform(-10, 10, 3)
    speckle = rng.normal(0, 22, (h, w, 1)).astype(np.float32)
    tex[CLASSES['tree']] = base + speckle + smooth_noise(rng, (h, w), 8, 15)[..., None]

    # Road: flat grey asphalt with fine grain.
    grey = rng.uniform(85, 115)
    tex[CLASSES['road']] = np.full((h, w, 3), grey, np.float32) + rng.normal(0, 5, (h, w, 1))

    # Grass: light green with vertical streaks.
    base = np.array([90, 165, 60], np.float32) + rng.uniform(-15, 15, 3)
    streaks = np.sin(xx * rng.uniform(0.9, 1.5) + rng.uniform(0, 6.3))[..., None] * 12
    tex[CLASSES['grass']] = base + streaks + smooth_noise(rng, (h, w), 5, 20)[..., None]

    # Water: deep blue with horizontal ripples.
    base = np.array([25, 70, 130], np.float32) + rng.uniform(-10, 10, 3)
    ripples = np.sin(yy * rng.uniform(0.8, 1.3) + xx * 0.05)[..., None] * np.array([10, 15, 25],
                                                                                    np.float32)
    tex[CLASSES['water']] = base + ripples
    return tex


def draw_scene(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one scene; return ``(rgb uint8 HxWx3, raw ADE label uint8 HxW)``."""
    horizon = int(h * rng.uniform(0.35, 0.6))
    label = Image.new('L', (w, h), CLASSES['sky'])
    draw = ImageDraw.Draw(label)
    # Ground: grass everywhere below the horizon, maybe a lake, then a road in perspective.
    draw.rectangle([0, horizon, w, h], fill=CLASSES['grass'])
    if rng.random() < 0.6:
        x0 = int(rng.uniform(0, 0.5) * w)
        x1 = x0 + int(rng.uniform(0.3, 0.6) * w)
        draw.rectangle([x0, horizon, x1, horizon + int(rng.uniform(0.15, 0.3) * h)],
                       fill=CLASSES['water'])
    if rng.random() < 0.85:
        cx = rng.uniform(0.3, 0.7) * w
        far, near = rng.uniform(0.02, 0.06) * w, rng.uniform(0.25, 0.45) * w
        draw.polygon([(cx - far, horizon), (cx + far, horizon), (cx + near, h), (cx - near, h)],
                     fill=CLASSES['road'])
    # Buildings standing on the horizon; each gets its own wall colour and window grid below.
    buildings = []
    for _ in range(int(rng.integers(0, 4))):
        bw = int(rng.uniform(0.12, 0.3) * w)
        bx = int(rng.uniform(0, 1) * (w - bw))
        by = int(horizon - rng.uniform(0.2, 0.8) * horizon)
        draw.rectangle([bx, by, bx + bw, horizon], fill=CLASSES['building'])
        buildings.append((bx, by, bx + bw, horizon))
    # Trees: round crowns on the horizon line, in front of buildings.
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.06, 0.14) * w
        cx, cy = rng.uniform(0, w), horizon - r * rng.uniform(0.3, 0.9)
        draw.ellipse([cx - r, cy - r * 1.2, cx + r, cy + r], fill=CLASSES['tree'])
    # Clutter the annotators would leave unlabelled.
    for _ in range(int(rng.integers(0, 3))):
        s = rng.uniform(0.04, 0.08) * w
        cx, cy = rng.uniform(0, w), rng.uniform(horizon, h)
        draw.ellipse([cx - s, cy - s, cx + s, cy + s], fill=OTHER)
    clutter_color = rng.integers(0, 256, 3)

    lab = np.asarray(label, dtype=np.uint8).copy()
    tex = class_textures(rng, h, w, horizon)
    img = np.zeros((h, w, 3), np.float32)
    for value, t in tex.items():
        img[lab == value] = t[lab == value]
    for x0, y0, x1, y1 in buildings:
        wall = rng.uniform(110, 190) + rng.uniform(-20, 20, 3)
        ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        windows = ((ys - y0) % 8 >= 3) & ((ys - y0) % 8 < 6) & ((xs - x0) % 7 >= 2) & \
                  ((xs - x0) % 7 < 5)
        patch = np.where(windows[..., None], wall * 0.35, wall).astype(np.float32)
        mask = lab[y0:y1 + 1, x0:x1 + 1] == CLASSES['building']
        img[y0:y1 + 1, x0:x1 + 1][mask] = patch[mask]
    img[lab == OTHER] = clutter_color  # flat odd-coloured blobs
    # Dashed lane marking down the road centre (still road).
    road = lab == CLASSES['road']
    rows = np.nonzero(road.any(axis=1))[0]
    for y in rows:
        if (y // 6) % 2 == 0:
            xs = np.nonzero(road[y])[0]
            mid, half = (xs[0] + xs[-1]) // 2, max(1, (y - horizon) // 25)
            img[y, mid - half:mid + half + 1][road[y, mid - half:mid + half + 1]] = (220, 200, 60)
    return np.clip(img, 0, 255).astype(np.uint8), lab


def generate(out: str, num_train: int = 32, num_val: int = 8, seed: int = 0) -> None:
    """Write the dataset under ``out`` (its ``images`` and ``annotations`` folders are replaced).

    Args:
        out: Dataset root, e.g. ``data/tiny_ade20k``.
        num_train: Images in the ``training`` split.
        num_val: Images in the ``validation`` split.
        seed: Seed of the numpy generator; the files are a pure function of it and the counts.
    """
    rng = np.random.default_rng(seed)
    for sub in ('images', 'annotations'):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    for split, prefix, count in (('training', 'ADE_train', num_train),
                                 ('validation', 'ADE_val', num_val)):
        img_dir = os.path.join(out, 'images', split)
        ann_dir = os.path.join(out, 'annotations', split)
        os.makedirs(img_dir)
        os.makedirs(ann_dir)
        for i in range(1, count + 1):
            h, w = int(rng.integers(128, 193)), int(rng.integers(160, 257))
            img, lab = draw_scene(rng, h, w)
            name = f'{prefix}_{i:08d}'
            Image.fromarray(img).save(os.path.join(img_dir, name + '.jpg'), quality=JPEG_QUALITY)
            Image.fromarray(lab).save(os.path.join(ann_dir, name + '.png'), optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--out', default='data/tiny_ade20k', help='dataset root to (re)write')
    parser.add_argument('--num-train', type=int, default=32, help='training images (default 32)')
    parser.add_argument('--num-val', type=int, default=8, help='validation images (default 8)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    args = parser.parse_args()
    if args.num_train < 1 or args.num_val < 1:
        parser.error('--num-train and --num-val must be at least 1')
    generate(args.out, args.num_train, args.num_val, args.seed)
    print(f'wrote {args.num_train} training and {args.num_val} validation images to {args.out}')


if __name__ == '__main__':
    main()
