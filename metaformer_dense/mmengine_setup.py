"""What the plugins install into mmengine: safe runner-checkpoint loading and URL loaders.

``mmdet_plugin`` and ``mmseg_plugin`` call :func:`setup_mmengine` once when they are imported.

* **Runner checkpoints.** mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since
  torch 2.6 that means ``weights_only=True``, which refuses the few non-tensor objects a runner
  checkpoint pickles (mmengine's ``HistoryBuffer`` and numpy arrays/scalars in the message hub).
  Instead of loading with ``weights_only=False`` (arbitrary code execution for an untrusted
  file), :func:`allow_runner_checkpoints` adds exactly those classes to torch's allow-list.
  Nothing on the list can run code when unpickled.
* **URLs and hub names.** :func:`register_url_loaders` routes mmengine's loading of
  ``http(s)://`` and ``hf-hub:`` checkpoints through :mod:`metaformer_dense.download` and
  :func:`~metaformer_dense.checkpoint.read_checkpoint`.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from .checkpoint import read_checkpoint
from .download import HF_PREFIX

__all__ = ['setup_mmengine', 'allow_runner_checkpoints', 'register_url_loaders',
           'RUNNER_CHECKPOINT_GLOBALS']

#: What :func:`allow_runner_checkpoints` added to torch's allow-list (None until it runs).
RUNNER_CHECKPOINT_GLOBALS: Optional[List] = None


def setup_mmengine() -> None:
    """Install both into mmengine (idempotent): what each plugin calls on import."""
    allow_runner_checkpoints()  # so `--resume` works on torch >= 2.6 without unsafe unpickling
    register_url_loaders()  # URL / hf-hub: checkpoints: cached, verified, read safely


def _numpy_globals() -> list:
    core = getattr(np, '_core', None) or np.core  # numpy 2.x renamed np.core to np._core
    found = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    # numpy >= 1.25 pickles dtypes by their class (numpy.dtypes.Float64DType, ...)
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return found


def _globals() -> list:
    from mmengine.logging.history_buffer import HistoryBuffer
    # `getattr` is how numpy 2 pickles its dtype classes; torch still refuses to *call* anything
    # that getattr returns unless it is itself on the allow-list.
    return [HistoryBuffer, getattr, *_numpy_globals()]


def allow_runner_checkpoints() -> None:
    """Allow-list the classes mmengine runner checkpoints need (idempotent)."""
    global RUNNER_CHECKPOINT_GLOBALS
    if RUNNER_CHECKPOINT_GLOBALS is None:
        RUNNER_CHECKPOINT_GLOBALS = _globals()
        torch.serialization.add_safe_globals(RUNNER_CHECKPOINT_GLOBALS)


def _load_url(filename: str, map_location=None) -> dict:
    return read_checkpoint(filename)  # tensors on CPU; mmengine copies them into the model


def register_url_loaders() -> None:
    """Route mmengine's checkpoint loading of URLs and ``hf-hub:`` names through this package.

    After this, ``load_from=URL`` in a config, ``mmengine.runner.load_checkpoint(model, URL)``,
    mmdet's ``init_detector`` and mmseg's ``init_model`` fetch into the same caches and read the
    file with the same safe reader as :func:`~metaformer_dense.checkpoint.read_checkpoint`
    (mmengine's own HTTP loader unpickles whatever the server sends). Idempotent.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://', HF_PREFIX),
                                     force=True)(_load_url)
