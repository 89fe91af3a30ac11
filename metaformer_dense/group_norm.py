"""``GroupNorm(1, C)`` whose statistics are reduced by torch's many-block reductions.

PyTorch's CUDA ``group_norm`` reduces each (sample, group) with one thread block. PoolFormer
normalises with one group, so at the 1-4 images per GPU that detection and segmentation train
with, each norm's statistics run on 1-4 of the GPU's streaming multiprocessors. Here the same
norm is computed from torch's generic reductions (``var_mean`` and ``sum``, which split a single
output over many blocks) and one fused affine pass ``x * scale + shift`` with ``scale`` and
``shift`` per sample and channel. A custom backward spreads its reductions the same way:

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * weight
    dweight = sum_n rstd * (sum_hw dy * x - mean * sum_hw dy),  dbias = sum_n sum_hw dy

written as ``dx = a * dy + b * (x - mean) + c`` with ``a`` per sample and channel, ``b`` and
``c`` per sample (centred, so that nothing cancels when ``|mean|`` is much larger than the
standard deviation). Statistics, affine and gradients are computed in fp32 for
fp16/bf16 inputs; the result has ``F.group_norm``'s dtype (fp32 under CUDA autocast, where
group_norm is an fp32 op; the input's dtype otherwise, CPU autocast included). Zero-variance inputs are handled by ``eps`` as in ``F.group_norm``.

:func:`group_norm1` runs on any device; which device uses it is the backbone's choice (on CPU
``F.group_norm`` is the faster one). It steps aside for ``F.group_norm`` whenever the call is
traced, scripted, exported or compiled (:func:`metaformer_dense.fast_path.recording`), for
tensor subclasses, and for double backward (the custom backward is once-differentiable, so
``create_graph=True`` through it raises; such callers keep ``F.group_norm`` by not enabling
the path).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .fast_path import recording

__all__ = ['group_norm1', 'is_group_norm1', 'norm_forward']


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _GroupNorm1(torch.autograd.Function):
    """Forward and backward of ``GroupNorm(1, C)`` from many-block reductions."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, out_dtype: torch.dtype):
        n, c = x.shape[0], x.shape[1]
        view = (n, c) + (1,) * (x.dim() - 2)
        acc = _stats_dtype(x.dtype)
        xs = x if x.dtype == acc else x.to(acc)
        var, mean = torch.var_mean(xs, dim=tuple(range(1, x.dim())), correction=0)
        rstd = torch.rsqrt(var + eps)
        scale = rstd[:, None] if weight is None else rstd[:, None] * weight.to(acc)[None]
        scale = scale.expand(n, c)
        shift = -mean[:, None] * scale
        if bias is not None:
            shift = shift + bias.to(acc)[None]
        y = torch.addcmul(shift.reshape(view), xs, scale.reshape(view))
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y if y.dtype == out_dtype else y.to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[0], x.shape[1]
        view = (n, c) + (1,) * (x.dim() - 2)
        sample = (n,) + (1,) * (x.dim() - 1)
        spatial = tuple(range(2, x.dim()))
        acc = _stats_dtype(x.dtype)
        xs = x if x.dtype == acc else x.to(acc)
        dys = dy if dy.dtype == acc else dy.to(acc)
        count = x[0].numel()
        # Centred once: sums of dy * (x - mean) do not cancel when |mean| >> std.
        xc = xs - mean.reshape(sample)
        # Per (sample, channel) sums: N*C outputs, each reduced over H*W by torch's reductions.
        if spatial:
            db = dys.sum(spatial)
            dxhat = (dys * xc).sum(spatial)
        else:
            db, dxhat = dys, dys * xc
        dxhat = dxhat * rstd[:, None]                            # sum_hw dy * xhat, (N, C)
        w = None if weight is None else weight.to(acc)
        gw_db = db if w is None else db * w
        gw_dxhat = dxhat if w is None else dxhat * w
        mean_g = gw_db.sum(1) / count                            # mean(g), (N,)
        mean_gx = gw_dxhat.sum(1) / count                        # mean(g * xhat), (N,)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            a = rstd[:, None].expand(n, c) if w is None else rstd[:, None] * w[None]
            b = -rstd * rstd * mean_gx
            cc = -rstd * mean_g
            dx = torch.addcmul(torch.addcmul(cc.reshape(sample), xc, b.reshape(sample)),
                               dys, a.reshape(view))
            dx = dx.to(x.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            dweight = dxhat.sum(0).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            dbias = db.sum(0).to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None


def group_norm1(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm(x, 1, weight, bias, eps)`` with statistics from many-block reductions.

    Args:
        x: ``(N, C, *)``, any memory layout, fp32/fp64/fp16/bf16.
        weight: Per-channel scale ``(C,)`` or ``None``.
        bias: Per-channel shift ``(C,)`` or ``None``.
        eps: Added to the variance.

    Returns:
        The normalised tensor, of ``F.group_norm``'s dtype (fp32 under CUDA autocast).

    Raises:
        ValueError: ``x`` has fewer than two dimensions, or ``weight`` / ``bias`` is not ``(C,)``.
    """
    if recording() or type(x) is not torch.Tensor:
        return F.group_norm(x, 1, weight, bias, eps)
    if x.dim() < 2:
        raise ValueError(f'group_norm1 needs an (N, C, *) input, got shape {tuple(x.shape)}')
    for name, p in (('weight', weight), ('bias', bias)):
        if p is not None and tuple(p.shape) != (x.shape[1],):
            raise ValueError(f'group_norm1: {name} has shape {tuple(p.shape)}, the input '
                             f'{tuple(x.shape)} has {x.shape[1]} channels; give a ({x.shape[1]},) '
                             f'{name} or None')
    if not x.is_floating_point():
        return F.group_norm(x, 1, weight, bias, eps)   # torch's own error message
    # CUDA's autocast lists group_norm as an fp32 op; CPU's autocast leaves it alone.
    autocast = x.device.type == 'cuda' and torch.is_autocast_enabled('cuda')
    out_dtype = torch.promote_types(x.dtype, torch.float32) if autocast else x.dtype
    with torch.autocast(x.device.type, enabled=False):
        return _GroupNorm1.apply(x, weight, bias, float(eps), out_dtype)


def is_group_norm1(module: nn.Module) -> bool:
    """Whether ``module`` is a ``GroupNorm`` with one group (timm's ``GroupNorm1`` and
    ``GroupNorm1NoBias`` included) that :func:`norm_forward` computes by :func:`group_norm1`
    (not timm's ``fast_norm`` variant, which computes in the autocast dtype on purpose)."""
    return (isinstance(module, nn.GroupNorm) and module.num_groups == 1
            and not getattr(module, '_fast_norm', False))


def norm_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, by :func:`group_norm1` for a one-group ``GroupNorm``, reading its
    parameters in place; any other norm runs as the module itself."""
    if is_group_norm1(module):
        return group_norm1(x, module.weight, getattr(module, 'bias', None), module.eps)
    return module(x)
