"""Fixed-shape CUDA inference replayed from CUDA graphs: :class:`GraphedInference`.

Once the GroupNorm statistics no longer serialise a PoolFormer forward
(:mod:`metaformer_dense.cuda_path`), batch-1 inference is bound by kernel launches: some 200
small kernels per S12 forward, each launched by Python. A CUDA graph records the launches of one
forward once and replays them with one call. :class:`GraphedInference` wraps a module (the
backbone, or a whole model whose forward takes one tensor and returns a tensor or a tuple of
tensors) and keeps one graph per input signature (shape, dtype, device, autocast), captured on
the first call with that signature.

Same numbers: the replay runs the kernels the eager forward ran, on the module's own parameters
(read in place: ``load_state_dict`` and in-place updates are seen; moving or replacing a
parameter makes the next call capture again). Outputs are copies, not the graph's static
buffers, so a later call never overwrites what an earlier one returned. The wrapper runs the
module itself (no graph) whenever a graph could not reproduce the call: gradients enabled, the
module in training mode, an input that is not a plain CUDA tensor, and while a tracer, exporter
or compiler records (:func:`metaformer_dense.fast_path.recording`) or a hook could watch
(:func:`metaformer_dense.fast_path.has_hooks`).

Example::

    model = MetaFormerBackbone('poolformer_s12').cuda().eval()
    fast = GraphedInference(model)
    with torch.no_grad():
        feats = fast(images)   # images: one fixed shape, e.g. (1, 3, 800, 1216)
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import torch
from torch import nn

from .fast_path import has_hooks, recording

__all__ = ['GraphedInference']

Outputs = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


class _Captured:
    """One captured forward: its graph, static input and outputs, and the parameters it read."""

    def __init__(self, graph, static_in, static_out, params):
        self.graph, self.static_in, self.static_out, self.params = (graph, static_in,
                                                                    static_out, params)


class GraphedInference(nn.Module):
    """Inference of ``module`` replayed from one CUDA graph per input signature.

    Args:
        module: Takes one tensor and returns a tensor or a tuple / list of tensors.
        warmup: Eager calls on a side stream before capturing (cuDNN picks its algorithms and
            the caching allocator settles there, outside the graph).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: ``warmup`` is negative.
    """

    def __init__(self, module: nn.Module, warmup: int = 3):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f'GraphedInference wraps an nn.Module, got {type(module).__name__}')
        if warmup < 0:
            raise ValueError(f'warmup must be >= 0 eager calls, got {warmup}')
        self.module = module
        self.warmup = int(warmup)
        self._graphs: Dict[tuple, _Captured] = {}

    def replayable(self, x: torch.Tensor) -> bool:
        """Whether a call with ``x`` now runs from a graph (else the module runs itself)."""
        return (type(x) is torch.Tensor and x.is_cuda and not torch.is_grad_enabled()
                and not self.module.training and not recording()
                and not has_hooks(self.module))

    def forward(self, x: torch.Tensor) -> Outputs:
        if not self.replayable(x):
            return self.module(x)
        amp = torch.is_autocast_enabled('cuda')
        key = (tuple(x.shape), x.stride(), x.dtype, x.device,
               torch.get_autocast_dtype('cuda') if amp else None)
        params = tuple(t.data_ptr() for t in self._tensors())
        captured = self._graphs.get(key)
        if captured is None or captured.params != params:
            captured = self._graphs[key] = self._capture(x, key[-1], params)
        captured.static_in.copy_(x)
        captured.graph.replay()
        out = captured.static_out
        return out.clone() if isinstance(out, torch.Tensor) else type(out)(o.clone() for o in out)

    def _tensors(self):
        return list(self.module.parameters()) + list(self.module.buffers())

    def _capture(self, x: torch.Tensor, amp_dtype, params) -> _Captured:
        static_in = x.clone()
        # cache_enabled=False: casts of the weights must be recorded in the graph, not taken
        # from autocast's cache of an earlier (eager) call.
        autocast = torch.autocast('cuda', dtype=amp_dtype or torch.float32,
                                  enabled=amp_dtype is not None, cache_enabled=False)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), autocast:
            for _ in range(self.warmup):
                self.module(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), autocast:
            static_out = self.module(static_in)
        if not (isinstance(static_out, torch.Tensor) or isinstance(static_out, (tuple, list))
                and all(isinstance(o, torch.Tensor) for o in static_out)):
            raise TypeError(f'GraphedInference: {type(self.module).__name__} returned '
                            f'{type(static_out).__name__}; it must return a tensor or a tuple '
                            'of tensors')
        return _Captured(graph, static_in, static_out, params)
