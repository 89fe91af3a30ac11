"""Does the segmentation pipeline learn? Train the tiny Semantic FPN PoolFormer-S12 demo and record mIoU.

Trains ``configs/demo/semantic_fpn_poolformer_s12_tiny.py`` (the paper's S12 recipe on the carried
synthetic ``data/tiny_ade20k``, random backbone init) for ``--iters`` iterations on CPU with the
real mmengine Runner, evaluates on the 8 validation images, and writes
``benchmarks/results/learning_segmentation.{json,md}``: mIoU / mAcc / aAcc from mmseg's
``IoUMetric``, per-class IoU, the loss at the start and end of training, wall time, and a
constant-prediction baseline (every pixel = the most frequent class) for scale.

This is a check that data, model, loss, optimiser and evaluation fit together, not an ADE20K
number: ``benchmarks/published.py`` holds the paper's results.

Example::

    OMP_NUM_THREADS=2 python -m benchmarks.learning_segmentation --iters 80
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Dict

import numpy as np
import torch

from benchmarks.common import REPO, RESULTS
from benchmarks.environment import describe, machine_info, versions

CONFIG = 'configs/demo/semantic_fpn_poolformer_s12_tiny.py'


def per_class_iou(runner) -> Dict[str, object]:
    """Evaluate the trained model on the validation split; IoU per class and a constant baseline."""
    from mmseg.evaluation import IoUMetric
    classes = runner.val_dataloader.dataset.metainfo['classes']
    n = len(classes)
    inter, union, label_area = np.zeros(n), np.zeros(n), np.zeros(n)
    model = runner.model.eval()
    for data in runner.val_dataloader:
        with torch.no_grad():
            outs = model.val_step(data)
        for out in outs:
            pred = out.pred_sem_seg.data.squeeze(0).cpu()
            gt = out.gt_sem_seg.data.squeeze(0).cpu()
            i, u, _, lab = IoUMetric.intersect_and_union(pred, gt, n, 255)
            inter += i.numpy()
            union += u.numpy()
            label_area += lab.numpy()
    labelled = label_area > 0
    iou = {classes[c]: round(100 * inter[c] / union[c], 2) for c in np.nonzero(labelled)[0]}
    # Classes predicted somewhere but absent from the ground truth: IoUMetric counts them as 0.
    spurious = [classes[c] for c in np.nonzero((union > 0) & ~labelled)[0]]
    # Baseline: predict the most frequent validation class everywhere.
    top = int(label_area.argmax())
    base = np.zeros(n)
    base[top] = label_area[top] / label_area.sum()
    return dict(per_class_iou=iou, spurious_classes=spurious,
                constant_baseline=dict(predicted_class=classes[top],
                                       mIoU=round(100 * base[labelled].mean(), 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--iters', type=int, default=80, help='training iterations (default 80; the demo runs 40)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument('--work-dir', default='work_dirs/learning_segmentation',
                        help='runner work dir (logs, last checkpoint)')
    parser.add_argument('--out', default=str(RESULTS / 'learning_segmentation'),
                        help='output path without extension (.json and .md are written)')
    args = parser.parse_args()
    if args.iters < 1:
        parser.error('--iters must be at least 1')
    os.chdir(REPO)  # the config's data root is relative to the repository

    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = args.work_dir
    cfg.randomness = dict(seed=args.seed)
    cfg.train_cfg.max_iters = args.iters
    cfg.train_cfg.val_interval = args.iters
    cfg.param_scheduler[0].end = args.iters
    cfg.default_hooks.checkpoint.interval = args.iters
    cfg.default_hooks.logger.interval = 50
    runner = Runner.from_cfg(cfg)
    start = time.time()
    runner.train()
    wall = time.time() - start

    hub = runner.message_hub
    losses = np.asarray(hub.get_scalar('train/loss').data[0], dtype=float)
    k = min(50, len(losses))
    result = dict(
        config=CONFIG,
        iters=args.iters,
        batch_size=cfg.train_dataloader.batch_size,
        crop_size=list(cfg.crop_size),
        seed=args.seed,
        **{m: round(float(hub.get_scalar(f'val/{m}').current()), 2) for m in ('mIoU', 'mAcc', 'aAcc')},
        loss_first_50=round(float(losses[:k].mean()), 4),
        loss_last_50=round(float(losses[-k:].mean()), 4),
        train_wall_s=round(wall, 1),
        **per_class_iou(runner),
        command=f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "")} '
                f'python -m benchmarks.learning_segmentation --iters {args.iters} --seed {args.seed}',
        machine=machine_info(torch.device('cpu')),
        versions=versions(),
        commit=subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                              text=True).stdout.strip(),
    )
    with open(args.out + '.json', 'w') as f:
        json.dump(result, f, indent=2)
    rows = '\n'.join(f'| {c} | {v:.2f} |' for c, v in result['per_class_iou'].items())
    base = result['constant_baseline']
    md = f"""# Learning check: Semantic FPN PoolFormer-S12 on tiny synthetic ADE20K

`{CONFIG}` (the paper's S12 recipe, random backbone init) trained for {args.iters} iterations at
batch {result['batch_size']} with {result['crop_size'][0]}x{result['crop_size'][1]} crops on the 32 synthetic training images of
`data/tiny_ade20k`, then evaluated on its 8 validation images with mmseg's `IoUMetric` (mIoU over
every class that is labelled or predicted). A check that the pipeline learns, not an ADE20K result.

| metric | value |
|--------|------:|
| mIoU | {result['mIoU']:.2f} |
| mAcc | {result['mAcc']:.2f} |
| aAcc | {result['aAcc']:.2f} |
| constant "{base['predicted_class']}" baseline mIoU | {base['mIoU']:.2f} |
| train loss, first 50 iters (mean) | {result['loss_first_50']:.3f} |
| train loss, last 50 iters (mean) | {result['loss_last_50']:.3f} |
| training wall time | {result['train_wall_s'] / 60:.1f} min |

| class (labelled in validation) | IoU |
|--------------------------------|----:|
{rows}

Classes predicted but absent from the validation labels (IoU 0 in the mIoU):
{', '.join(result['spurious_classes']) or 'none'}.

Machine: {describe(result['machine'], result['versions'])}; commit {result['commit']}.

Reproduce: `{result['command']}`
"""
    with open(args.out + '.md', 'w') as f:
        f.write(md)
    print(md)


if __name__ == '__main__':
    main()
