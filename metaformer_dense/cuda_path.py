"""CUDA execution of timm MetaFormer stages: timm's blocks with ``GroupNorm(1, C)`` spread out.

:class:`~metaformer_dense.backbone.MetaFormerBackbone` runs PoolFormer v1/v2 stages through
:func:`stage_forward` (and its output norms through
:func:`metaformer_dense.group_norm.norm_forward`) on the device types in :data:`DEVICE_TYPES`
(CUDA), where torch's own ``group_norm`` computes each sample's statistics in one thread block
(:mod:`metaformer_dense.group_norm`). Each block is timm's ``MetaFormerBlock.forward`` with ``norm1`` / ``norm2`` computed by
:func:`~metaformer_dense.group_norm.group_norm1` from the modules' own parameters: the module tree,
the state dict and checkpoints are timm's. Stages with other norms (ConvFormer's and CAFormer's
per-pixel LayerNorms) run as timm's modules. On CPU ``F.group_norm`` is faster than the generic
reductions, so the backbone keeps timm's modules there unless a test asks otherwise
(:func:`used_on`).

Two further rewrites of the PoolFormer block are options (:func:`block_options`, off by
default; a GPU profile decides whether they pay). Both are algebraically timm's block, with
float rounding in another order:

* ``algebraic_mixer``: average pooling with ``count_include_pad=False`` has weights summing to 1
  at every position, so for the per-channel affine ``n(x) = a * x + b`` of a GroupNorm,
  ``pool(n(x)) - n(x) = a * (pool(x) - x)``; the mixer half-block becomes
  ``res_scale1(x) + layer_scale1 * weight * rstd * (pool(x) - x)``: one statistics pass, no
  normalised tensor.
* ``fold_norm2``: ``fc1(norm2(y)) = conv(y, rstd * W diag(w)) + (b1 + W b - rstd * mean * W w)``,
  a per-sample weight and bias: one grouped 1x1 convolution (``groups=N``) over ``y`` itself. With
  low-precision inputs (autocast) the product then runs on unnormalised values, whose common
  offset cancels only afterwards: less accurate than timm's order when ``|mean| >> std``.

The backbone steps aside to timm's modules whenever :func:`metaformer_dense.fast_path.observed`
holds (tracing, export, compile, hooks), as for the CPU path.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Set

import torch
import torch.nn.functional as F
from timm.models.metaformer import MetaFormerBlock, MetaFormerStage, Pooling, Scale
from torch import nn
from torch.utils.checkpoint import checkpoint

from .group_norm import is_group_norm1, norm_forward
from .mixers import call_mixer

__all__ = ['DEVICE_TYPES', 'used_on', 'wanted', 'stage_supported', 'stage_forward',
           'block_forward', 'block_options', 'OPTIONS']

#: Device types on which the backbone takes this path (``torch.device(...).type`` strings).
DEVICE_TYPES: Set[str] = {'cuda'}

#: The block rewrites in use (see the module docstring); set them with :func:`block_options`.
OPTIONS: Dict[str, bool] = dict(algebraic_mixer=False, fold_norm2=False)


def wanted(device_type: str) -> bool:
    """Whether backbones whose weights live on ``device_type`` take this path."""
    return device_type in DEVICE_TYPES


@contextlib.contextmanager
def used_on(*device_types: str) -> Iterator[None]:
    """Within it, backbones take this path on exactly ``device_types``: ``used_on('cpu')`` tests
    it where there is no GPU, ``used_on()`` runs torch's own norms everywhere (what a benchmark
    compares against). The previous set is restored on exit."""
    saved = set(DEVICE_TYPES)
    DEVICE_TYPES.clear()
    DEVICE_TYPES.update(device_types)
    try:
        yield
    finally:
        DEVICE_TYPES.clear()
        DEVICE_TYPES.update(saved)


@contextlib.contextmanager
def block_options(**options: bool) -> Iterator[None]:
    """Within it, the PoolFormer blocks use the given rewrites (``algebraic_mixer``,
    ``fold_norm2``: the module docstring); the previous options are restored on exit.

    Raises:
        ValueError: An unknown option name.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f'unknown block option(s) {unknown}; choose from {sorted(OPTIONS)}')
    saved = dict(OPTIONS)
    OPTIONS.update({k: bool(v) for k, v in options.items()})
    try:
        yield
    finally:
        OPTIONS.update(saved)


def stage_supported(stage: nn.Module) -> bool:
    """Stages of channels-first MetaFormer blocks with a ``GroupNorm(1, C)`` block norm."""
    return (isinstance(stage, MetaFormerStage) and stage.use_nchw
            and any(isinstance(b, MetaFormerBlock)
                    and (is_group_norm1(b.norm1) or is_group_norm1(b.norm2)) for b in stage.blocks))


def stage_forward(stage: MetaFormerStage, x: torch.Tensor) -> torch.Tensor:
    """``stage(x)`` with every block through :func:`block_forward` (gradient checkpointing per
    block when the stage has it on, as timm's ``checkpoint_seq`` does)."""
    x = stage.downsample(x)
    cp = stage.grad_checkpointing and torch.is_grad_enabled()
    for block in stage.blocks:
        x = checkpoint(block_forward, block, x, use_reentrant=False) if cp \
            else block_forward(block, x)
    return x


