"""Evaluate a checkpoint of an mmdet detector or mmseg segmentor config on its test set.

The config's ``default_scope`` ('mmdet' or 'mmseg') decides which library is imported.
Examples:

    python tools/test.py configs/retinanet_poolformer_s12.py ckpt.pth
    python tools/test.py DET_CONFIG ckpt.pth --out results.pkl  # also pickle the detections
    python tools/test.py SEG_CONFIG ckpt.pth --out preds/       # also write label-map PNGs
    python tools/test.py CONFIG ckpt.pth --show-dir vis/        # also draw them
    python tools/test.py CONFIG ckpt.pth --show --wait-time 1   # show each in a window
    python tools/test.py CONFIG model.safetensors               # weights-only files too
    python tools/test.py CONFIG ckpt.pth --tta    # multi-scale + flip (the config's tta_model)
    tools/dist_test.sh CONFIG ckpt.pth 8

``--out`` follows each library's own tools/test.py: for detection a pickle in mmdet's
DumpDetResults format (what mmdet's ``analysis_tools/confusion_matrix.py`` reads); for
segmentation a folder of one ``<image name>.png`` label map per image, in the dataset's label
encoding (what mmseg's ``analysis_tools/confusion_matrix.py`` reads). ``--show-dir`` is read
relative to the current directory. Detection images land in it directly; mmseg's visualizer
writes them under ``SHOW_DIR/vis_data/vis_image/``. The checkpoint may be a runner checkpoint
(``work_dirs/.../iter_N.pth``), a weights-only ``.pth`` or a ``.safetensors`` file
(``tools/publish_model.py`` writes both); none is unpickled beyond tensors and plain data.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Optional, Sequence

from mmengine.config import ConfigDict, DictAction  # light; the heavy imports wait for main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``) as parsed arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('checkpoint', help='checkpoint: a file, an http(s):// URL (fetched once '
                        'into $TORCH_HOME/hub/checkpoints) or an hf-hub: name')
    parser.add_argument('--work-dir', help='where the log and metrics go '
                        '(default: work_dirs/CONFIG_NAME, with --tta work_dirs/CONFIG_NAME_tta)')
    parser.add_argument('--out', metavar='FILE.pkl|DIR',
                        help='detection: pickle the predictions into FILE.pkl; segmentation: '
                        'write a label-map PNG per image into DIR')
    parser.add_argument('--show-dir', help='draw the predictions on the images into this folder')
    parser.add_argument('--show', action='store_true',
                        help='show each image with its predictions in a window')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='with --show, seconds each image stays up (0: until a key press)')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation from the config's tta_model / tta_pipeline")
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config entries, e.g. test_dataloader.dataset.data_root=/data/coco/')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='how the processes were started (set by tools/dist_test.sh etc.)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by torch.distributed.launch; torchrun uses $LOCAL_RANK')
    args = parser.parse_args(argv)
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
    # No cfg.load_from: the Runner would load it again, with strict=False (see main).
    if args.out is not None:
        to_pickle = args.out.endswith(('.pkl', '.pickle'))
        if cfg.default_scope == 'mmdet' and not to_pickle:
            raise ValueError(f'--out must name a .pkl or .pickle file for detection, got {args.out}')
        if cfg.default_scope != 'mmdet':
            if to_pickle or osp.isfile(args.out):
                raise ValueError(f'--out names a folder for segmentation (one label-map PNG per '
                                 f'image, as mmseg writes), got the file {args.out}')
            if not isinstance(cfg.get('test_evaluator'), dict):
                raise ValueError('--out: the config needs one test_evaluator (a dict) to write '
                                 'the label maps')
            cfg.test_evaluator.output_dir = osp.abspath(args.out)  # IoUMetric writes the PNGs
            cfg.test_evaluator.keep_results = True  # and still computes the metrics
    if args.show or args.show_dir:
        hook = (cfg.get('default_hooks') or {}).get('visualization')
        if not hook:
            flag = '--show' if args.show else '--show-dir'
            raise ValueError(f'{flag}: the config has no default_hooks.visualization')
        if args.show and args.show_dir and cfg.default_scope != 'mmdet':
            raise ValueError('--show and --show-dir: mmseg\'s SegVisualizationHook saves nothing '
                             'while it shows; run once with each')
        hook.draw = True
        if cfg.default_scope != 'mmdet':
            hook.interval = 1  # SegVisualizationHook draws every `interval`-th image
        if args.show:
            hook.show = True
            hook.wait_time = args.wait_time
        if args.show_dir:
            if cfg.default_scope == 'mmdet':
                hook.test_out_dir = osp.abspath(args.show_dir)  # DetVisualizationHook saves here
            else:
                cfg.visualizer.save_dir = osp.abspath(args.show_dir)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta: the config defines no tta_model and tta_pipeline')
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def main() -> None:
    args = parse_args()
    from mmengine.registry import RUNNERS

    from metaformer_dense.checkpoint import CheckpointError, extract_state_dict, read_checkpoint
    from metaformer_runner import (check_dataset_paths, load_config,
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
        if 'state_dict' not in checkpoint:  # weights only (.safetensors, a published .pth):
            # the hooks (EMA) read checkpoint['state_dict'], as in a runner checkpoint
            checkpoint = dict(state_dict=extract_state_dict(checkpoint))
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
    if args.out and cfg.default_scope == 'mmdet':  # segmentation: the evaluator writes PNGs
        from mmdet.evaluation import DumpDetResults
        dump = DumpDetResults(out_file_path=args.out)
        dump.dataset_meta = runner.test_evaluator.dataset_meta
        runner.test_evaluator.metrics.append(dump)
    runner.test()
    del runner  # its DDP wrapper holds the process group
    teardown_distributed()  # an exit with live gloo threads can abort (SIGABRT)


if __name__ == '__main__':
    main()
