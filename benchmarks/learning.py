"""Does it learn? Train the tiny demo configs from scratch on the carried data; record how far.

One runner for detection and segmentation. Each run trains one demo config with
``tools/train.py`` on the CPU from a random backbone init, validating as it goes, and reads the
validation curve and the training losses from the run's log:

* ``detection``: ``configs/demo/retinanet_poolformer_s12_tiny.py`` and
  ``configs/demo/mask_rcnn_poolformer_s12_tiny.py`` on ``data/tiny_coco`` (48 training images of
  circles / squares / triangles), the box (and mask) mAP curve on the 16 validation images; the
  schedule keeps the demo configs' shape (linear warm-up, then LR steps at 8/12 and 11/12 of the
  run, as COCO's 1x schedule) stretched to ``--epochs-*``. Record:
  ``benchmarks/results/learning_detection.{md,json}`` (runs merge into it by config).
* ``segmentation``: ``configs/demo/semantic_fpn_poolformer_s12_tiny.py`` (the paper's S12 recipe)
  on the synthetic ``data/tiny_ade20k`` for ``--iters`` iterations; mIoU / mAcc / aAcc from
  mmseg's ``IoUMetric`` on the 8 validation images, then the final checkpoint evaluated per class,
  with a constant-prediction baseline (every pixel = the most frequent class) for scale. Record:
  ``benchmarks/results/learning_segmentation.{md,json}``.

They check that data, model, loss, optimiser and evaluation fit together; they are not COCO or
ADE20K results (``benchmarks/published.py`` holds the papers').

Usage::

    OMP_NUM_THREADS=2 python -m benchmarks.learning detection   # both detectors, ~1 h on 2 cores
    python -m benchmarks.learning detection --only retinanet --epochs-retinanet 10
    python -m benchmarks.learning detection --render            # re-write the .md from the .json
    OMP_NUM_THREADS=2 python -m benchmarks.learning segmentation --iters 80
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmarks.common import REPO, RESULTS, write_record
from benchmarks.environment import describe, machine_info, versions
from metaformer_runner import load_config, load_records, newest_training_log

CONFIGS = {
    'retinanet': REPO / 'configs' / 'demo' / 'retinanet_poolformer_s12_tiny.py',
    'mask_rcnn': REPO / 'configs' / 'demo' / 'mask_rcnn_poolformer_s12_tiny.py',
    'semantic_fpn': REPO / 'configs' / 'demo' / 'semantic_fpn_poolformer_s12_tiny.py',
}
RECORD = RESULTS / 'learning_detection'
SEG_RECORD = RESULTS / 'learning_segmentation'


# ----------------------------------------------------------------------------- one run, any task
def environment() -> dict:
    """Date, machine, versions and commit of a record."""
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    return dict(date=datetime.date.today().isoformat(), machine=machine_info(torch.device('cpu')),
                versions=versions(), commit=commit)


def command_line(argv: Sequence[str]) -> str:
    """The command that reproduces this run, with its OMP_NUM_THREADS."""
    threads = os.environ.get('OMP_NUM_THREADS')
    return ((f'OMP_NUM_THREADS={threads} ' if threads else '')
            + shlex.join(['python', '-m', 'benchmarks.learning', *argv]))


def train(name: str, work_dir: Path, options: Sequence[str]) -> float:
    """Train ``CONFIGS[name]`` with tools/train.py and ``--cfg-options``; return minutes taken."""
    cmd = [sys.executable, str(REPO / 'tools' / 'train.py'), str(CONFIGS[name].relative_to(REPO)),
           '--work-dir', str(work_dir), '--cfg-options', *options]
    print('$', shlex.join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    return (time.time() - start) / 60


def read_log(work_dir: Path, metrics: Sequence[str]
             ) -> Tuple[List[Dict[str, float]], List[float], int]:
    """The newest run's validation records (the keys starting with one of ``metrics``, and the
    ``step``), its logged training losses and the number of training iterations."""
    curve, losses, iterations = [], [], 0
    for rec in load_records(newest_training_log(work_dir)):
        if any(k.startswith(tuple(metrics)) for k in rec):
            point = {k: round(float(v), 4) for k, v in rec.items() if k.startswith(tuple(metrics))}
            point['step'] = int(rec['step'])
            curve.append(point)
        elif 'iter' in rec:
            iterations = max(iterations, int(rec['iter']))
            if 'loss' in rec:
                losses.append(float(rec['loss']))
    return curve, losses, iterations


# ----------------------------------------------------------------------------- detection
def schedule_options(epochs: int, val_interval: int) -> List[str]:
    """``--cfg-options`` stretching the demo schedule to ``epochs`` (steps at 8/12 and 11/12)."""
    steps = sorted({max(1, round(epochs * 8 / 12)), max(1, round(epochs * 11 / 12))})
    return [f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={val_interval}',
            f'param_scheduler.1.end={epochs}',
            f'param_scheduler.1.milestones=[{",".join(map(str, steps))}]',
            f'default_hooks.checkpoint.interval={epochs}']



def run_detection(name: str, epochs: int, val_interval: int, work_root: Path,
                  command: str) -> Dict:
    """Train one detection demo config; return its record."""
    minutes = train(name, work_root / name, schedule_options(epochs, val_interval))
    curve, _, iterations = read_log(work_root / name, ['coco/'])
    for point in curve:
        point['epoch'] = point.pop('step')
    return dict(command=command, config=str(CONFIGS[name].relative_to(REPO)), epochs=epochs,
                iterations=iterations, wall_minutes=round(minutes, 1), final=curve[-1],
                curve=curve)


def write_detection(records: Dict[str, Dict]) -> None:
    """Merge ``records`` into the detection record; write its JSON and Markdown rendering."""
    env = environment()
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RECORD.with_suffix('.json').read_text()) \
        if RECORD.with_suffix('.json').is_file() else {}
    merged = {**old.get('runs', {}), **records}
    RECORD.with_suffix('.json').write_text(
        json.dumps(dict(environment=env, runs=merged), indent=2) + '\n')

    lines = [
        '# Learning check: tiny COCO shapes, detectors trained from scratch on CPU', '',
        'Produced by `python -m benchmarks.learning detection` (each run\'s command is in its row\'s '
        'section below, and in the .json).', '',
        'Data: `data/tiny_coco` (generated by `tools/make_tiny_coco.py`): 48 training and 16 '
        'validation images, 128-160 px, 3 classes (circle / square / triangle). Backbone '
        'PoolFormer-S12 from random init (no ImageNet weights), AdamW, batch size as each '
        'config sets it (RetinaNet 2, with GroupNorm in its head; Mask R-CNN 4); metrics are '
        "mmdet's CocoMetric on the validation split (16 images, so single evaluations are "
        'noisy). They check that the stack trains end to end; they are not comparable with COCO '
        'results.', '',
        f'Environment: {env["date"]}, CPU only: {describe(env["machine"], env["versions"])}, '
        f'OMP_NUM_THREADS={env["machine"]["omp_num_threads"]} (the machine was shared with '
        'other jobs, so wall times are upper bounds).', '',
        '| config | epochs (iters) | box mAP | box mAP@50 | mask mAP | mask mAP@50 | wall (min) |',
        '|--------|---------------:|--------:|-----------:|---------:|------------:|-----------:|',
    ]
    for rec in merged.values():
        f = rec['final']
        mask = (f'{f["coco/segm_mAP"]:.3f} | {f["coco/segm_mAP_50"]:.3f}'
                if 'coco/segm_mAP' in f else '- | -')
        lines.append(f'| `{rec["config"]}` | {rec["epochs"]} ({rec["iterations"]}) | '
                     f'{f["coco/bbox_mAP"]:.3f} | {f["coco/bbox_mAP_50"]:.3f} | {mask} | '
                     f'{rec["wall_minutes"]} |')
    for name in sorted(set(CONFIGS) - set(merged)):
        lines.append(f'| `{CONFIGS[name].relative_to(REPO)}` | not run yet: '
                     f'`python -m benchmarks.learning detection --only {name}` | | | | | |')
    weak = [r['config'] for r in merged.values() if r['final']['coco/bbox_mAP'] < 0.3]
    if weak:
        lines += ['', '**Not yet clearly learned** (the aim is box mAP > 0.3): '
                  + ', '.join(f'`{c}`' for c in weak) + '. From random init and a few hundred '
                  'iterations the detector has only begun to learn; its scores are still poorly '
                  'separated between classes. PoolFormer\'s layer scales start at 1e-5, so from '
                  'scratch its blocks add little at first, but that is not what holds it back: a '
                  '30x lr on them (12 epochs) and `model.backbone.layer_scale_init_value=1.0` '
                  '(20 epochs: box mAP 0.025) both did worse than the default. For RetinaNet, '
                  'GroupNorm in the head and batch 2 were what helped (single 20-epoch runs: box '
                  'mAP 0.056 without either, 0.170 with batch 2, 0.314 with the GroupNorm head, '
                  '0.418 with both, now the demo config\'s). A longer '
                  'schedule (more `--epochs-*`) or an '
                  'ImageNet-initialised backbone (`model.backbone.init_cfg`) is needed for a '
                  'clearly learned result.']
    lines += ['', '## Validation curves (epoch: box mAP / mask mAP) and commands', '']
    for rec in merged.values():
        pts = ', '.join(
            f'{p["epoch"]}: {p["coco/bbox_mAP"]:.3f}'
            + (f' / {p["coco/segm_mAP"]:.3f}' if 'coco/segm_mAP' in p else '')
            for p in rec['curve'])
        lines.append(f'- `{rec["config"]}`: {pts}  ')
        lines.append(f'  reproduce: `{rec["command"]}`')
    RECORD.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print(f'wrote {RECORD.with_suffix(".md")} and .json')



# ----------------------------------------------------------------------------- segmentation
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



def run_segmentation(iters: int, seed: int, work_dir: Path, command: str) -> Dict:
    """Train the Semantic FPN demo config for ``iters`` iterations; return its record."""
    minutes = train('semantic_fpn', work_dir, [
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'param_scheduler.0.end={iters}', f'default_hooks.checkpoint.interval={iters}',
        'default_hooks.logger.interval=1', f'randomness.seed={seed}'])
    curve, losses, _ = read_log(work_dir, ['mIoU', 'mAcc', 'aAcc'])
    k = min(50, len(losses))

    from mmengine.runner import Runner
    cfg = load_config(str(CONFIGS['semantic_fpn']))
    cfg.work_dir = str(work_dir / 'per_class')
    cfg.load_from = str(work_dir / f'iter_{iters}.pth')
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    return dict(
        config=str(CONFIGS['semantic_fpn'].relative_to(REPO)), iters=iters,
        batch_size=cfg.train_dataloader.batch_size, crop_size=list(cfg.crop_size), seed=seed,
        **{m: round(float(curve[-1][m]), 2) for m in ('mIoU', 'mAcc', 'aAcc')},
        loss_first_50=round(float(np.mean(losses[:k])), 4),
        loss_last_50=round(float(np.mean(losses[-k:])), 4),
        train_wall_s=round(minutes * 60, 1), **per_class_iou(runner), command=command,
        **{key: value for key, value in environment().items() if key != 'date'})


def write_segmentation(result: Dict, out: Path) -> None:
    """Write the segmentation record and its Markdown rendering."""
    rows = '\n'.join(f'| {c} | {v:.2f} |' for c, v in result['per_class_iou'].items())
    base = result['constant_baseline']
    md = f"""# Learning check: Semantic FPN PoolFormer-S12 on tiny synthetic ADE20K

