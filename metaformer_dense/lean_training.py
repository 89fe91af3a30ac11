"""Memory-lean training of timm MetaFormer blocks, on any device (``lean_training`` switch).

:class:`~metaformer_dense.backbone.MetaFormerBackbone` trains its stages through
:func:`stage_forward_lean` when ``lean_training`` is on (by default on CPU). Each block is one
autograd function that keeps only its input and fc1's output for backward and recomputes the
rest; the math is timm's (``tests/test_lean_training.py`` compares every gradient). Its MLP runs
through :mod:`metaformer_dense.chunked_mlp` (shared with the CPU path); only the row chunking of
the MLP is CPU-specific.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import DropPath
from timm.models.metaformer import MetaFormerBlock, MetaFormerStage
from torch import nn
from torch.autograd.function import once_differentiable

from .chunked_mlp import (act_spec, as_matrix, chunk_rows, mlp_backward_chunks, mlp_forward_chunks,
                          mlp_weights, residual_, scale_of, supported_block)
from .mixers import call_mixer, recomputable

__all__ = ['lean_applies', 'stage_forward_lean']


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
    if not supported_block(block) or act_spec(block.mlp.act) is None \
            or not recomputable(block.token_mixer):  # backward runs the mixer again
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
    t = call_mixer(block, block.norm1(x))
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
        act, star_scale, star_bias = act_spec(mlp.act)
        w1, w2 = mlp_weights(mlp)
        b1, b2 = mlp.fc1.bias, mlp.fc2.bias
        x1 = _mixer_half(block, x, masks[0])
        y = as_matrix(block.norm2(x1).contiguous(memory_format=torch.channels_last))
        pre, out = mlp_forward_chunks(y, w1, b1, w2, b2, act, star_scale, star_bias, rows)
        del y
        n, c, hh, ww = x1.shape
        branch = out.view(n, hh, ww, c)
        if masks[1] is not None:
            branch.mul_(masks[1].view(-1, 1, 1, 1))
        # x1 is this function's own tensor: the residual update may write into it.
        residual_(x1.permute(0, 2, 3, 1), scale_of(block.res_scale2),
                  scale_of(block.layer_scale2), branch)
        ctx.block, ctx.masks, ctx.rows = block, masks, rows
        ctx.save_for_backward(x, pre, *params)
        return x1

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, pre, *params = ctx.saved_tensors
        block, (mask1, mask2), rows = ctx.block, ctx.masks, ctx.rows
        mlp = block.mlp
        act, star_scale, star_bias = act_spec(mlp.act)
        w1, w2 = mlp_weights(mlp)
        ls2 = scale_of(block.layer_scale2)
        need = dict(zip((id(p) for p in block.parameters()), ctx.needs_input_grad[4:]))
        manual = {id(p) for p in (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias,
                                  star_scale, star_bias, ls2) if p is not None}

        # The token-mixer half again, under autograd, from the saved input.
        with torch.enable_grad():
            xd = x.detach().requires_grad_(ctx.needs_input_grad[0])
            x1 = _mixer_half(block, xd, mask1)
            skip = block.res_scale2(x1)
            y2 = block.norm2(x1).contiguous(memory_format=torch.channels_last)
        y = as_matrix(y2.detach())

        dout = dout.contiguous(memory_format=torch.channels_last)
        d = as_matrix(dout)
        if mask2 is not None:  # per sample: rows of sample i are d's i-th block of rows
            d = (dout * mask2.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
            d = as_matrix(d)
        w2s = w2 * ls2.view(-1, 1) if ls2 is not None else w2  # fc2 and layer scale as one
        need_w1, need_b1 = need.get(id(mlp.fc1.weight), False), need.get(id(mlp.fc1.bias), False)
        need_w2 = need.get(id(mlp.fc2.weight), False)
        need_ls2 = ls2 is not None and need.get(id(ls2), False)
        need_ss = star_scale is not None and need.get(id(star_scale), False)
        need_sb = star_bias is not None and need.get(id(star_bias), False)
        need_y = any(need.get(id(p), False) for p in block.parameters()
                     if id(p) not in manual) or ctx.needs_input_grad[0]
        e, dw1, db1, dss, dsb, dy = mlp_backward_chunks(  # e = d^T act(pre)
            y, pre, d, w1, w2s, act, star_scale, star_bias, rows,
            need_w2 or need_ls2, need_w1, need_b1, need_ss, need_sb, need_y)
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
        rows = chunk_rows(block.mlp.fc1.out_channels) if x.device.type == 'cpu' else m
        x = _LeanBlock.apply(x, block, masks, rows, *block.parameters())
    return x
