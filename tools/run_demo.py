"""Train RetinaNet-PoolFormer-S12 on the carried tiny COCO set, report COCO mAP, draw detections.

What ``make demo`` runs. On a 2-core CPU it takes a few minutes:

1. trains ``configs/demo/retinanet_poolformer_s12_tiny.py`` from scratch with ``tools/train.py``
   (mmengine's Runner; its log shows loss, learning rate and ETA as it goes) and evaluates COCO
   box mAP on the tiny validation split at the end (mmdet's ``CocoMetric``);
2. draws the detections on a few validation images with mmdet's ``DetInferencer`` and saves
   them in ``<work-dir>/vis/``;
3. prints the mAP and where the checkpoint and pictures are.

Examples::

    python tools/run_demo.py
    python tools/run_demo.py --config configs/demo/mask_rcnn_poolformer_s12_tiny.py
    python tools/run_demo.py --cfg-options train_cfg.max_epochs=2   # a quicker look
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / 'configs' / 'demo' / 'retinanet_poolformer_s12_tiny.py'
SHOWN_METRICS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments of the demo."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', type=Path, default=DEFAULT_CONFIG,
                        help='demo config to train (default: %(default)s)')
    parser.add_argument('--work-dir', type=Path, default=None,
                        help='where logs, checkpoint and pictures go '
                             '(default: work_dirs/demo_<config name>)')
    parser.add_argument('--num-vis', type=int, default=4,
                        help='validation images to draw detections on (default: %(default)s)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='lowest score of a drawn detection (default: %(default)s)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='passed on to tools/train.py, e.g. train_cfg.max_epochs=2')
    return parser.parse_args(argv)


def last_val_metrics(work_dir: Path) -> Dict[str, float]:
    """COCO metrics of the last validation in the newest run under ``work_dir``.

    mmengine's ``LocalVisBackend`` appends one JSON object per logged step to
    ``<work_dir>/<timestamp>/vis_data/scalars.json``; validation lines carry ``coco/...`` keys.
    """
    runs = sorted(work_dir.glob('*/vis_data/scalars.json'), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f'no training log (*/vis_data/scalars.json) under {work_dir}')
    metrics: Dict[str, float] = {}
    for line in runs[-1].read_text().splitlines():
        record = json.loads(line)
        if any(k.startswith('coco/') for k in record):
            metrics = {k: float(v) for k, v in record.items() if k.startswith('coco/')}
    return metrics


def draw_detections(config: Path, checkpoint: Path, images: List[Path], out_dir: Path,
                    score_thr: float) -> List[Path]:
    """Run mmdet's DetInferencer on ``images`` and save the drawn predictions in ``out_dir/vis``.

    Returns:
        Paths of the written pictures.
    """
    import mmdet_plugin  # noqa: F401  (registers type='MetaFormer')
    from mmdet.apis import DetInferencer

    inferencer = DetInferencer(model=str(config), weights=str(checkpoint), device='cpu',
                               show_progress=False)
    inferencer([str(p) for p in images], out_dir=str(out_dir), no_save_pred=True,
               pred_score_thr=score_thr)
    return sorted((out_dir / 'vis').glob('*.jpg'))


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    config = args.config.resolve()
    if not config.is_file():
        sys.exit(f'error: config {args.config} not found')
    work_dir = (args.work_dir or ROOT / 'work_dirs' / f'demo_{config.stem}').resolve()
    ann = ROOT / 'data' / 'tiny_coco' / 'annotations' / 'instances_val.json'
    if not ann.is_file():
        sys.exit(f'error: {ann} not found. The tiny dataset ships with the repository; '
                 'regenerate it with `python tools/make_tiny_coco.py`.')

    # 1. Train and evaluate; tools/train.py checks the dataset paths and prints progress + ETA.
    cmd = [sys.executable, str(ROOT / 'tools' / 'train.py'), str(config),
           '--work-dir', str(work_dir)]
    if args.cfg_options:
        cmd += ['--cfg-options', *args.cfg_options]
    start = time.time()
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        sys.exit('error: training failed (its log is above)')
    minutes = (time.time() - start) / 60
    metrics = last_val_metrics(work_dir)

    # 2. Draw detections of the trained model. The Runner dumped the config it ran
    # (--cfg-options included) into the work dir and recorded its last checkpoint.
    ran_config = work_dir / config.name
    checkpoint = Path((work_dir / 'last_checkpoint').read_text().strip())
    images = sorted((ROOT / 'data' / 'tiny_coco' / 'val').glob('*.jpg'))[:args.num_vis]
    pictures = draw_detections(ran_config, checkpoint, images, work_dir, args.score_thr)

    # 3. Report.
    print('\n' + '=' * 78)
    print(f'Trained {config.name} from scratch in {minutes:.1f} min.')
    print(f'COCO metrics on the tiny validation split ({ann.relative_to(ROOT)}):')
    for key in SHOWN_METRICS:
        if key in metrics:
            print(f'  {key:<18} {metrics[key]:.3f}')
    if not metrics:
        print('  (no validation metrics were logged; see the training log above)')
    print(f'Checkpoint: {checkpoint}')
    print(f'Detections (score >= {args.score_thr}) drawn on {len(pictures)} validation images, '
          f'in {work_dir / "vis"}:')
    for p in pictures:
        print(f'  {p}')


if __name__ == '__main__':
    main()