`{result['config']}` (the paper's S12 recipe, random backbone init) trained for {result['iters']} iterations at
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
    write_record(out, result, md)
    print(f'wrote {out}.md and .json')


# ----------------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    tasks = parser.add_subparsers(dest='task', required=True)
    det = tasks.add_parser('detection', help='RetinaNet and Mask R-CNN on tiny COCO')
    det.add_argument('--only', choices=('retinanet', 'mask_rcnn'), help='run one of the two')
    det.add_argument('--epochs-retinanet', type=int, default=24,
                     help='RetinaNet epochs (default: %(default)s)')
    det.add_argument('--epochs-mask-rcnn', type=int, default=12,
                     help='Mask R-CNN epochs (default: %(default)s)')
    det.add_argument('--val-interval', type=int, default=3,
                     help='validate every this many epochs (default: %(default)s)')
    det.add_argument('--render', action='store_true',
                     help='only re-write the .md from the recorded .json (no training)')
    det.add_argument('--work-root', type=Path, default=REPO / 'work_dirs' / 'learning_detection',
                     help='where the runs write logs and checkpoints (default: %(default)s)')
    seg = tasks.add_parser('segmentation', help='Semantic FPN on tiny ADE20K')
    seg.add_argument('--iters', type=int, default=80,
                     help='training iterations (default: %(default)s; the demo runs 40)')
    seg.add_argument('--seed', type=int, default=0, help='random seed (default: %(default)s)')
    seg.add_argument('--work-dir', type=Path,
                     default=REPO / 'work_dirs' / 'learning_segmentation',
                     help='runner work dir: logs, last checkpoint (default: %(default)s)')
    seg.add_argument('--out', type=Path, default=SEG_RECORD,
                     help='record path without extension (default: %(default)s)')
    args = parser.parse_args(argv)
    command = command_line(argv)

    if args.task == 'segmentation':
        if args.iters < 1:
            parser.error('--iters must be at least 1')
        write_segmentation(run_segmentation(args.iters, args.seed, args.work_dir, command),
                           args.out)
        return
    if args.render:
        write_detection({})
        return
    epochs = {'retinanet': args.epochs_retinanet, 'mask_rcnn': args.epochs_mask_rcnn}
    records = {}
    for name in ([args.only] if args.only else ['retinanet', 'mask_rcnn']):
        records[name] = run_detection(name, epochs[name], min(args.val_interval, epochs[name]),
                                      args.work_root, command)
        print(name, records[name]['final'], flush=True)
    write_detection(records)


if __name__ == '__main__':
    main()
