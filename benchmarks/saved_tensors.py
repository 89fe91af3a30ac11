"""How much a training forward keeps for backward, measured the device-independent way.

The bytes of the distinct storages that autograd saves for the backward pass (seen through
``torch.autograd.graph.saved_tensors_hooks``) while a function runs. Parameters, which exist
whether or not anything is trained, can be left out. The number does not depend on the
allocator, so CPU and GPU runs agree, and on the ``meta`` device it costs no memory at all;
``benchmarks/studies/memory.py`` records it per architecture and tests/test_lean_training.py
bounds the lean blocks with it.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Tuple

import torch

__all__ = ['saved_tensor_bytes']


def saved_tensor_bytes(fn: Callable[[], object],
                       exclude: Iterable[torch.Tensor] = ()) -> Tuple[int, object]:
    """Run ``fn`` and count the bytes of the distinct storages autograd saved meanwhile.

    A storage saved by several operations (a block's output is the next block's input) counts
    once; views count as their whole storage.

    Args:
        fn: The forward to measure (run with autograd enabled).
        exclude: Tensors whose storages are not counted, e.g. ``model.parameters()``.

    Returns:
        ``(bytes, fn's result)``; keep the result alive as long as the graph is needed.
    """
    skip = {t.untyped_storage()._cdata for t in exclude}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata  # the storage itself: works for meta tensors too
        if key not in skip and storage.nbytes():
            seen[key] = max(seen.get(key, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out
