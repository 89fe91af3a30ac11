"""docs/custom_dataset.md's configs, copied from the page, train on folders of their layout.

The folders are written here: a COCO-format detection set and an images + label-PNG segmentation
set, with other class names and counts than the carried demo sets. Each config is saved next to
the toolkit's configs (symbolic links to them in a temporary ``configs/``), as the page says, and
trained a few iterations by ``tools/train.py`` from a temporary working directory that holds
``data/``. Only sizes, schedule and initialisation are overridden on the command line, so that
the runs take seconds on a CPU; the page's configs are used as written.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import REPO, metrics_of, reported_metric, run_script
from metaformer_dense import allow_runner_checkpoints, read_checkpoint
from user_datasets import (DET_CLASSES, SEG_CLASSES, SEG_SMALL, SIZE, page_config, user_tree,
                           write_coco_folder, write_seg_folder)


def train(config: Path, work_dir: Path, *overrides: str):
    return run_script(REPO / 'tools' / 'train.py', config, '--work-dir', work_dir,
                      '--cfg-options', *overrides,
                      cwd=config.parents[1])


def runner_checkpoint(path: Path) -> dict:
    """A tools/train.py checkpoint, read as the toolkit's tools read it (no code from the file)."""
    allow_runner_checkpoints()
    return read_checkpoint(path)


def test_page_configs_are_a_few_lines_on_the_toolkits_configs():
    for name, base in (('my_retinanet_poolformer_s12.py', 'retinanet_poolformer_s12.py'),
                       ('my_semantic_fpn_poolformer_s12.py', 'semantic_fpn_poolformer_s12.py')):
        text = page_config(name)
        assert text.startswith(f"_base_ = './{base}'\n") and (REPO / 'configs' / base).exists()
        assert len(text.splitlines()) <= 40


def test_the_written_classes_are_not_the_carried_sets():
    carried = json.loads((REPO / 'data/tiny_coco/annotations/instances_train.json').read_text())
    assert {c['name'] for c in carried['categories']}.isdisjoint(DET_CLASSES)
    assert len(DET_CLASSES) != len(carried['categories']) and len(SEG_CLASSES) != 150


def test_detection_on_a_coco_format_folder(tmp_path):
    write_coco_folder(tmp_path / 'data' / 'my_coco')
    config = user_tree(tmp_path, 'my_retinanet_poolformer_s12.py')
    work = tmp_path / 'work'
    small = f'({SIZE},{SIZE})'
    train(config, work, 'model.backbone.init_cfg=None', 'train_cfg.max_epochs=1',
          'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
          'train_dataloader.persistent_workers=False',
          'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
          f'train_dataloader.dataset.pipeline.2.scale={small}',
          f'val_dataloader.dataset.pipeline.1.scale={small}',
          'model.test_cfg.score_thr=0.0')  # untrained scores sit below the default 0.05
    state = runner_checkpoint(work / 'epoch_1.pth')
    # one class logit per anchor (9 per position) and class of the folder
    assert state['state_dict']['bbox_head.retina_cls.weight'].shape[0] == 9 * len(DET_CLASSES)
    assert state['meta']['dataset_meta']['classes'] == DET_CLASSES
    log = '\n'.join(p.read_text() for p in work.glob('*/*.log'))
    assert 'Epoch(train) [1][2/2]' in log  # the 4 train images at batch 2: every box kept
    reported_metric(metrics_of(work), 'coco/bbox_mAP')


def test_segmentation_on_a_folder_of_images_and_label_pngs(tmp_path):
    write_seg_folder(tmp_path / 'data' / 'my_seg')
    config = user_tree(tmp_path, 'my_semantic_fpn_poolformer_s12.py')
    work = tmp_path / 'work'
    train(config, work, *SEG_SMALL)
    state = runner_checkpoint(work / 'iter_2.pth')
    assert state['state_dict']['decode_head.conv_seg.weight'].shape[0] == len(SEG_CLASSES)
    assert tuple(state['meta']['dataset_meta']['classes']) == SEG_CLASSES
    metrics = metrics_of(work)
    reported_metric(metrics, 'mIoU')
    # the per-class IoU table names every class of the page's metainfo
    log = '\n'.join(p.read_text() for p in work.glob('*/*.log'))
    for name in SEG_CLASSES:
        assert re.search(rf'\|\s*{name}\s*\|', log), f'{name} missing from the IoU table'
