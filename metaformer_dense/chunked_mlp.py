"""The MLP of a timm MetaFormer block as matrix products on ``(N*H*W, C)`` row chunks.

In channels-last memory a ``(N, C, H, W)`` tensor is a ``(N*H*W, C)`` matrix and the block's
1x1 convolutions ``fc1`` / ``fc2`` are matrix products. :func:`mlp_forward_chunks` and
:func:`mlp_backward_chunks` run ``fc2(act(fc1(y)))`` and its backward one chunk of rows at a
time, so the 4x wider hidden activation stays in cache; the helpers around them read timm's
modules (scales, activations, weights) as the plain tensors those products take. Shared by the
CPU path (:mod:`metaformer_dense.fast_path`) and the memory-lean training blocks
(:mod:`metaformer_dense.lean_training`); torch and timm only.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.models.metaformer import MetaFormerBlock, Scale, StarReLU

__all__ = ['CHUNK_BYTES', 'supported_block', 'chunk_rows', 'scale_of', 'as_matrix', 'mlp_weights',
           'act_spec', 'act_forward', 'residual_', 'mlp_forward_chunks', 'mlp_backward_chunks']

#: Bytes of hidden activation per MLP chunk: rows x hidden floats, sized to stay in cache.
CHUNK_BYTES = 4 << 20


def supported_block(block: nn.Module) -> bool:
    """Whether ``block`` is a timm ``MetaFormerBlock`` whose MLP these functions can run: 1x1
    ``fc1`` / ``fc2`` convolutions, no MLP norm, ``Scale`` or identity layer / residual scales."""
    if not isinstance(block, MetaFormerBlock):
        return False
    mlp = block.mlp
    convs = (getattr(mlp, 'fc1', None), getattr(mlp, 'fc2', None))
    return (all(isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.groups == 1
                and c.stride == (1, 1) and c.padding == (0, 0) for c in convs)
            and isinstance(getattr(mlp, 'norm', None), nn.Identity)
            and all(isinstance(m, (Scale, nn.Identity)) for m in (
                block.layer_scale1, block.layer_scale2, block.res_scale1, block.res_scale2)))


def chunk_rows(hidden: int) -> int:
    """Rows per chunk for a ``hidden``-wide activation: about :data:`CHUNK_BYTES` of it."""
    return max(64, CHUNK_BYTES // (4 * hidden))


def scale_of(module: nn.Module) -> Optional[torch.Tensor]:
    """Per-channel factor of a timm ``Scale`` (None for ``Identity``)."""
    return module.scale if isinstance(module, Scale) else None


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` channels-last tensor as its ``(N*H*W, C)`` matrix (a view: writes land
    in ``t``; raises if ``t`` is not channels-last contiguous)."""
    return t.permute(0, 2, 3, 1).view(-1, t.shape[1])


def mlp_weights(mlp: nn.Module):
    """``fc1``/``fc2`` weights as ``(hidden, C)`` / ``(C, hidden)`` matrices (views)."""
    w1 = mlp.fc1.weight.reshape(mlp.fc1.out_channels, mlp.fc1.in_channels)
    w2 = mlp.fc2.weight.reshape(mlp.fc2.out_channels, mlp.fc2.in_channels)
    return w1, w2


def act_spec(act: nn.Module) -> Optional[Tuple[Tuple, Optional[torch.Tensor],
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


def act_forward(kind: Tuple, a: torch.Tensor, star_scale: Optional[torch.Tensor],
                star_bias: Optional[torch.Tensor], inplace: bool = False) -> torch.Tensor:
    """The activation of :func:`act_spec`'s ``kind`` on a chunk (``inplace``: may reuse ``a``)."""
    if kind[0] == 'gelu':
        return F.gelu(a, approximate=kind[1])
    r = a.relu_() if inplace else a.relu()
    return r.square_().mul_(star_scale).add_(star_bias)


def residual_(x: torch.Tensor, res_scale: Optional[torch.Tensor],
              layer_scale: Optional[torch.Tensor], branch: torch.Tensor) -> None:
    """``x = res_scale * x + layer_scale * branch``, in place; scales run along x's last dim."""
    if res_scale is not None:
        x.mul_(res_scale)
    if layer_scale is not None:
        x.addcmul_(branch, layer_scale)
    else:
        x.add_(branch)


def mlp_forward_chunks(y, w1, b1, w2, b2, act: Tuple, star_scale, star_bias, rows: int):
    """``fc2(act(fc1(y)))`` on a ``(M, C)`` matrix, ``rows`` rows at a time.

    Returns ``(pre, out)``: fc1's output (what backward keeps) and the MLP's output.
    """
    m, hidden = y.shape[0], w1.shape[0]
    pre = y.new_empty(m, hidden)
    out = y.new_empty(m, w2.shape[0])
    for s in range(0, m, rows):
        a = pre[s:s + rows]
        if b1 is not None:
            torch.addmm(b1, y[s:s + rows], w1.t(), out=a)
        else:
            torch.mm(y[s:s + rows], w1.t(), out=a)
        g = act_forward(act, a, star_scale, star_bias)
        if b2 is not None:
            torch.addmm(b2, g, w2.t(), out=out[s:s + rows])
        else:
            torch.mm(g, w2.t(), out=out[s:s + rows])
    return pre, out


def mlp_backward_chunks(y, pre, d, w1, w2, act: Tuple, star_scale, star_bias, rows: int,
                        need_e: bool, need_w1: bool, need_b1: bool, need_ss: bool,
                        need_sb: bool, need_y: bool):
    """Backward of ``d = dL/d fc2(act(fc1(y)))`` over ``(M, C)`` row chunks (any device).

    ``pre`` is fc1's output; ``w2`` is the matrix ``d`` is multiplied back through (fc2's weight,
    or fc2's weight times a layer scale). Returns ``(e, dw1, db1, dss, dsb, dy)`` where
    ``e = d^T act(pre)`` (fc2's weight gradient for an unscaled ``w2``), each None unless asked
    for; ``dss`` / ``dsb`` (StarReLU scale / bias) are float64 sums.
    """
    e = torch.zeros_like(w2) if need_e else None
    dw1 = torch.zeros_like(w1) if need_w1 else None
    db1 = w1.new_zeros(w1.shape[0]) if need_b1 else None
    dss = torch.zeros((), dtype=torch.float64, device=y.device) if need_ss else None
    dsb = torch.zeros((), dtype=torch.float64, device=y.device) if need_sb else None
    dy = torch.empty_like(y) if need_y else None
    for s in range(0, y.shape[0], rows):
        a, dc = pre[s:s + rows], d[s:s + rows]
        if e is not None:
            e.addmm_(dc.t(), act_forward(act, a, star_scale, star_bias))
        dg = torch.mm(dc, w2)
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
    return e, dw1, db1, dss, dsb, dy
