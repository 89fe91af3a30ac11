"""Train an mmdet detector or an mmseg segmentor from a config (MetaFormer backbones included).

The config's ``default_scope`` ('mmdet' or 'mmseg') decides which library (and which plugin of
this project) is imported. Checkpoints are written atomically, and ``--resume`` continues from
the last complete one. Examples:

    python tools/train.py configs/retinanet_poolformer_s12.py
    python tools/train.py configs/semantic_fpn_poolformer_s12.py --work-dir work_dirs/fpn_s12
    python tools/train.py CONFIG --resume                  # latest checkpoint in the work dir
    python tools/train.py CONFIG --resume work_dirs/x/epoch_4.pth
    python tools/train.py CONFIG --cfg-options train_dataloader.dataset.data_root=/data/coco/
    tools/dist_train.sh CONFIG 8 --auto-scale-lr           # 8 processes (GPUs, or CPU with gloo)
    MAX_RESTARTS=3 tools/dist_train.sh CONFIG 8            # a dead worker: restart, resume

Every run stops with a named cause at a sample that cannot be loaded or a NaN/infinite loss
(metaformer_runner/faults.py).
"""
import argparse
import faulthandler
import os
import os.path as osp
import signal
import sys

from mmengine.config import DictAction  # light; the heavy imports wait until after --help


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('--work-dir', help='logs and checkpoints (default: work_dirs/CONFIG_NAME)')
    parser.add_argument(
        '--resume', nargs='?', const='auto', metavar='CHECKPOINT',
        help='resume training (weights, optimizer, LR schedule, iteration) from CHECKPOINT, or, '
        'with no value, from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='mixed precision (needs a GPU; refused on CPU-only machines, see docs/speed.md)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help="scale lr by (total batch size / the config's auto_scale_lr.base_batch_size)")
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config entries, e.g. train_dataloader.batch_size=4 '
        'optim_wrapper.optimizer.lr=2e-4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='how the processes were started (set by tools/dist_train.sh etc.)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by torch.distributed.launch; torchrun uses $LOCAL_RANK')
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


CPU_AMP_REFUSAL = (
    "{what}: mixed precision needs a GPU (or NPU/MLU/MUSA) and none is visible here. mmengine's "
    'AmpOptimWrapper refuses to run on CPU, and bfloat16 autocast on CPU is no way round it: '
    "mmcv's CPU NMS takes float32 boxes only, so two-stage detectors (Mask R-CNN's RPN) stop "
    'with "expected scalar type Float but found BFloat16", and CPUs without native bf16 '
    'instructions run bf16 slower than float32 (docs/speed.md). Train in float32 on CPU: '
    'drop --amp (or the AmpOptimWrapper from the config).')


def apply_args(cfg, args: argparse.Namespace) -> None:
    """Fold the command-line flags into ``cfg``; raise ValueError on a flag that cannot apply."""
    from mmengine.device import get_device
    from mmengine.logging import print_log

    from metaformer_runner import find_resumable_checkpoint
    from metaformer_runner.faults import elastic_restart_count, elastic_resume_checkpoint

    cfg.launcher = args.launcher
    cfg.work_dir = (args.work_dir or cfg.get('work_dir')
                    or osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0]))
    amp_in_config = cfg.optim_wrapper.get('type') == 'AmpOptimWrapper'
    if (args.amp or amp_in_config) and get_device() == 'cpu':
        raise ValueError(CPU_AMP_REFUSAL.format(
            what='--amp' if args.amp else 'optim_wrapper.type=AmpOptimWrapper'))
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper':
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        elif cfg.optim_wrapper.type != 'AmpOptimWrapper':
            raise ValueError(f'--amp: optim_wrapper type {cfg.optim_wrapper.type} is not '
                             'OptimWrapper; set mixed precision in the config instead.')
    if args.auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise ValueError('--auto-scale-lr: the config has no auto_scale_lr.base_batch_size '
                             '(the total batch size its lr was set for).')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        checkpoint = find_resumable_checkpoint(cfg.work_dir)
        if checkpoint is None:
            print_log(f'--resume: no checkpoint in {cfg.work_dir} yet; training from the start.',
                      logger='current')
        else:
            cfg.resume, cfg.load_from = True, checkpoint
    elif args.resume is not None:
        if '://' not in args.resume and not osp.isfile(args.resume):
            raise ValueError(f'--resume: checkpoint not found: {args.resume}')
        cfg.resume, cfg.load_from = True, args.resume
    if elastic_restart_count() > 0:  # torchrun restarted the workers (MAX_RESTARTS > 0)
        checkpoint = elastic_resume_checkpoint(cfg.work_dir)
        print_log(f'Elastic restart {elastic_restart_count()}: resuming from '
                  f"{checkpoint or 'the start (no complete checkpoint yet)'}.", logger='current')
        if checkpoint is not None:
            cfg.resume, cfg.load_from = True, checkpoint


def main() -> None:
    args = parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 PID: where it hangs
    from mmengine.registry import RUNNERS

    from metaformer_runner import (check_dataset_paths, load_config, setup_distributed,
                                   teardown_distributed, use_atomic_checkpoints)
    from metaformer_runner.faults import (BadSampleError, NonFiniteLossError, SampleNamingRunner,
                                          use_fault_hooks)
    try:
        cfg = load_config(args.config, args.cfg_options)
        apply_args(cfg, args)
        validating = cfg.get('val_cfg') and cfg.get('val_dataloader')
        check_dataset_paths(cfg, ['train_dataloader'] +
                            (['val_dataloader', 'val_evaluator'] if validating else []))
        setup_distributed(cfg, args.launcher)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    use_atomic_checkpoints(cfg)
    use_fault_hooks(cfg)  # NaN losses stop the run with a named cause; bad samples: the runner
    runner = (SampleNamingRunner.from_cfg(cfg) if 'runner_type' not in cfg
              else RUNNERS.build(cfg))
    error = None
    try:
        runner.train()
    except (BadSampleError, NonFiniteLossError) as err:
        runner.logger.error(str(err))
        error = f'error: {err}'
    del runner  # its DDP wrapper holds the process group; teardown must be its last holder
    teardown_distributed()  # an exit with live gloo threads can abort (SIGABRT)
    if error:
        sys.exit(error)


if __name__ == '__main__':
    main()