def block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``MetaFormerBlock.forward`` with its ``GroupNorm(1, C)`` norms through
    :func:`~metaformer_dense.group_norm.group_norm1` (other blocks: ``block(x)``)."""
    if not isinstance(block, MetaFormerBlock):
        return block(x)
    if OPTIONS['algebraic_mixer'] and _algebraic_mixer_applies(block):
        x = _algebraic_mixer_half(block, x)
    else:
        x = block.res_scale1(x) + block.layer_scale1(
            block.drop_path1(call_mixer(block, norm_forward(block.norm1, x))))
    if OPTIONS['fold_norm2'] and _fold_applies(block):
        branch = _mlp_after_fc1(block.mlp, _folded_fc1(block.norm2, block.mlp.fc1, x))
    else:
        branch = block.mlp(norm_forward(block.norm2, x))
    return block.res_scale2(x) + block.layer_scale2(block.drop_path2(branch))


# ----------------------------------------------------------------------------------------------
# The block rewrites (block_options)
# ----------------------------------------------------------------------------------------------
def _stats(x: torch.Tensor, eps: float):
    """Differentiable per-sample (mean, rstd) over (C, H, W) in at least float32, (N, 1, 1, 1)."""
    xa = x.to(torch.promote_types(x.dtype, torch.float32))
    var, mean = torch.var_mean(xa, dim=(1, 2, 3), correction=0, keepdim=True)
    return mean, torch.rsqrt(var + eps)


def _norm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``F.group_norm(x, ...)`` returns (float32 under CUDA autocast)."""
    if x.device.type == 'cuda' and torch.is_autocast_enabled('cuda'):
        return torch.promote_types(x.dtype, torch.float32)
    return x.dtype


def _algebraic_mixer_applies(block: MetaFormerBlock) -> bool:
    mixer = block.token_mixer
    return (isinstance(mixer, Pooling) and isinstance(mixer.pool, nn.AvgPool2d)
            and not mixer.pool.count_include_pad and is_group_norm1(block.norm1)
            and isinstance(block.layer_scale1, (Scale, nn.Identity)))


def _algebraic_mixer_half(block: MetaFormerBlock, x: torch.Tensor) -> torch.Tensor:
    """``res_scale1(x) + layer_scale1(drop_path1(pool(n(x)) - n(x)))`` as
    ``res_scale1(x) + drop_path1(layer_scale1 * weight * rstd * (pool(x) - x))``."""
    norm = block.norm1
    _, rstd = _stats(x, norm.eps)
    coef = rstd
    for per_channel in (norm.weight, getattr(block.layer_scale1, 'scale', None)):
        if per_channel is not None:
            coef = coef * per_channel.to(rstd.dtype).view(1, -1, 1, 1)
    if norm.bias is not None:  # it cancels; autograd still gives it its (zero) gradient
        coef = coef + (norm.bias - norm.bias).to(rstd.dtype).view(1, -1, 1, 1)
    xa = x.to(rstd.dtype)
    branch = ((block.token_mixer.pool(xa) - xa) * coef).to(_norm_dtype(x))
    return block.res_scale1(x) + block.drop_path1(branch)


def _fold_applies(block: MetaFormerBlock) -> bool:
    mlp, fc1 = block.mlp, getattr(block.mlp, 'fc1', None)
    return (is_group_norm1(block.norm2) and isinstance(fc1, nn.Conv2d)
            and fc1.kernel_size == (1, 1) and fc1.stride == (1, 1) and fc1.padding == (0, 0)
            and fc1.groups == 1 and fc1.dilation == (1, 1)
            and all(hasattr(mlp, n) for n in ('act', 'drop1', 'norm', 'fc2', 'drop2')))


def _folded_fc1(norm: nn.GroupNorm, fc1: nn.Conv2d, y: torch.Tensor) -> torch.Tensor:
    """``fc1(norm(y))`` as one grouped 1x1 convolution of ``y`` with per-sample weights."""
    n, c, h, w = y.shape
    mean, rstd = _stats(y, norm.eps)
    acc = rstd.dtype
    weight = fc1.weight.to(acc).view(fc1.out_channels, c)  # (hidden, C)
    if norm.weight is not None:
        weight = weight * norm.weight.to(acc).view(1, c)
    r, mu = rstd.view(n, 1, 1), mean.view(n, 1, 1)
    w_n = (r * weight).reshape(n * fc1.out_channels, c, 1, 1)
    const = torch.zeros(fc1.out_channels, dtype=acc, device=y.device)
    if fc1.bias is not None:
        const = const + fc1.bias.to(acc)
    if norm.bias is not None:
        const = const + fc1.weight.to(acc).view(fc1.out_channels, c) @ norm.bias.to(acc)
    b_n = (const - (r * mu).view(n, 1) * weight.sum(1)).reshape(-1)
    dtype = torch.promote_types(_norm_dtype(y), fc1.weight.dtype)
    out = F.conv2d(y.to(dtype).reshape(1, n * c, h, w), w_n.to(fc1.weight.dtype),
                   b_n.to(fc1.weight.dtype), groups=n)
    return out.view(n, fc1.out_channels, h, w)


def _mlp_after_fc1(mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The rest of timm's ``Mlp.forward`` after ``fc1``."""
    return mlp.drop2(mlp.fc2(mlp.norm(mlp.drop1(mlp.act(h)))))
