"""Runner checkpoints: written so that they survive a crash, found for resuming, and loaded
strictly into a whole model.

``CheckpointHook`` writes straight to the final file name and deletes the oldest checkpoint
before writing the next, so a crash mid-write can leave ``last_checkpoint`` pointing at a
truncated or deleted file. :class:`AtomicCheckpointHook` writes to a temporary name, renames,
then prunes; :func:`find_resumable_checkpoint` skips a stale pointer left by older runs.

mmengine's own loaders (``Runner.load_checkpoint``, the inferencers) load with ``strict=False``:
a checkpoint of another model only warns, and a test or demo then scores or draws random
weights. :func:`load_model_strictly` is the one strict whole-model loader of the entry points.
"""
from __future__ import annotations

import os
import os.path as osp
import re
import zipfile
from collections.abc import Mapping
from typing import Any, Optional, Union

from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS
from mmengine.runner.checkpoint import load_state_dict
from torch import nn

from metaformer_dense.checkpoint import (CheckpointError, check_float_weights,
                                         extract_state_dict, read_checkpoint, strip_ddp_prefix)

__all__ = ['AtomicCheckpointHook', 'use_atomic_checkpoints', 'find_resumable_checkpoint',
           'load_model_strictly']

_CKPT_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


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


# ----------------------------------------------------------------------------- strict loading
def load_model_strictly(model: nn.Module, checkpoint: Union[str, Mapping[str, Any]],
                        source: Optional[str] = None, config: Optional[str] = None) -> dict:
    """Load every weight of a whole detector or segmentor; anything that does not fit is an error.

    The checkpoint's backbone keys may be in any layout the backbone converts (official,
    mmpretrain, paper release, timm); a DDP ``module.`` prefix is dropped. float16 / bfloat16
    weights are cast to the model's dtype; integers or bools where the model has floats, and any
    missing, unexpected or mis-shaped weight, are refused.

    Args:
        model: The built model (a DDP or TTA wrapper is looked through, as mmengine does).
        checkpoint: A checkpoint file, URL or ``hf-hub:`` name (read with
            :func:`metaformer_dense.checkpoint.read_checkpoint`: no code runs), or a checkpoint or
            state dict already read that way.
        source: How to name the checkpoint in errors (default: the path).
        config: The config the model was built from, named in errors.

    Returns:
        The checkpoint as read.

    Raises:
        CheckpointError: The file cannot be read, or does not fit the model; the message names
            the keys and asks whether the config is the checkpoint's.
    """
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
    source = source or (checkpoint if isinstance(checkpoint, str) else 'checkpoint')
    # DDP-style wrappers and the TTA models (mmdet/mmseg BaseTTAModel) hold it as `.module`
    target = model.module if isinstance(getattr(model, 'module', None), nn.Module) else model
    try:
        state_dict = {strip_ddp_prefix(k): v for k, v in extract_state_dict(raw).items()}
        check_float_weights(target, state_dict)  # no silent int -> float cast
        load_state_dict(target, state_dict, strict=True)
    except (RuntimeError, CheckpointError) as exc:
        of = f'the config {config}' if config else 'the config'
        raise CheckpointError(f'checkpoint {source!r} does not fit the model of {of} (wrong '
                              f'config for this checkpoint?):\n{exc}') from exc
    return raw
