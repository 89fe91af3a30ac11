"""What ``tools/train.py`` and ``tools/test.py`` share: config loading, checks, distributed start.

One pair of tools serves mmdet and mmseg configs. :func:`load_config` reads the config's
``default_scope`` and imports that library's plugin (and so that library) only.

Three gaps between mmengine 0.10.7 and what a user expects are bridged here:

* A missing dataset surfaces as a stack trace from deep inside a dataloader;
  :func:`check_dataset_paths` fails first, naming the path and the ``--cfg-options`` that move it.
* mmengine's launcher calls ``torch.cuda.set_device`` unconditionally and defaults to nccl, so
  multi-process runs cannot start on a CPU-only machine; :func:`setup_distributed` starts a gloo
  process group itself there (the Runner then finds it initialised and keeps it).
* ``CheckpointHook`` writes straight to the final file name and deletes the oldest checkpoint
  before writing the next, so a crash mid-write can leave ``last_checkpoint`` pointing at a
  truncated or deleted file. :class:`AtomicCheckpointHook` writes to a temporary name, renames,
  then prunes; :func:`find_resumable_checkpoint` skips a stale pointer left by older runs.
"""
from __future__ import annotations

import datetime
import importlib
import logging
import os
import os.path as osp
import re
import subprocess
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict
from mmengine.dist import is_main_process
from mmengine.evaluator import DumpResults
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

__all__ = [
    'PLUGINS', 'DatasetNotFoundError', 'load_config', 'check_dataset_paths', 'setup_distributed',
    'AtomicCheckpointHook', 'use_atomic_checkpoints', 'find_resumable_checkpoint',
    'DumpSegResults'
]

#: default_scope -> (OpenMMLab library, this project's plugin registering ``type='MetaFormer'``)
PLUGINS = {'mmdet': ('mmdet', 'mmdet_plugin'), 'mmseg': ('mmseg', 'mmseg_plugin')}

_CKPT_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


class DatasetNotFoundError(FileNotFoundError):
    """A config's dataset files are not where it says; the message says how to move them."""


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a detection or segmentation config and import the library and plugin it needs.

    Args:
        path: Config file.
        cfg_options: ``--cfg-options`` overrides, merged after loading.

    Returns:
        The config, with its ``default_scope`` checked to be 'mmdet' or 'mmseg'.

    Raises:
        FileNotFoundError: No such config file.
        ValueError: The config names no supported ``default_scope``.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'Config file not found: {path}')
    cfg = Config.fromfile(path)  # also runs the config's `custom_imports`
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in PLUGINS:
        raise ValueError(
            f"{path}: default_scope is {scope!r}; these tools run 'mmdet' or 'mmseg' configs. "
            "Inherit an mmdet or mmseg base config (_base_ = 'mmdet::...' / 'mmseg::...') or "
            "set default_scope in the config.")
    importlib.import_module(PLUGINS[scope][1])  # imports mmdet or mmseg, and only that one
    return cfg


# ----------------------------------------------------------------------------- dataset check
def _leaf_datasets(node: Any, key: str) -> Iterator[tuple[str, dict]]:
    """Yield ``(dotted config key, dataset dict)`` for each real dataset in a dataloader config.

    Walks through ``dataset`` (dataloaders, RepeatDataset, ClassBalancedDataset, ...) and
    ``datasets`` (ConcatDataset) keys.
    """
    if not isinstance(node, dict):
        return
    if isinstance(node.get('datasets'), (list, tuple)):  # ConcatDataset
        for i, sub in enumerate(node['datasets']):
            yield from _leaf_datasets(sub, f'{key}.datasets.{i}')
    elif isinstance(node.get('dataset'), dict):  # RepeatDataset, ClassBalancedDataset, ...
        yield from _leaf_datasets(node['dataset'], f'{key}.dataset')
    else:
        yield key, node


def _is_remote(path: str, node: dict) -> bool:
    backend = (node.get('backend_args') or {}).get('backend', 'local')
    return '://' in path or backend not in ('local', 'disk')


def _missing_paths(cfg: Config, sections: Sequence[str]) -> list[tuple[str, str, str]]:
    """Return ``(config key, configured value, what is missing)`` for each path not on disk."""
    missing = []
    for section in sections:
        node = cfg.get(section)
        if section.endswith('_evaluator'):
            for i, metric in enumerate(node if isinstance(node, (list, tuple)) else [node]):
                ann = metric.get('ann_file') if isinstance(metric, dict) else None
                if isinstance(ann, str) and ann and not _is_remote(ann, metric) \
                        and not osp.isfile(ann):
                    key = section if not isinstance(node, (list, tuple)) else f'{section}.{i}'
                    missing.append((f'{key}.ann_file', ann, 'no such file'))
            continue
        for key, ds in _leaf_datasets(node, section):
            root = ds.get('data_root') or ''
            if root and not _is_remote(root, ds) and not osp.isdir(root):
                missing.append((f'{key}.data_root', root, 'no such directory'))
                continue  # everything below lives under data_root: one line is enough
            ann = ds.get('ann_file') or ''
            if ann and not _is_remote(ann, ds) and not osp.isfile(osp.join(root, ann)):
                missing.append((f'{key}.ann_file', ann, f'no such file {osp.join(root, ann)}'))
            for name, prefix in (ds.get('data_prefix') or {}).items():
                if isinstance(prefix, str) and prefix and not _is_remote(prefix, ds) \
                        and not osp.isdir(osp.join(root, prefix)):
                    missing.append((f'{key}.data_prefix.{name}', prefix,
                                    f'no such directory {osp.join(root, prefix)}'))
    return missing


