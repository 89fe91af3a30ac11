"""What the entry points (tools/, demo/, benchmarks/) share around mmengine's Runner.

Kept out of :mod:`metaformer_dense`, which holds the model and its weights only: this package
reads tool configs, names the mmdet / mmseg plugins, starts distributed runs, writes and finds
runner checkpoints, loads whole models strictly, and reads what runs leave in a work dir.

* :mod:`.config`: :func:`load_config` (imports the config's plugin), :func:`check_dataset_paths`;
* :mod:`.distributed`: :func:`setup_distributed` (gloo on machines without CUDA),
  :func:`teardown_distributed` (a clean exit);
* :mod:`.checkpoints`: :class:`AtomicCheckpointHook`, :func:`find_resumable_checkpoint`,
  :func:`load_model_strictly` (whole models, from a safely read file);
* :mod:`.faults`: the runner that names a bad sample, the hook that names a NaN loss, the
  checkpoint an elastic restart resumes from;
* :mod:`.results`: :func:`read_metrics` from a work dir.
"""
from .checkpoints import (AtomicCheckpointHook, find_resumable_checkpoint, load_model_strictly,
                          use_atomic_checkpoints)
from .config import PLUGINS, DatasetNotFoundError, check_dataset_paths, load_config
from .distributed import setup_distributed, teardown_distributed
from .results import load_records, newest_training_log, read_metrics

__all__ = [
    'PLUGINS', 'DatasetNotFoundError', 'load_config', 'check_dataset_paths', 'setup_distributed',
    'teardown_distributed',
    'AtomicCheckpointHook', 'use_atomic_checkpoints', 'find_resumable_checkpoint',
    'load_model_strictly',
    'load_records', 'newest_training_log', 'read_metrics'
]
