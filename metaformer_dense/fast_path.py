"""CPU execution of timm MetaFormer stages: the same weights and math, less memory traffic.

:class:`~metaformer_dense.backbone.MetaFormerBackbone` runs its stages through this module on
CPU in channels-last layout (its default) and through timm's modules otherwise (GPU, NCHW,
autocast, gradient checkpointing). It reads the parameters of timm's modules in place: the
module tree, the state dict and checkpoints are those of timm's stages.

Where the time goes in timm's eager blocks on CPU is not the matrix products but the 4x wider
hidden activation of the MLP: at 800x1216 the first stage writes 62 MB for ``fc1``'s output and
62 MB more for the activation's, per block, into freshly faulted-in memory, and reads both back.
Here:

* **The MLP runs in row chunks.** In channels-last memory a ``(N, C, H, W)`` tensor is a
  ``(N*H*W, C)`` matrix and the 1x1 convolutions ``fc1``/``fc2`` are matrix products. The hidden
  activation is produced, activated and consumed one chunk of rows at a time, so it stays in
  the CPU cache. In training, a custom autograd function keeps only ``fc1``'s output for the
  backward pass (timm's graph keeps the activation's output too) and recomputes the activation
  chunk by chunk there; the weight gradients are accumulated chunk by chunk.
* **Inference fuses GELU and the biases into the matrix products** (oneDNN's fused linear,
  where this torch build has it), so the hidden chunk is written once and never re-read for
  the activation.
* **Inference updates the residual stream in place** (``x = res_scale * x + layer_scale *
  branch`` with ``mul_`` / ``addcmul_``) instead of allocating a tensor for every ``*`` and
  ``+``, and the pooling mixer ``pool(y) - y`` subtracts in place.

The operations and their order per element are timm's ``MetaFormerBlock``'s; only the
summation order inside the matrix products (and of the chunked weight gradients) and, in the
fused inference products, oneDNN's own GELU differ: float rounding, about 1e-6 in fp32.
``tests/test_fast_path.py`` and ``benchmarks/speed.py`` check outputs and gradients against timm
and mmpretrain.

Both tricks are visible to anyone who watches the computation rather than its result: a tracer
records the chunk loop with the traced input's bounds and the in-place writes on permuted views
(``torch.jit.trace`` and the TorchScript ONNX exporter replay them wrongly at other sizes, and
even at the traced one), ``torch.export`` and dynamo guard on the number of rows, and a forward
hook that kept a module's output would see it overwritten by the next stage. So the backbone
asks :func:`observed` first and runs timm's modules whenever anything records or hooks it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.models.metaformer import MetaFormerBlock, MetaFormerStage, Pooling
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.nn.modules import module as _module
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .chunked_mlp import (act_forward, act_spec, as_matrix, chunk_rows, mlp_backward_chunks,
                          mlp_forward_chunks, mlp_weights, residual_, scale_of, supported_block)
from .mixers import call_mixer

__all__ = ['applies', 'recording', 'has_hooks', 'observed', 'stage_supported', 'stage_forward']


def applies(x: torch.Tensor) -> bool:
    """Whether this module's path applies to ``x`` (a plain CPU fp32 channels-last tensor, no
    autocast). Tensor subclasses (fake, functional, distributed tensors) take timm's modules."""
    return (type(x) is torch.Tensor and x.device.type == 'cpu' and x.dim() == 4
            and x.dtype == torch.float32 and not torch.is_autocast_enabled('cpu')
            and x.is_contiguous(memory_format=torch.channels_last))


def recording() -> bool:
    """Whether the current call is being traced, scripted, exported or compiled.

    Covers ``torch.jit.trace`` / ``torch.jit.script``, both ONNX exporters (the TorchScript one
    traces; the ``dynamo=True`` one runs ``torch.export``), ``torch.export`` (strict and
    non-strict), ``torch.compile`` / dynamo, ``torch.fx.symbolic_trace`` and any
    ``TorchDispatchMode`` (``make_fx``, fake tensors, FLOP counters) that sees the operations.
    """
    return (torch.jit.is_scripting() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
            or torch.compiler.is_dynamo_compiling() or is_fx_symbolic_tracing()
            or is_in_torch_dispatch_mode())


