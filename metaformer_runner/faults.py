"""Runs that die of a bad sample, a diverging loss or a lost worker say why, and come back.

* :class:`SampleNamingRunner` (mmengine's ``Runner``, whose dataloaders load through
  :func:`name_bad_samples`) makes a sample that cannot be loaded (a missing or corrupt image, a
  missing label map) stop the run with :class:`BadSampleError`, naming the file and its
  annotation entry, instead of an assertion deep inside a dataloader worker.
* :class:`StopOnNonFiniteLossHook` stops at the first iteration whose loss is NaN or infinite
  (:class:`NonFiniteLossError`), naming the iteration, the loss terms and the last checkpoint
  written, before that iteration's checkpoint is saved. It extends mmdet's
  ``CheckInvalidLossHook`` idea (a bare ``assert`` with no message, detection only) to every
  config and to each loss term.
* :func:`use_fault_hooks` adds the loss check to a config; :func:`elastic_resume_checkpoint` picks the
  checkpoint a torchrun restart (``tools/dist_train.sh`` with ``MAX_RESTARTS``) resumes from.
"""
from __future__ import annotations

import math
import os
import os.path as osp
import re
import zipfile
from typing import Any, Callable, Optional

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, RUNNERS
from mmengine.runner import Runner

__all__ = [
    'BadSampleError', 'NonFiniteLossError', 'name_bad_samples', 'SampleNamingRunner',
    'StopOnNonFiniteLossHook', 'use_fault_hooks', 'elastic_restart_count',
    'elastic_resume_checkpoint'
]

_CKPT_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')
#: Keys of a dataset's data_info that say which annotation entry a sample came from.
_ENTRY_KEYS = ('img_id', 'img_path', 'seg_map_path', 'sample_idx')


class BadSampleError(RuntimeError):
    """A dataset sample could not be loaded; the message names its file and annotation entry."""

    def __init__(self, message: str) -> None:
        # torch re-raises a dataloader worker's exception in the main process as
        # ``type(err)("Caught ... in DataLoader worker ...<the worker's traceback>")``: keep the
        # message the worker raised, not the traceback text around it.
        marker = f'{type(self).__name__}: '
        if message.startswith('Caught ') and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the iteration."""


def _describe_entry(dataset: Any, info: dict) -> str:
    """``"entry img_id=5, img_path=... (sample 4 of annotations/instances_train.json)"``."""
    fields = ', '.join(f'{k}={info[k]!r}' for k in _ENTRY_KEYS[:-1] if info.get(k) is not None)
    where = getattr(dataset, 'ann_file', '') or getattr(dataset, 'data_root', '') or 'the dataset'
    index = info.get('sample_idx')
    position = f'sample {index} of {len(dataset)} in' if index is not None else 'in'
    return f'annotation entry {{{fields}}} ({position} {where})'


def _unreadable_file(info: dict) -> Optional[str]:
    """The first file a data_info names that is missing or empty, if any."""
    for key in ('img_path', 'seg_map_path'):
        path = info.get(key)
        if isinstance(path, str) and '://' not in path:
            if not osp.isfile(path):
                return f'{path} does not exist'
            if osp.getsize(path) == 0:
                return f'{path} is empty'
    return None


class _NamedPipeline:
    """A dataset pipeline that re-raises a failing sample's error naming file and entry."""

    def __init__(self, pipeline: Callable[[dict], Any], dataset: Any) -> None:
        self.pipeline = pipeline
        self.dataset = dataset

    def __call__(self, info: dict) -> Any:
        entry = dict(info)  # the pipeline fills `info` in place; keep the entry as listed
        try:
            return self.pipeline(info)
        except Exception as err:
            missing = _unreadable_file(entry)
            cause = missing or f'{type(err).__name__}: {err}'
            path = entry.get('img_path') or entry.get('seg_map_path') or '?'
            raise BadSampleError(
                f'Could not load the sample {path} of {_describe_entry(self.dataset, entry)}: '
                f'{cause}. Restore or re-encode the file, or remove the entry from the '
                'annotations; checkpoints written so far are intact (resume with --resume).'
            ) from err

    def __getattr__(self, name: str) -> Any:  # `transforms`, `__repr__` users, ...
        return getattr(self.pipeline, name)


def _leaf_datasets(dataset: Any) -> list:
    """The datasets under ConcatDataset / RepeatDataset / ClassBalancedDataset wrappers."""
    if hasattr(dataset, 'datasets'):
        return [leaf for sub in dataset.datasets for leaf in _leaf_datasets(sub)]
    if hasattr(dataset, 'dataset') and not hasattr(dataset, 'pipeline'):
        return _leaf_datasets(dataset.dataset)
    return [dataset]


