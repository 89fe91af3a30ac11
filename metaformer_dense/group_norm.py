"""``GroupNorm(1, C)`` whose per-sample statistics come from reductions spread over the device.

PyTorch's CUDA ``group_norm`` computes each (sample, group) statistic in one thread block, so
``GroupNorm(1, C)`` (PoolFormer's norm, PoolFormerV2's / IdentityFormer's ``GroupNorm1NoBias`` and
the toolkit's output norms) runs on one block per image. :func:`group_norm1` computes the same
normalisation from torch's generic reductions (``sum`` over (C, H, W), which split one output over
many blocks), then one affine pass ``x * scale + shift`` with per-sample, per-channel ``scale`` and
``shift``. Its backward is written out (:class:`_GroupNorm1`) so that its reductions are spread the
same way:

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),   g = dy * weight,
    dweight = sum_{n,h,w} dy * xhat,   dbias = sum_{n,h,w} dy.

Statistics are fp32 for fp16 / bf16 inputs and under autocast; the output dtype is the one
torch's own ``group_norm`` gives (the input's; under autocast float32 on CUDA). The function runs on any device; only the choice to use it
depends on the device (on CPU ``F.group_norm`` is the faster of the two).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['group_norm1']


def _acc(t: torch.Tensor) -> torch.dtype:
    """The dtype statistics are computed in: float32 for half types, else the tensor's own."""
    return torch.promote_types(t.dtype, torch.float32)


def _stats(x: torch.Tensor, eps: float):
    """Per-sample mean and 1/std over (C, H, W), at least fp32, shaped (N, 1, 1, 1)."""
    xf = x.to(_acc(x))
    n = x[0].numel()
    mean = xf.sum(dim=(1, 2, 3), keepdim=True) / n
    var = (xf - mean).square().sum(dim=(1, 2, 3), keepdim=True) / n
    return mean, torch.rsqrt(var + eps)


class _GroupNorm1(torch.autograd.Function):
    """The forward and the written-out backward of :func:`group_norm1`."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean, rstd = _stats(x, eps)
        acc = _acc(x)
        w = weight.to(acc).view(1, -1, 1, 1) if weight is not None else torch.ones(
            1, x.shape[1], 1, 1, device=x.device, dtype=acc)
        scale = rstd * w  # (N, C, 1, 1)
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias.to(acc).view(1, -1, 1, 1)
        out = (x.to(acc) * scale + shift).to(x.dtype)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        acc = _acc(x)
        dyf = dy.to(acc)
        xhat = (x.to(acc) - mean) * rstd
        g = dyf * weight.to(acc).view(1, -1, 1, 1) if weight is not None else dyf
        n = x[0].numel()
        mean_g = g.sum(dim=(1, 2, 3), keepdim=True) / n
        mean_gx = (g * xhat).sum(dim=(1, 2, 3), keepdim=True) / n
        dx = (rstd * (g - mean_g - xhat * mean_gx)).to(x.dtype) \
            if ctx.needs_input_grad[0] else None
        dweight = ((dyf * xhat).sum(dim=(0, 2, 3)).to(weight.dtype)
                   if weight is not None and ctx.needs_input_grad[1] else None)
        dbias = (dyf.sum(dim=(0, 2, 3)).to(dy.dtype if weight is None else weight.dtype)
                 if ctx.has_bias and ctx.needs_input_grad[2] else None)
        return dx, dweight, dbias, None


def group_norm1(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm(x, 1, weight, bias, eps)`` with statistics from multi-block reductions.

    Args:
        x: ``(N, C, H, W)``, any memory format, float32 / float16 / bfloat16.
        weight: Per-channel scale ``(C,)``, or None.
        bias: Per-channel shift ``(C,)``, or None.
        eps: Added to the variance.

    Returns:
        The normalised tensor, ``x``'s shape and dtype.
    """
    if x.dim() != 4:
        raise ValueError(f'group_norm1 expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}')
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        # tracers, exporters and the compiler see torch's own op, as without this function
        return F.group_norm(x, 1, weight, bias, eps)
    if x.device.type == 'cuda' and torch.is_autocast_enabled('cuda'):
        # CUDA autocast runs group_norm in float32 and returns float32; CPU autocast leaves it
        # in the input's dtype. The statistics are float32 either way.
        x = x.float()
    with torch.autocast(x.device.type, enabled=False):
        return _GroupNorm1.apply(x, weight, bias, eps)