def stage_supported(stage: nn.Module) -> bool:
    """Stages whose blocks are channels-first MetaFormer blocks with a 1x1-conv MLP."""
    return (isinstance(stage, MetaFormerStage) and stage.use_nchw
            and all(supported_block(b) for b in stage.blocks))


def has_hooks(module: nn.Module) -> bool:
    """Whether a forward, forward-pre or backward hook could see ``module`` or a submodule run.

    Counts hooks registered on ``module`` or any submodule and the global ones
    (``torch.nn.modules.module.register_module_forward_hook`` and friends), which fire on every
    module.
    """
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or m._backward_pre_hooks for m in module.modules())


def observed(module: nn.Module) -> bool:
    """Whether anyone besides the caller could see how ``module`` computes its result.

    True while :func:`recording` or when :func:`has_hooks` finds a hook on ``module``, its
    submodules or all modules. The CPU path then steps aside: a recorded chunk loop or in-place
    write would be replayed wrongly, and a hooked module's output must not be overwritten later.
    """
    return recording() or has_hooks(module)


def _linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.addmm(b, x, w.t()) if b is not None else torch.mm(x, w.t())


# oneDNN's linear with the element-wise work fused into the matrix product (the op torch's own
# CPU compiler emits): no separate GELU pass over the hidden chunk and no copy of the bias into
# the output first. Inference only: training keeps fc1's output before the activation. None:
# not tried yet; False: this torch build lacks it, so addmm and F.gelu run instead.
_fused_linear: Optional[bool] = None


def _linear_act(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                gelu: Optional[str]) -> torch.Tensor:
    """``x @ w.T + b``, then GELU (``approximate=gelu``) unless ``gelu`` is None."""
    global _fused_linear
    if _fused_linear is not False:
        try:
            out = torch.ops.mkldnn._linear_pointwise(x, w, b, 'none' if gelu is None else 'gelu',
                                                      [], '' if gelu is None else gelu)
        except (AttributeError, NotImplementedError, RuntimeError):
            _fused_linear = False
        else:
            _fused_linear = True
            return out
    h = _linear(x, w, b)
    return h if gelu is None else F.gelu(h, approximate=gelu)


# ----------------------------------------------------------------------------------------------
# Inference: no autograd, the residual stream updated in place
# ----------------------------------------------------------------------------------------------
def _block_inference_(block: MetaFormerBlock, x: torch.Tensor) -> None:
    y = block.norm1(x)
    t = block.token_mixer.pool(y).sub_(y) if type(block.token_mixer) is Pooling \
        else call_mixer(block, y)
    residual_(x.permute(0, 2, 3, 1), scale_of(block.res_scale1), scale_of(block.layer_scale1),
              t.permute(0, 2, 3, 1))
    del y, t
    mlp = block.mlp
    xm = as_matrix(x)  # a view: writes land in x
    ym = as_matrix(block.norm2(x).contiguous(memory_format=torch.channels_last))
    w1, w2 = mlp_weights(mlp)
    rs, ls = scale_of(block.res_scale2), scale_of(block.layer_scale2)
    spec = act_spec(mlp.act)
    gelu = spec[0][1] if spec is not None and spec[0][0] == 'gelu' else None
    rows = chunk_rows(w1.shape[0])
    for start in range(0, xm.shape[0], rows):
        h = _linear_act(ym[start:start + rows], w1, mlp.fc1.bias, gelu)  # GELU fused
        if gelu is None:
            h = (act_forward(spec[0], h, *spec[1:], inplace=True) if spec is not None
                 else mlp.act(h))
        residual_(xm[start:start + rows], rs, ls, _linear_act(h, w2, mlp.fc2.bias, None))