def name_bad_samples(dataset: Any) -> Any:
    """Make every pipeline under ``dataset`` raise :class:`BadSampleError` for a failing sample.

    The error names the sample's file, its annotation entry (``img_id`` for COCO, the label map
    for segmentation) and its index in the annotation file, so one bad image among a million is
    found in seconds. Wrappers (``ConcatDataset``, ``RepeatDataset``, ...) are followed to the
    datasets that own a pipeline; a pipeline wrapped already is left as it is.

    Call it before the first iterator over a dataloader of ``dataset`` exists: worker processes
    copy the dataset when they start, and keep the pipelines they copied.

    Args:
        dataset: A dataset, or ``None`` (nothing to do).

    Returns:
        ``dataset``, its pipelines wrapped in place.
    """
    for leaf in _leaf_datasets(dataset) if dataset is not None else ():
        pipeline = getattr(leaf, 'pipeline', None)
        if pipeline is not None and not isinstance(pipeline, _NamedPipeline):
            leaf.pipeline = _NamedPipeline(pipeline, leaf)
    return dataset


@RUNNERS.register_module()
class SampleNamingRunner(Runner):
    """mmengine's ``Runner`` whose dataloaders load samples through :func:`name_bad_samples`.

    The pipelines are wrapped as each dataloader is built (``Runner.build_dataloader``, which
    every train, validation and test loop calls), before any worker starts, so the naming holds
    for epoch- and iteration-based loops, with or without (persistent) workers, for every sampler,
    in every process of a distributed run. ``tools/train.py`` and ``tools/test.py`` build it
    unless a config names another ``runner_type``.
    """

    @staticmethod
    def build_dataloader(dataloader, seed: Optional[int] = None, diff_rank_seed: bool = False):
        loader = Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        name_bad_samples(getattr(loader, 'dataset', None))
        return loader


@HOOKS.register_module()
class StopOnNonFiniteLossHook(Hook):
    """Stop training at the first iteration whose loss is NaN or infinite.

    Runs after each training iteration, before the checkpoint hook, so the iteration that went
    non-finite is never saved. Reads the loss terms the model already reduced to scalars for
    logging, so it adds no device synchronisation of its own.

    Args:
        interval: Check every ``interval`` iterations (1: every one).
    """

    priority = 'VERY_HIGH'  # before CheckpointHook (VERY_LOW) saves this iteration's weights

    def __init__(self, interval: int = 1) -> None:
        self.interval = interval

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        if not outputs or not self.every_n_train_iters(runner, self.interval):
            return
        values = {name: _as_float(value) for name, value in outputs.items() if 'loss' in name}
        values = {name: value for name, value in values.items() if value is not None}
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        if not bad:
            return
        last = runner.message_hub.get_info('last_ckpt') or _newest_checkpoint(runner.work_dir)
        terms = ', '.join(f'{name}={value}' for name, value in sorted(values.items()))
        raise NonFiniteLossError(
            f'The loss is not finite at iteration {runner.iter + 1} ({terms}); training stopped '
            f'there instead of going on with NaN weights. Last good checkpoint: '
            f"{last or 'none written yet'}. Resume from it with a lower lr, gradient clipping "
            '(optim_wrapper.clip_grad) or, under --amp, a dynamic loss scale or bf16.')


def _as_float(value: Any) -> Optional[float]:
    """A logged loss term as a float; None for anything that is not one number."""
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


def use_fault_hooks(cfg: Config) -> None:
    """Add :class:`StopOnNonFiniteLossHook` to ``cfg`` (bad samples: :class:`SampleNamingRunner`).

    mmdet's ``CheckInvalidLossHook`` in the config is replaced (it fails with an empty message
    and checks the total loss only); a ``StopOnNonFiniteLossHook`` already present is kept as
    configured. ``NameBadSamplesHook`` entries (configs dumped by toolkit versions before 0.2, when
    a hook named bad samples) are dropped: the runner does that job now.
    """
    replaced = ('CheckInvalidLossHook', 'NameBadSamplesHook')
    hooks = [h for h in (cfg.get('custom_hooks') or [])
             if not (isinstance(h, dict) and h.get('type') in replaced)]
    if 'StopOnNonFiniteLossHook' not in {h.get('type') for h in hooks if isinstance(h, dict)}:
        hooks.append(dict(type='StopOnNonFiniteLossHook'))
    cfg.custom_hooks = hooks


def elastic_restart_count() -> int:
    """How many times torchrun has restarted this job's workers (0 on the first attempt)."""
    return int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0)


def _newest_checkpoint(work_dir: str) -> Optional[str]:
    if not work_dir or not osp.isdir(work_dir):
        return None
    found = [osp.join(work_dir, n) for n in os.listdir(work_dir) if _CKPT_NAME.match(n)]
    complete = [f for f in found if zipfile.is_zipfile(f)]  # a save cut short is no zip
    return max(complete, key=lambda f: (osp.getmtime(f), int(_CKPT_NAME.match(
        osp.basename(f)).group(2))), default=None)


def elastic_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint a restarted worker resumes from: the newest complete one in ``work_dir``.

    Chosen by modification time among ``iter_*.pth`` / ``epoch_*.pth`` that are whole zip
    archives, whatever ``last_checkpoint`` says: that pointer may be stale (written by an older
    run, or not yet updated when a worker died between renaming a checkpoint and rewriting it).

    Args:
        work_dir: The run's work directory.
    """
    return _newest_checkpoint(work_dir)