def check_dataset_paths(cfg: Config, sections: Sequence[str]) -> None:
    """Fail before any model or dataloader is built if a dataset the run needs is missing.

    Relative paths are checked against the current directory, as mmengine resolves them.
    Remote paths (``s3://`` and the like, or a non-local ``backend_args``) are not checked.

    Args:
        cfg: Loaded config.
        sections: Dataloader and evaluator keys the run uses, e.g.
            ``('train_dataloader', 'val_dataloader', 'val_evaluator')``.

    Raises:
        DatasetNotFoundError: Lists every missing path, the config key that sets it, and the
            ``--cfg-options`` line that points it at the right place.
    """
    missing = _missing_paths(cfg, sections)
    if not missing:
        return
    lines = [f'  {key} = {value!r}: {what}' for key, value, what in missing]
    roots = [value for key, value, _ in missing if key.endswith('.data_root')]

    def example(value: str) -> str:  # 'data/coco/ann/x.json' -> '/path/to/coco/ann/x.json'
        for root in roots:
            if value.startswith(root) and value != root:
                return f'{example(root)}/{value[len(root):].lstrip("/")}'
        return f'/path/to/{osp.basename(osp.normpath(value))}'

    hints = ' '.join(f'{key}={example(value)}' for key, value, _ in missing)
    raise DatasetNotFoundError(
        f'Dataset not found (relative paths are read from {os.getcwd()}):\n' + '\n'.join(lines) +
        '\nPut the data there (a symlink will do), or point the config at it, e.g.\n'
        f'  --cfg-options {hints}')


# ----------------------------------------------------------------------------- distributed
def _env_int(name: str) -> int:
    if name not in os.environ:
        raise ValueError(f'Distributed launch needs the environment variable {name}: start the '
                         'tool through tools/dist_*.sh (torchrun), tools/slurm_*.sh or mpirun.')
    return int(os.environ[name])


def _rank_and_world(launcher: str) -> tuple[int, int, int]:
    """Read ``(rank, world size, local rank)`` the way the launcher publishes them."""
    if launcher == 'pytorch':  # torchrun also sets MASTER_ADDR / MASTER_PORT
        return _env_int('RANK'), _env_int('WORLD_SIZE'), _env_int('LOCAL_RANK')
    if launcher == 'slurm':
        if 'MASTER_ADDR' not in os.environ:
            nodes = os.environ.get('SLURM_NODELIST', '')
            first = subprocess.run(['scontrol', 'show', 'hostnames', nodes], check=True,
                                   capture_output=True, text=True).stdout.split()[0]
            os.environ['MASTER_ADDR'] = first
        os.environ.setdefault('MASTER_PORT', '29500')
        return (_env_int('SLURM_PROCID'), _env_int('SLURM_NTASKS'), _env_int('SLURM_LOCALID'))
    if launcher == 'mpi':
        if 'MASTER_ADDR' not in os.environ:
            raise ValueError('--launcher mpi needs MASTER_ADDR (and optionally MASTER_PORT) '
                               'set to the address of rank 0.')
        os.environ.setdefault('MASTER_PORT', '29500')
        return (_env_int('OMPI_COMM_WORLD_RANK'), _env_int('OMPI_COMM_WORLD_SIZE'),
                _env_int('OMPI_COMM_WORLD_LOCAL_RANK'))
    raise ValueError(f"launcher must be 'none', 'pytorch', 'slurm' or 'mpi', got {launcher!r}")


