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
* **Inference updates the residual stream in place** (``x = res_scale * x + layer_scale *
  branch`` with ``mul_`` / ``addcmul_``) instead of allocating a tensor for every ``*`` and
  ``+``, and the pooling mixer ``pool(y) - y`` subtracts in place.

The operations and their order per element are timm's ``MetaFormerBlock``'s; only the
summation order inside the matrix products (and of the chunked weight gradients) differs:
float rounding, about 1e-6 in fp32. ``tests/test_fast_path.py`` and ``benchmarks/speed.py``
check outputs and gradients against timm and mmpretrain.

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
from torch.autograd.function import once_differentiable

from timm.layers import DropPath
from timm.models.metaformer import MetaFormerBlock, MetaFormerStage, Pooling, Scale, StarReLU
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.nn.modules import module as _module
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ['applies', 'recording', 'has_hooks', 'observed', 'stage_supported', 'stage_forward',
           'lean_applies', 'stage_forward_lean']

# Bytes of hidden activation per MLP chunk: rows x hidden floats, sized to stay in cache.
CHUNK_BYTES = 4 << 20


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


def _supported_block(block: nn.Module) -> bool:
    if not isinstance(block, MetaFormerBlock):
        return False
    mlp = block.mlp
    convs = (getattr(mlp, 'fc1', None), getattr(mlp, 'fc2', None))
    return (all(isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.groups == 1
                and c.stride == (1, 1) and c.padding == (0, 0) for c in convs)
            and isinstance(getattr(mlp, 'norm', None), nn.Identity)
            and all(isinstance(m, (Scale, nn.Identity)) for m in (
                block.layer_scale1, block.layer_scale2, block.res_scale1, block.res_scale2)))


def stage_supported(stage: nn.Module) -> bool:
    """Stages whose blocks are channels-first MetaFormer blocks with a 1x1-conv MLP."""
    return (isinstance(stage, MetaFormerStage) and stage.use_nchw
            and all(_supported_block(b) for b in stage.blocks))


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


