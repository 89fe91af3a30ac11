"""Evaluate a checkpoint of an mmdet detector or mmseg segmentor config on its test set.

The config's ``default_scope`` ('mmdet' or 'mmseg') decides which library is imported.
Examples:

    python tools/test.py configs/retinanet_poolformer_s12.py ckpt.pth
    python tools/test.py CONFIG ckpt.pth --out results.pkl      # also pickle the predictions
    python tools/test.py CONFIG ckpt.pth --show-dir vis/        # also draw them
    python tools/test.py CONFIG ckpt.pth --tta    # multi-scale + flip (the config's tta_model)
    tools/dist_test.sh CONFIG ckpt.pth 8

``--out`` writes mmdet's DumpDetResults format for detection, and for segmentation a list of
``dict(img_path, seg_map_path, pred_sem_seg)`` with each label map an (H, W) uint8 array.
``--show-dir`` is read relative to the current directory. Detection images land in it
directly; mmseg's visualizer writes them under ``SHOW_DIR/vis_data/vis_image/``.
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import ConfigDict, DictAction  # light; the heavy imports wait for main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('checkpoint', help='checkpoint: a file, an http(s):// URL (fetched once '
                        'into $TORCH_HOME/hub/checkpoints) or an hf-hub: name')
    parser.add_argument('--work-dir', help='where the log and metrics go '
                        '(default: work_dirs/CONFIG_NAME, with --tta work_dirs/CONFIG_NAME_tta)')
    parser.add_argument('--out', metavar='FILE.pkl', help='pickle the predictions here')
    parser.add_argument('--show-dir', help='draw the predictions on the images into this folder')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation from the config's tta_model / tta_pipeline")
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config entries, e.g. test_dataloader.dataset.data_root=/data/coco/')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='how the processes were started (set by tools/dist_test.sh etc.)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by torch.distributed.launch; torchrun uses $LOCAL_RANK')
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def apply_args(cfg, args: argparse.Namespace) -> None:
    """Fold the command-line flags into ``cfg``; raise ValueError on a flag that cannot apply."""
    from metaformer_dense.download import is_remote
    cfg.launcher = args.launcher
    cfg.work_dir = (args.work_dir or cfg.get('work_dir')
                    or osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0]
                                + ('_tta' if args.tta else '')))  # the report reads MS here
    if not is_remote(args.checkpoint):  # a URL or hf-hub: name is fetched in main
        if not osp.isfile(args.checkpoint):
            raise ValueError(f'checkpoint not found: {args.checkpoint}')
        if args.checkpoint.endswith('.safetensors'):
            raise ValueError(f'{args.checkpoint}: the Runner reads .pth checkpoints; write one with '
                             'tools/convert_checkpoint.py SRC.safetensors DST.pth')
    # No cfg.load_from: the Runner would load it again, with strict=False (see main).
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must name a .pkl or .pickle file, got {args.out}')
    if args.show_dir:
        hook = (cfg.get('default_hooks') or {}).get('visualization')
        if not hook:
            raise ValueError('--show-dir: the config has no default_hooks.visualization')
        hook.draw = True
        if cfg.default_scope == 'mmdet':
            hook.test_out_dir = osp.abspath(args.show_dir)  # DetVisualizationHook saves here
        else:
            hook.interval = 1  # SegVisualizationHook draws every `interval`-th image
            cfg.visualizer.save_dir = osp.abspath(args.show_dir)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta: the config defines no tta_model and tta_pipeline')
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def main() -> None:
    args = parse_args()
    from mmengine.registry import RUNNERS

    from metaformer_dense.checkpoint import CheckpointError, read_checkpoint
    from metaformer_runner import (DumpSegResults, check_dataset_paths, load_config,
                                   load_model_strictly, setup_distributed, teardown_distributed)
    from metaformer_runner.faults import SampleNamingRunner
    try:
        cfg = load_config(args.config, args.cfg_options)
        apply_args(cfg, args)
        check_dataset_paths(cfg, ['test_dataloader', 'test_evaluator'])
        # Read once, before the Runner is built (a URL or hf-hub: name is fetched once into the
        # standard cache first): empty, truncated, non-checkpoint or code-carrying files get a
        # named error (a CheckpointError is a ValueError) instead of a stack trace from inside
        # torch.load.
        checkpoint = read_checkpoint(args.checkpoint)
        setup_distributed(cfg, args.launcher)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    # A sample that cannot be loaded stops the test naming its file and annotation entry.
    runner = (SampleNamingRunner.from_cfg(cfg) if 'runner_type' not in cfg
              else RUNNERS.build(cfg))
    # The Runner's own load is strict=False: a checkpoint of another model would only warn and
    # the test would score random weights. Load strictly here, as Runner.load_checkpoint does
    # otherwise (its after_load_checkpoint hooks first, e.g. EMA).
    runner.call_hook('after_load_checkpoint', checkpoint=checkpoint)
    try:
        load_model_strictly(runner.model, checkpoint, source=args.checkpoint, config=args.config)
    except CheckpointError as err:
        sys.exit(f'error: {err}')
    runner.logger.info(f'Load checkpoint from {args.checkpoint}')
    if args.out:
        if cfg.default_scope == 'mmdet':
            from mmdet.evaluation import DumpDetResults
            dump = DumpDetResults(out_file_path=args.out)
        else:
            dump = DumpSegResults(out_file_path=args.out)
        dump.dataset_meta = runner.test_evaluator.dataset_meta
        runner.test_evaluator.metrics.append(dump)
    runner.test()
    del runner  # its DDP wrapper holds the process group
    teardown_distributed()  # an exit with live gloo threads can abort (SIGABRT)


if __name__ == '__main__':
    main()