def _sync_bn_to_bn(node: Any) -> int:
    """Replace ``norm_cfg`` types 'SyncBN' / 'MMSyncBN' by 'BN' in place; return how many."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        count += sum(_sync_bn_to_bn(value) for value in node)
    return count


def setup_distributed(cfg: Config, launcher: str) -> None:
    """Prepare ``cfg`` for ``launcher`` and, on machines without CUDA, start the process group.

    With CUDA present nothing is started: mmengine's own launcher (nccl by default) does it
    inside the Runner. Without CUDA the config is switched to gloo, the process group is started
    here, DDP is told not to pin the model to a device (CPU modules take ``device_ids=None``),
    and SyncBN layers (GPU-only in torch; mmseg's heads use them) become plain BN.

    Args:
        cfg: Config, edited in place (``env_cfg.dist_cfg``, ``model_wrapper_cfg``, ``model``).
        launcher: 'none', 'pytorch', 'slurm' or 'mpi'.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    rank, world_size, local_rank = _rank_and_world(launcher)
    for name, value in (('RANK', rank), ('WORLD_SIZE', world_size), ('LOCAL_RANK', local_rank)):
        os.environ[name] = str(value)  # mmengine's wrap_model reads LOCAL_RANK

    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        wrapper['device_ids'] = None  # the Runner would pass [LOCAL_RANK], which CPU DDP rejects
    cfg.model_wrapper_cfg = wrapper

    replaced = _sync_bn_to_bn(cfg.model)
    if replaced:
        print_log(f'No CUDA: {replaced} SyncBN layers of the config become per-process BN '
                  '(torch SyncBatchNorm runs on GPUs only).', logger='current',
                  level=logging.WARNING)

    if not dist.is_initialized():
        timeout = dist_cfg.get('timeout')
        kwargs = {} if timeout is None else dict(timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group('gloo', rank=rank, world_size=world_size, **kwargs)


# ----------------------------------------------------------------------------- checkpoints
def _write_text_atomic(path: str, text: str) -> None:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that never leaves a half-written or dangling latest checkpoint.

    Each checkpoint is written to ``<name>.tmp`` and renamed once complete; ``last_checkpoint``
    is replaced the same way, and only afterwards are checkpoints beyond ``max_keep_ckpts``
    deleted. A run killed at any moment therefore leaves ``last_checkpoint`` pointing at a
    complete file; the next run deletes the killed run's ``.tmp`` file when it starts. Takes the
    same arguments as ``CheckpointHook``; non-local storage backends fall back to its behaviour.
    Best checkpoints (``save_best``) are still written the stock way; resuming never reads them.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend) \
                and osp.isdir(self.out_dir):
            for name in os.listdir(self.out_dir):  # left by a run killed while saving
                if name.endswith('.pth.tmp'):
                    os.remove(osp.join(self.out_dir, name))
                    runner.logger.info(f'Removed the partial checkpoint {name}.')

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        if not isinstance(self.file_backend, LocalBackend) or self.file_client_args is not None:
            return super()._save_checkpoint_with_step(runner, step, meta)
        stale = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                stale.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            # saved inside the checkpoint, so a resumed run knows which files it may prune
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, filename + '.tmp', save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
            backend_args=self.backend_args, **self.args)
        if not is_main_process():  # Runner.save_checkpoint writes on rank 0 only
            return
        tmp = self.last_ckpt + '.tmp'
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.last_ckpt)
        _write_text_atomic(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in stale:
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)


def use_atomic_checkpoints(cfg: Config) -> None:
    """Swap the config's stock ``CheckpointHook`` for :class:`AtomicCheckpointHook` (in place)."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(hook, dict) and hook.get('type') in ('CheckpointHook', CheckpointHook):
        hook['type'] = 'AtomicCheckpointHook'


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """Return the checkpoint ``--resume`` without a path should continue from, or None.

    That is the file ``work_dir/last_checkpoint`` names; if it names a file that does not exist
    or is incomplete (a run with the stock hook died mid-save), the newest complete
    ``iter_*.pth`` / ``epoch_*.pth`` in ``work_dir`` instead. Complete means a whole zip archive
    (torch's format): a save cut short lacks the archive's closing directory.

    Args:
        work_dir: The run's work directory.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named and osp.isfile(named) and zipfile.is_zipfile(named):
            return named
    if not osp.isdir(work_dir):
        return None
    found = [osp.join(work_dir, n) for n in os.listdir(work_dir) if _CKPT_NAME.match(n)]
    found = [f for f in found if zipfile.is_zipfile(f)]
    return max(found, key=osp.getmtime) if found else None


# ----------------------------------------------------------------------------- results
class DumpSegResults(DumpResults):
    """Pickle each image's predicted label map for offline evaluation (``tools/test.py --out``).

    Stores per image a dict with ``img_path``, ``seg_map_path`` (ground truth, if any) and
    ``pred_sem_seg``: an ``(H, W)`` uint8 array (int16 beyond 256 classes) at the original image
    size. Logits and ground-truth maps are dropped to keep the file small.
    """

    def process(self, data_batch: Any, predictions: Sequence[dict]) -> None:
        num_classes = len((self.dataset_meta or {}).get('classes', ())) or 256
        dtype = np.uint8 if num_classes <= 256 else np.int16
        for sample in predictions:
            labels = sample['pred_sem_seg']['data'].squeeze(0).cpu().numpy()
            self.results.append(dict(
                img_path=sample.get('img_path'), seg_map_path=sample.get('seg_map_path'),
                pred_sem_seg=labels.astype(dtype)))
