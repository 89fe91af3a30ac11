"""Train a tiny demo config on the carried data, report its validation metrics, draw predictions.

What ``make demo`` (RetinaNet-PoolFormer-S12 on tiny COCO) and ``make demo-seg`` (Semantic
FPN-PoolFormer-S12 on tiny ADE20K) run. On a 2-core CPU each takes a few minutes:

1. trains the config from scratch with ``tools/train.py`` (mmengine's Runner; its log shows loss,
   learning rate and ETA as it goes) and evaluates on the tiny validation split at the end
   (mmdet's ``CocoMetric`` or mmseg's ``IoUMetric``, as the config says);
2. draws the predictions on a few validation images with ``demo/image_demo.py``, which loads the
   trained checkpoint strictly, and saves them in ``<work-dir>/vis/``;
3. prints the metrics and where the checkpoint and pictures are.

Examples::

    python demo/quickstart.py
    python demo/quickstart.py --config configs/demo/semantic_fpn_poolformer_s12_tiny.py
    python demo/quickstart.py --config configs/demo/mask_rcnn_poolformer_s12_tiny.py
    python demo/quickstart.py --cfg-options train_cfg.max_epochs=2   # a quicker look
"""
from __future__ import annotations

import argparse
import os.path as osp
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import image_demo  # demo/image_demo.py, next to this file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / 'configs' / 'demo' / 'retinanet_poolformer_s12_tiny.py'
#: default_scope -> the validation metrics printed, as mmengine logs them (mmdet's COCO metrics
#: as fractions, mmseg's in percent), and their digits.
SHOWN_METRICS = {
    'mmdet': (('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'), 3),
    'mmseg': (('mIoU', 'mAcc', 'aAcc'), 2),
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments of the quick start."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--config', type=Path, default=DEFAULT_CONFIG,
                        help='demo config to train, detection or segmentation '
                             '(default: %(default)s)')
    parser.add_argument('--work-dir', type=Path, default=None,
                        help='where logs, checkpoint and pictures go '
                             '(default: work_dirs/demo_<config name>)')
    parser.add_argument('--num-vis', type=int, default=4,
                        help='validation images to draw predictions on (default: %(default)s)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest score of a drawn box (default: %(default)s)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='passed on to tools/train.py, e.g. train_cfg.max_epochs=2')
    return parser.parse_args(argv)


def validation_images(cfg, limit: int) -> List[Path]:
    """The first ``limit`` images of the config's validation split."""
    dataset = cfg.val_dataloader.dataset
    prefix = dataset.get('data_prefix') or {}
    folder = Path(dataset.get('data_root') or '') / (prefix.get('img') or prefix.get('img_path')
                                                     or '')
    folder = folder if folder.is_absolute() else ROOT / folder
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in image_demo.IMAGE_EXTENSIONS)
    return images[:limit]


def main(argv: Optional[List[str]] = None) -> None:
    """Train, evaluate, draw and report; exit with a message on failure."""
    from metaformer_runner import load_config, read_metrics

    args = parse_args(argv)
    config = args.config.resolve()
    if not config.is_file():
        sys.exit(f'error: config {args.config} not found')
    work_dir = (args.work_dir or ROOT / 'work_dirs' / f'demo_{config.stem}').resolve()

    # 1. Train and evaluate; tools/train.py checks the dataset paths and prints progress + ETA.
    cmd = [sys.executable, str(ROOT / 'tools' / 'train.py'), str(config),
           '--work-dir', str(work_dir)]
    if args.cfg_options:
        cmd += ['--cfg-options', *args.cfg_options]
    start = time.time()
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        sys.exit('error: training failed (its log is above)')
    minutes = (time.time() - start) / 60

    # 2. Draw predictions of the trained model. The Runner dumped the config it ran
    # (--cfg-options included) into the work dir and recorded its last checkpoint.
    ran_config = work_dir / config.name
    cfg = load_config(str(ran_config))
    shown, digits = SHOWN_METRICS[cfg.default_scope]
    metrics, _ = read_metrics(work_dir, shown)
    checkpoint = Path((work_dir / 'last_checkpoint').read_text().strip())
    images = validation_images(cfg, args.num_vis)
    draw = image_demo.parse_args([*map(str, images), str(ran_config), str(checkpoint),
                                  '--out-dir', str(work_dir / 'vis'), '--device', 'cpu',
                                  '--score-thr', str(args.score_thr)])
    try:
        pictures = image_demo.run(draw)
    except image_demo.DemoError as exc:
        sys.exit(f'error: {exc}')

    # 3. Report.
    data_root = cfg.val_dataloader.dataset.get('data_root', '')
    print('\n' + '=' * 78)
    print(f'Trained {config.name} from scratch in {minutes:.1f} min.')
    print(f'Validation metrics on the tiny validation split ({osp.normpath(data_root)}):')
    for key in shown:
        if key in metrics:
            print(f'  {key:<18} {metrics[key]:.{digits}f}')
    if not metrics:
        sys.exit(f'error: the run logged none of {", ".join(shown)} in {work_dir}: the validation '
                 'at the end of training did not run or failed (see the training log above)')
    print(f'Checkpoint: {checkpoint}')
    print(f'Predictions drawn on {len(pictures)} validation images, in {work_dir / "vis"}:')
    for p in pictures:
        print(f'  {p}')


if __name__ == '__main__':
    main()