# ----------------------------------------------------------------------------------------------
# Training: timm's block with the MLP as one chunked autograd function
# ----------------------------------------------------------------------------------------------
class _ChunkedMlp(torch.autograd.Function):
    """``fc2(act(fc1(y)))`` on a ``(M, C)`` matrix, the hidden activation in row chunks.

    ``act``, ``star_scale`` and ``star_bias`` are what :func:`act_spec` returns.
    """

    @staticmethod
    def forward(ctx, y, w1, b1, w2, b2, star_scale, star_bias, act: Tuple, rows: int):
        pre, out = mlp_forward_chunks(y, w1, b1, w2, b2, act, star_scale, star_bias, rows)
        ctx.save_for_backward(y, pre, w1, w2, star_scale, star_bias)
        ctx.act, ctx.rows = act, rows
        return out

    @staticmethod
    def backward(ctx, dout):
        y, pre, w1, w2, star_scale, star_bias = ctx.saved_tensors
        act, rows = ctx.act, ctx.rows
        dout = dout.contiguous()
        need_y, need_w1, need_b1, need_w2, need_b2, need_ss, need_sb = ctx.needs_input_grad[:7]
        dw2, dw1, db1, dss, dsb, dy = mlp_backward_chunks(
            y, pre, dout, w1, w2, act, star_scale, star_bias, rows,
            need_w2, need_w1, need_b1, need_ss, need_sb, need_y)
        db2 = dout.sum(0) if need_b2 else None
        if dss is not None:
            dss = dss.to(star_scale.dtype).reshape(star_scale.shape)
        if dsb is not None:
            dsb = dsb.to(star_bias.dtype).reshape(star_bias.shape)
        return dy, dw1, db1, dw2, db2, dss, dsb, None, None


def _mlp_training(mlp: nn.Module, y: torch.Tensor) -> torch.Tensor:
    spec = act_spec(mlp.act)
    if spec is None or (mlp.training and (mlp.drop1.p or mlp.drop2.p)):
        return mlp(y)  # other activations, dropout: timm's modules
    act, star_scale, star_bias = spec
    w1, w2 = mlp_weights(mlp)
    n, _, h, w = y.shape
    y = y.contiguous(memory_format=torch.channels_last)
    out = _ChunkedMlp.apply(as_matrix(y), w1, mlp.fc1.bias, w2, mlp.fc2.bias, star_scale,
                            star_bias, act, chunk_rows(w1.shape[0]))
    # Back to (N, C, H, W) in channels-last memory, which is what the matrix rows are.
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)


def _block_training(block: MetaFormerBlock, x: torch.Tensor) -> torch.Tensor:
    # timm's MetaFormerBlock.forward with the MLP replaced by the chunked function.
    x = block.res_scale1(x) + block.layer_scale1(
        block.drop_path1(call_mixer(block, block.norm1(x))))
    x = block.res_scale2(x) + block.layer_scale2(
        block.drop_path2(_mlp_training(block.mlp, block.norm2(x))))
    return x


def stage_forward(stage: MetaFormerStage, x: torch.Tensor) -> torch.Tensor:
    """Run ``stage`` on ``x``, a CPU tensor for which :func:`applies` holds.

    Without gradients and in eval mode the residual stream is updated in place, so ``x`` is
    consumed when the stage has no downsampling layer: pass a tensor nobody else holds (the
    stem's or a stage's output when no hook saw it), and only when :func:`observed` is False
    for the model that owns ``stage``.
    """
    x = stage.downsample(x).contiguous(memory_format=torch.channels_last)
    if torch.is_grad_enabled() or stage.training:  # training: drop path, dropout, autograd
        for block in stage.blocks:
            x = _block_training(block, x)
        return x
    for block in stage.blocks:
        _block_inference_(block, x)
    return x
