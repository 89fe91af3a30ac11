"""Let mmengine resume from its own checkpoints on torch >= 2.6 without unsafe unpickling.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means
``weights_only=True``, which refuses the few non-tensor objects a runner checkpoint pickles
(mmengine's ``HistoryBuffer`` and numpy arrays/scalars in the message hub). Instead of loading
with ``weights_only=False`` (arbitrary code execution for an untrusted file), we add exactly
those classes to torch's allow-list. Nothing on the list can run code when unpickled.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ['allow_runner_checkpoints', 'RUNNER_CHECKPOINT_GLOBALS']


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


RUNNER_CHECKPOINT_GLOBALS = None


def allow_runner_checkpoints() -> None:
    """Allow-list the classes mmengine runner checkpoints need (idempotent)."""
    global RUNNER_CHECKPOINT_GLOBALS
    if RUNNER_CHECKPOINT_GLOBALS is None:
        RUNNER_CHECKPOINT_GLOBALS = _globals()
        torch.serialization.add_safe_globals(RUNNER_CHECKPOINT_GLOBALS)