def _chunk_rows(hidden: int) -> int:
    return max(64, CHUNK_BYTES // (4 * hidden))


def _scale(module: nn.Module) -> Optional[torch.Tensor]:
    """Per-channel factor of a timm ``Scale`` (None for ``Identity``)."""
    return module.scale if isinstance(module, Scale) else None


def _matrix(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` channels-last tensor as its ``(N*H*W, C)`` matrix (a view: writes land
    in ``t``; raises if ``t`` is not channels-last contiguous)."""
    return t.permute(0, 2, 3, 1).view(-1, t.shape[1])


def _weights(mlp: nn.Module):
    """``fc1``/``fc2`` weights as ``(hidden, C)`` / ``(C, hidden)`` matrices (views)."""
    w1 = mlp.fc1.weight.reshape(mlp.fc1.out_channels, mlp.fc1.in_channels)
    w2 = mlp.fc2.weight.reshape(mlp.fc2.out_channels, mlp.fc2.in_channels)
    return w1, w2


def _linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.addmm(b, x, w.t()) if b is not None else torch.mm(x, w.t())


def _act_spec(act: nn.Module) -> Optional[Tuple[Tuple, Optional[torch.Tensor],
                                                 Optional[torch.Tensor]]]:
    """``(kind, star_scale, star_bias)`` for the activations computed here, else None.

    ``kind`` is ``('gelu', approximate)`` or ``('star',)`` (timm's StarReLU,
    ``scale * relu(a) ** 2 + bias`` with learnable scalar ``scale`` and ``bias``).
    """
    if isinstance(act, nn.GELU):
        return ('gelu', act.approximate), None, None
    if isinstance(act, StarReLU):
        return ('star',), act.scale, act.bias
    return None


def _act_forward(kind: Tuple, a: torch.Tensor, star_scale: Optional[torch.Tensor],
                 star_bias: Optional[torch.Tensor], inplace: bool = False) -> torch.Tensor:
    """The activation of :func:`_act_spec`'s ``kind`` on a chunk (``inplace``: may reuse ``a``)."""
    if kind[0] == 'gelu':
        return F.gelu(a, approximate=kind[1])
    r = a.relu_() if inplace else a.relu()
    return r.square_().mul_(star_scale).add_(star_bias)


def _residual_(x: torch.Tensor, res_scale: Optional[torch.Tensor],
               layer_scale: Optional[torch.Tensor], branch: torch.Tensor) -> None:
    """``x = res_scale * x + layer_scale * branch``, in place; scales run along x's last dim."""
    if res_scale is not None:
        x.mul_(res_scale)
    if layer_scale is not None:
        x.addcmul_(branch, layer_scale)
    else:
        x.add_(branch)


# ----------------------------------------------------------------------------------------------
# Inference: no autograd, the residual stream updated in place
# ----------------------------------------------------------------------------------------------
def _block_inference_(block: MetaFormerBlock, x: torch.Tensor) -> None:
    y = block.norm1(x)
    t = block.token_mixer.pool(y).sub_(y) if isinstance(block.token_mixer, Pooling) \
        else block.token_mixer(y)
    _residual_(x.permute(0, 2, 3, 1), _scale(block.res_scale1), _scale(block.layer_scale1),
               t.permute(0, 2, 3, 1))
    del y, t
    mlp = block.mlp
    xm = _matrix(x)  # a view: writes land in x
    ym = _matrix(block.norm2(x).contiguous(memory_format=torch.channels_last))
    w1, w2 = _weights(mlp)
    rs, ls = _scale(block.res_scale2), _scale(block.layer_scale2)
    spec = _act_spec(mlp.act)
    rows = _chunk_rows(w1.shape[0])
    for start in range(0, xm.shape[0], rows):
        h = _linear(ym[start:start + rows], w1, mlp.fc1.bias)
        h = _act_forward(spec[0], h, *spec[1:], inplace=True) if spec is not None else mlp.act(h)
        _residual_(xm[start:start + rows], rs, ls, _linear(h, w2, mlp.fc2.bias))


# ----------------------------------------------------------------------------------------------
# Training: timm's block with the MLP as one chunked autograd function
# ----------------------------------------------------------------------------------------------
class _ChunkedMlp(torch.autograd.Function):
    """``fc2(act(fc1(y)))`` on a ``(M, C)`` matrix, the hidden activation in row chunks.

    ``act``, ``star_scale`` and ``star_bias`` are what :func:`_act_spec` returns.
    """

    @staticmethod
    def forward(ctx, y, w1, b1, w2, b2, star_scale, star_bias, act: Tuple, rows: int):
        m, hidden = y.shape[0], w1.shape[0]
        pre = y.new_empty(m, hidden)  # fc1 output, kept for backward
        out = y.new_empty(m, w2.shape[0])
        for s in range(0, m, rows):
            a = pre[s:s + rows]
            if b1 is not None:
                torch.addmm(b1, y[s:s + rows], w1.t(), out=a)
            else:
                torch.mm(y[s:s + rows], w1.t(), out=a)
            g = _act_forward(act, a, star_scale, star_bias)
            if b2 is not None:
                torch.addmm(b2, g, w2.t(), out=out[s:s + rows])
            else:
                torch.mm(g, w2.t(), out=out[s:s + rows])
        ctx.save_for_backward(y, pre, w1, w2, star_scale, star_bias)
        ctx.act, ctx.rows = act, rows
        return out

    @staticmethod
    def backward(ctx, dout):
        y, pre, w1, w2, star_scale, star_bias = ctx.saved_tensors
        act, rows = ctx.act, ctx.rows
        dout = dout.contiguous()
        need_y, need_w1, need_b1, need_w2, need_b2, need_ss, need_sb = ctx.needs_input_grad[:7]
        dy = torch.empty_like(y) if need_y else None
        dw1 = torch.zeros_like(w1) if need_w1 else None
        dw2 = torch.zeros_like(w2) if need_w2 else None
        db1 = w1.new_zeros(w1.shape[0]) if need_b1 else None
        dss = torch.zeros((), dtype=torch.float64) if need_ss else None
        dsb = torch.zeros((), dtype=torch.float64) if need_sb else None
        for s in range(0, y.shape[0], rows):
            a, d = pre[s:s + rows], dout[s:s + rows]
            if need_w2:
                dw2.addmm_(d.t(), _act_forward(act, a, star_scale, star_bias))
            dg = torch.mm(d, w2)
            if act[0] == 'gelu':
                da = torch.ops.aten.gelu_backward(dg, a, approximate=act[1])
            else:  # d/da of scale * relu(a)^2 + bias = 2 * scale * relu(a)
                r = a.relu()
                if need_ss:
                    dss += torch.dot(dg.reshape(-1), r.square().reshape(-1)).double()
                if need_sb:
                    dsb += dg.sum(dtype=torch.float64)
                da = dg.mul_(r).mul_(2 * star_scale)
            if need_w1:
                dw1.addmm_(da.t(), y[s:s + rows])
            if need_b1:
                db1.add_(da.sum(0))
            if need_y:
                torch.mm(da, w1, out=dy[s:s + rows])
        db2 = dout.sum(0) if need_b2 else None
        if dss is not None:
            dss = dss.to(star_scale.dtype).reshape(star_scale.shape)
        if dsb is not None:
            dsb = dsb.to(star_bias.dtype).reshape(star_bias.shape)
        return dy, dw1, db1, dw2, db2, dss, dsb, None, None


def _mlp_training(mlp: nn.Module, y: torch.Tensor) -> torch.Tensor:
    spec = _act_spec(mlp.act)
    if spec is None or (mlp.training and (mlp.drop1.p or mlp.drop2.p)):
        return mlp(y)  # other activations, dropout: timm's modules
    act, star_scale, star_bias = spec
    w1, w2 = _weights(mlp)
    n, _, h, w = y.shape
    y = y.contiguous(memory_format=torch.channels_last)
    out = _ChunkedMlp.apply(_matrix(y), w1, mlp.fc1.bias, w2, mlp.fc2.bias, star_scale,
                            star_bias, act, _chunk_rows(w1.shape[0]))
    # Back to (N, C, H, W) in channels-last memory, which is what the matrix rows are.
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)


def _block_training(block: MetaFormerBlock, x: torch.Tensor) -> torch.Tensor:
    # timm's MetaFormerBlock.forward with the MLP replaced by the chunked function.
    x = block.res_scale1(x) + block.layer_scale1(
        block.drop_path1(block.token_mixer(block.norm1(x))))
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


# ----------------------------------------------------------------------------------------------
# Memory-lean training on any device: one autograd function per block
# ----------------------------------------------------------------------------------------------
# timm's block keeps about 14 tensors of the block's input size for backward (GroupNorm, pooling,
# layer-scale and residual inputs, and fc1's, the activation's and fc2's 4x wide inputs). The
# function below keeps the block input and fc1's output only (5 such tensors) and recomputes
# the rest in backward: the token-mixer half (norm1, mixer, layer scale, norm2) through timm's
# modules under autograd, the activation by hand. fc2's output is not needed: the gradient of
# layer_scale2 is sum_k W2[c, k] * E[c, k] with E = dout^T act(h), which the fc2 weight gradient
# computes anyway. Plain torch ops: it runs wherever the modules run.

def lean_applies(x: torch.Tensor) -> bool:
    """Whether :func:`stage_forward_lean` applies to ``x``: a plain floating-point 4-D tensor
    on any device, outside autocast (AMP takes timm's modules). The stages convert it to
    channels-last memory (a no-op for the backbone's channels-last activations)."""
    return (type(x) is torch.Tensor and x.dim() == 4 and x.is_floating_point()
            and not (torch.amp.is_autocast_available(x.device.type)
                     and torch.is_autocast_enabled(x.device.type)))


def _lean_block_supported(block: nn.Module) -> bool:
    if not _supported_block(block) or _act_spec(block.mlp.act) is None:
        return False
    mlp = block.mlp
    drops = [getattr(mlp, n, None) for n in ('drop1', 'drop2')]
    return (all(isinstance(d, nn.Identity) or (isinstance(d, nn.Dropout) and d.p == 0)
                for d in drops)
            and all(isinstance(d, (DropPath, nn.Identity))
                    for d in (block.drop_path1, block.drop_path2)))


def _drop_mask(dp: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The per-sample factor timm's ``DropPath`` would multiply by (None: it passes through).

    Drawn with the same calls and shape as ``timm.layers.drop_path``, so with the same RNG state
    the same samples are dropped; drawn once in forward and reused in backward."""
    if not isinstance(dp, DropPath) or not dp.training or dp.drop_prob == 0.:
        return None
    keep = 1. - dp.drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    if keep > 0. and dp.scale_by_keep:
        mask.div_(keep)
    return mask


def _mixer_half(block: MetaFormerBlock, x: torch.Tensor,
                mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``res_scale1(x) + layer_scale1(drop_path1(token_mixer(norm1(x))))`` with a fixed mask."""
    t = block.token_mixer(block.norm1(x))
    if mask is not None:
        t = t * mask
    return (block.res_scale1(x) + block.layer_scale1(t)).contiguous(
        memory_format=torch.channels_last)


class _LeanBlock(torch.autograd.Function):
    """One ``MetaFormerBlock`` whose backward recomputes all but its input and fc1's output.

    ``params`` are the block's parameters in ``block.parameters()`` order (passed so autograd
    routes their gradients and checks they were not modified in place before backward).
    """

    @staticmethod
    def forward(ctx, x, block, masks, rows, *params):
        mlp = block.mlp
        act, star_scale, star_bias = _act_spec(mlp.act)
        w1, w2 = _weights(mlp)
        b1, b2 = mlp.fc1.bias, mlp.fc2.bias
        x1 = _mixer_half(block, x, masks[0])
        y = _matrix(block.norm2(x1).contiguous(memory_format=torch.channels_last))
        m, hidden = y.shape[0], w1.shape[0]
        pre = y.new_empty(m, hidden)  # fc1 output, kept for backward
        out = y.new_empty(m, w2.shape[0])
        for s in range(0, m, rows):
            a = pre[s:s + rows]
            if b1 is not None:
                torch.addmm(b1, y[s:s + rows], w1.t(), out=a)
            else:
                torch.mm(y[s:s + rows], w1.t(), out=a)
            g = _act_forward(act, a, star_scale, star_bias)
            if b2 is not None:
                torch.addmm(b2, g, w2.t(), out=out[s:s + rows])
            else:
                torch.mm(g, w2.t(), out=out[s:s + rows])
        del y
        n, c, hh, ww = x1.shape
        branch = out.view(n, hh, ww, c)
        if masks[1] is not None:
            branch.mul_(masks[1].view(-1, 1, 1, 1))
        # x1 is this function's own tensor: the residual update may write into it.
        _residual_(x1.permute(0, 2, 3, 1), _scale(block.res_scale2), _scale(block.layer_scale2),
                   branch)
        ctx.block, ctx.masks, ctx.rows = block, masks, rows
        ctx.save_for_backward(x, pre, *params)
        return x1

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, pre, *params = ctx.saved_tensors
        block, (mask1, mask2), rows = ctx.block, ctx.masks, ctx.rows
        mlp = block.mlp
        act, star_scale, star_bias = _act_spec(mlp.act)
        w1, w2 = _weights(mlp)
        ls2 = _scale(block.layer_scale2)
        need = dict(zip((id(p) for p in block.parameters()), ctx.needs_input_grad[4:]))
        manual = {id(p) for p in (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias,
                                  star_scale, star_bias, ls2) if p is not None}

        # The token-mixer half again, under autograd, from the saved input.
        with torch.enable_grad():
            xd = x.detach().requires_grad_(ctx.needs_input_grad[0])
            x1 = _mixer_half(block, xd, mask1)
            skip = block.res_scale2(x1)
            y2 = block.norm2(x1).contiguous(memory_format=torch.channels_last)
        y = _matrix(y2.detach())

        dout = dout.contiguous(memory_format=torch.channels_last)
        d = _matrix(dout)
        if mask2 is not None:  # per sample: rows of sample i are d's i-th block of rows
            d = (dout * mask2.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
            d = _matrix(d)
        w2s = w2 * ls2.view(-1, 1) if ls2 is not None else w2  # fc2 and layer scale as one
        need_w1, need_b1 = need.get(id(mlp.fc1.weight), False), need.get(id(mlp.fc1.bias), False)
        need_w2 = need.get(id(mlp.fc2.weight), False)
        need_ls2 = ls2 is not None and need.get(id(ls2), False)
        need_ss = star_scale is not None and need.get(id(star_scale), False)
        need_sb = star_bias is not None and need.get(id(star_bias), False)
        need_y = any(need.get(id(p), False) for p in block.parameters()
                     if id(p) not in manual) or ctx.needs_input_grad[0]
        e = torch.zeros_like(w2) if (need_w2 or need_ls2) else None  # d^T act(pre)
        dw1 = torch.zeros_like(w1) if need_w1 else None
        db1 = w1.new_zeros(w1.shape[0]) if need_b1 else None
        dss = torch.zeros((), dtype=torch.float64, device=x.device) if need_ss else None
        dsb = torch.zeros((), dtype=torch.float64, device=x.device) if need_sb else None
        dy = torch.empty_like(y) if need_y else None
        for s in range(0, y.shape[0], rows):
            a, dc = pre[s:s + rows], d[s:s + rows]
            if e is not None:
                e.addmm_(dc.t(), _act_forward(act, a, star_scale, star_bias))
            dg = torch.mm(dc, w2s)
            if act[0] == 'gelu':
                da = torch.ops.aten.gelu_backward(dg, a, approximate=act[1])
            else:  # d/da of scale * relu(a)^2 + bias = 2 * scale * relu(a)
                r = a.relu()
                if need_ss:
                    dss += torch.dot(dg.reshape(-1), r.square().reshape(-1)).double()
                if need_sb:
                    dsb += dg.sum(dtype=torch.float64)
                da = dg.mul_(r).mul_(2 * star_scale)
            if need_w1:
                dw1.addmm_(da.t(), y[s:s + rows])
            if need_b1:
                db1.add_(da.sum(0))
            if need_y:
                torch.mm(da, w1, out=dy[s:s + rows])
        grads = {}
        if need_w1:
            grads[id(mlp.fc1.weight)] = dw1.view_as(mlp.fc1.weight)
        if need_b1:
            grads[id(mlp.fc1.bias)] = db1
        if need_w2:
            grads[id(mlp.fc2.weight)] = (e * ls2.view(-1, 1) if ls2 is not None
                                         else e).view_as(mlp.fc2.weight)
        if mlp.fc2.bias is not None and need.get(id(mlp.fc2.bias), False):
            dsum = d.sum(0)
            grads[id(mlp.fc2.bias)] = dsum * ls2 if ls2 is not None else dsum
        if need_ls2:  # sum over rows of d * fc2(act(pre)), from E without fc2's output
            g_ls = (w2 * e).sum(1)
            if mlp.fc2.bias is not None:
                g_ls = g_ls + mlp.fc2.bias * d.sum(0)
            grads[id(ls2)] = g_ls
        if need_ss:
            grads[id(star_scale)] = dss.to(star_scale.dtype).reshape(star_scale.shape)
        if need_sb:
            grads[id(star_bias)] = dsb.to(star_bias.dtype).reshape(star_bias.shape)

        # Through norm2, the residual and the token-mixer half by autograd.
        auto = [p for p in block.parameters() if id(p) not in manual and need.get(id(p), False)]
        inputs = ([xd] if ctx.needs_input_grad[0] else []) + auto
        dx = None
        if inputs:
            n, c, hh, ww = y2.shape
            dy2 = dy.view(n, hh, ww, c).permute(0, 3, 1, 2)
            got = torch.autograd.grad((skip, y2), inputs, (dout, dy2), allow_unused=True)
            if ctx.needs_input_grad[0]:
                dx, got = got[0], got[1:]
            grads.update((id(p), g) for p, g in zip(auto, got))
        return (dx, None, None, None, *(grads.get(id(p)) for p in block.parameters()))


def stage_forward_lean(stage: MetaFormerStage, x: torch.Tensor) -> torch.Tensor:
    """Run ``stage`` for training with autograd, keeping about 5 block-input-sized tensors per
    block for backward instead of timm's 14 (:class:`_LeanBlock`); any device.

    ``x`` must satisfy :func:`lean_applies` and the caller must have checked :func:`observed`
    (the recomputation runs the modules twice, which a hook would see). Blocks this function
    does not cover (other activations, dropout) run as timm's modules.
    """
    x = stage.downsample(x).contiguous(memory_format=torch.channels_last)
    for block in stage.blocks:
        if not _lean_block_supported(block):
            x = block(x)
            continue
        masks = (_drop_mask(block.drop_path1, x), _drop_mask(block.drop_path2, x))
        m = x.shape[0] * x.shape[2] * x.shape[3]
        rows = _chunk_rows(block.mlp.fc1.out_channels) if x.device.type == 'cpu' else m
        x = _LeanBlock.apply(x, block, masks, rows, *block.parameters())
    return x
