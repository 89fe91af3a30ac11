"""Datasets of a user's own, as docs/custom_dataset.md lays them out, and that page's configs.

Written for the tests that train from them: a COCO-format detection folder and an images +
label-PNG segmentation folder, with other class names and counts than the carried demo sets.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import REPO

PAGE = REPO / 'docs' / 'custom_dataset.md'
DET_CLASSES = ('bolt', 'nut', 'washer', 'spring')
SEG_CLASSES = ('background', 'road', 'grass', 'water', 'roof')
SIZE = 64  # px, square images


def page_config(name: str) -> str:
    """The python block that follows the page's line naming ``configs/<name>``."""
    text = PAGE.read_text()
    match = re.search(rf'`configs/{re.escape(name)}`:\n\n```python\n(.*?)```', text, re.S)
    assert match, f'{PAGE.name} shows no config block for configs/{name}'
    return match.group(1)


def user_tree(tmp_path: Path, name: str) -> Path:
    """``tmp_path/configs`` with links to the toolkit's configs and the page's config saved."""
    configs = tmp_path / 'configs'
    configs.mkdir(exist_ok=True)
    for path in (REPO / 'configs').iterdir():
        if not (configs / path.name).exists():
            (configs / path.name).symlink_to(path)
    (configs / name).write_text(page_config(name))
    return configs / name


def boxes_image(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list]:
    """An image with ``n`` filled rectangles, and their ``(x, y, w, h, class index)``."""
    img = np.full((SIZE, SIZE, 3), 40, np.uint8)
    objects = []
    for _ in range(n):
        w, h = rng.integers(12, 28, size=2)
        x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
        label = int(rng.integers(len(DET_CLASSES)))
        img[y:y + h, x:x + w] = 60 + 45 * label
        objects.append((int(x), int(y), int(w), int(h), label))
    return img, objects


def write_coco_folder(root: Path, seed: int = 0) -> None:
    """data/my_coco as the page lays it out: 4 train and 2 val images, category ids from 1."""
    rng = np.random.default_rng(seed)
    (root / 'annotations').mkdir(parents=True)
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(DET_CLASSES)]
    for split, count in (('train', 4), ('val', 2)):
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(count):
            img, objects = boxes_image(rng, 3)
            file_name = f'{split}_{i:03d}.jpg'
            Image.fromarray(img).save(root / split / file_name, quality=95)
            images.append(dict(id=i + 1, file_name=file_name, width=SIZE, height=SIZE))
            for x, y, w, h, label in objects:
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=label + 1,
                    bbox=[x, y, w, h], area=w * h, iscrowd=0,
                    segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
        (root / 'annotations' / f'{split}.json').write_text(json.dumps(
            dict(images=images, annotations=annotations, categories=categories)))


def write_seg_folder(root: Path, seed: int = 0) -> None:
    """data/my_seg: JPEG images and label PNGs (classes 0-4, a 255 border unlabelled)."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', 4), ('val', 2)):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'labels' / split).mkdir(parents=True)
        for i in range(count):
            label = np.zeros((SIZE, SIZE), np.uint8)
            for cls in range(1, len(SEG_CLASSES)):
                w, h = rng.integers(16, 32, size=2)
                x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
                label[y:y + h, x:x + w] = cls
            label[:2], label[-2:] = 255, 255
            palette = np.array([[30, 30, 30], [128, 128, 128], [40, 160, 40], [40, 60, 200],
                                [180, 60, 40], [0, 0, 0]], np.uint8)
            img = palette[np.minimum(label, len(SEG_CLASSES))]
            Image.fromarray(img).save(root / 'images' / split / f'{i:03d}.jpg', quality=95)
            Image.fromarray(label).save(root / 'labels' / split / f'{i:03d}.png')


#: ``--cfg-options`` that shrink the page's segmentation config to 2 iterations on 64 px crops
#: (its pipelines as the page writes them: scale at index 2 / 1, the crop at index 3).
SEG_SMALL = (
    'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
    'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
    'val_dataloader.persistent_workers=False', 'model.backbone.init_cfg=None',
    f'model.data_preprocessor.size=({SIZE},{SIZE})',
    f'train_dataloader.dataset.pipeline.2.scale=({SIZE},{SIZE})',
    f'train_dataloader.dataset.pipeline.3.crop_size=({SIZE},{SIZE})',
    f'val_dataloader.dataset.pipeline.1.scale=({SIZE},{SIZE})')
