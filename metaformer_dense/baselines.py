"""IdentityFormer and RandFormer ("MetaFormer Baselines for Vision", Yu et al., TPAMI 2024).

timm ships PoolFormerV2, ConvFormer and CAFormer from that paper but not its two baselines.
They are built here from timm's own ``MetaFormer`` (stem, stages, blocks, StarReLU MLP, scales):

* **IdentityFormer**: the token mixer is the identity; block norms are ``GroupNorm(1, C)``
  without bias (timm's ``GroupNorm1NoBias``, eps 1e-6: the paper's ``LayerNormGeneral`` over
  (H, W, C)); stem and downsampling norms are bias-free per-pixel LayerNorms (eps 1e-6); the
  MLP is ``Linear -> StarReLU -> Linear`` without biases (ratio 4); res-scale in stages 3-4,
  no layer scale. Depths and widths are PoolFormer v1's S12 ... M48.
* **RandFormer**: IdentityFormer with :class:`RandomMixing` in stages 3 and 4: a frozen
  ``softmax(rand(N, N), -1)`` matrix mixing the N = 196 (stage 3) or 49 (stage 4) tokens of a
  224x224 image.

Parameter and state-dict names are timm's for the shared modules and the official release's
``token_mixer.random_matrix`` for the mixing matrices, so the official checkpoints
(``downsample_layers.N.*``, ``stages.i.j.*``) convert with the other MetaFormer-baselines
releases in :mod:`metaformer_dense.checkpoint`.

At other input sizes RandomMixing mixes within non-overlapping windows of the 14x14 / 7x7 grid
it was trained on; see :class:`RandomMixing` and docs/metaformer_mixers.md.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from timm.models.metaformer import (GroupNorm1NoBias, LayerNorm2dNoBias, MetaFormer, StarReLU)
from torch import nn

__all__ = ['BASELINE_ARCHS', 'BASELINE_SIZES', 'RandomMixing', 'build_baseline',
           'is_baseline']

#: Depths and widths per size (PoolFormer v1's).
BASELINE_SIZES: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    's12': ((2, 2, 6, 2), (64, 128, 320, 512)),
    's24': ((4, 4, 12, 4), (64, 128, 320, 512)),
    's36': ((6, 6, 18, 6), (64, 128, 320, 512)),
    'm36': ((6, 6, 18, 6), (96, 192, 384, 768)),
    'm48': ((8, 8, 24, 8), (96, 192, 384, 768)),
}
#: ``identityformer_s12`` ... ``randformer_m48``.
BASELINE_ARCHS: Tuple[str, ...] = tuple(f'{family}_{size}' for family in
                                        ('identityformer', 'randformer') for size in BASELINE_SIZES)
# Tokens per side RandomMixing was trained on, per stage (224 / 16 and 224 / 32); None: identity.
_RANDOM_MIXING_SIDE = (None, None, 14, 7)


def is_baseline(arch: str) -> bool:
    """Whether ``arch`` is one of :data:`BASELINE_ARCHS`."""
    return arch in BASELINE_ARCHS


class RandomMixing(nn.Module):
    """RandFormer's token mixer: a frozen random row-stochastic matrix over a window of tokens.

    The matrix (``random_matrix``, ``(side**2, side**2)``, ``softmax(rand, -1)`` at
    initialisation, never trained) mixes the tokens of a ``side x side`` window in row-major
    order, as the paper mixes all 14x14 (or 7x7) tokens of a 224x224 image. A grid of another
    size is cut into non-overlapping ``side x side`` windows from its top-left corner. Border
    windows that the grid does not fill are mixed among their real tokens only: each row's
    weights are restricted to the real tokens and renormalised to sum to one, which is the
    softmax of the same random logits over the tokens that exist. Padding therefore never reaches
    a real token, and a full window (all of a 224x224 image's grid) is mixed exactly as the paper
    mixes it.

    Args:
        dim: Channels (unused: the matrix mixes tokens, the same for every channel).
        side: Tokens per window side (14 in stage 3, 7 in stage 4).
    """

    def __init__(self, dim: int = 0, side: int = 14, **kwargs):
        super().__init__()
        if not isinstance(side, int) or side < 1:
            raise ValueError(f'RandomMixing side must be a positive int, got {side!r}')
        self.side = side
        n = side * side
        self.random_matrix = nn.Parameter(torch.softmax(torch.rand(n, n), dim=-1),
                                          requires_grad=False)

    def extra_repr(self) -> str:
        return f'side={self.side}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix ``x`` (``(B, C, H, W)``, any memory format) within windows; same shape out."""
        b, c, h, w = x.shape
        s = self.side
        m = self.random_matrix.to(x.dtype)
        ph, pw = (s - h % s) % s, (s - w % s) % s
        # No branch on the size: tracers and exporters record one graph for every size.
        x = F.pad(x, (0, pw, 0, ph))  # zeros: they add nothing to any weighted sum
        nh, nw = (h + ph) // s, (w + pw) // s
        # (B, C, nh, s, nw, s) -> (B, nh, nw, s*s, C): one row-major token list per window
        t = x.reshape(b, c, nh, s, nw, s).permute(0, 2, 4, 3, 5, 1).reshape(b, nh, nw, s * s, c)
        out = torch.einsum('mn,bijnc->bijmc', m, t)
        # Each row's weight on the real tokens of its window; exactly 1 where the window is full,
        # so full windows (all of a 224x224 image's grid) are the plain product.
        real = F.pad(x.new_ones(1, 1, h, w), (0, pw, 0, ph))
        real = real.reshape(nh, s, nw, s).permute(0, 2, 1, 3).reshape(nh, nw, s * s)
        mass = torch.einsum('mn,ijn->ijm', m, real)
        full = real.amin(-1, keepdim=True) == 1
        out = out / torch.where(full, torch.ones_like(mass), mass).unsqueeze(-1)
        out = out.reshape(b, nh, nw, s, s, c).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c, nh * s, nw * s)[:, :, :h, :w]

def build_baseline(arch: str, in_chans: int = 3, num_classes: int = 0,
                   drop_path_rate: float = 0.0) -> MetaFormer:
    """timm's ``MetaFormer`` configured as IdentityFormer or RandFormer.

    Args:
        arch: One of :data:`BASELINE_ARCHS`.
        in_chans: Input image channels.
        num_classes: Classifier classes (0: no classifier; the paper's head is one ``Linear``
            after a LayerNorm, which is what counts toward the published parameter numbers).
        drop_path_rate: Stochastic depth rate (timm's linear rule).

    Raises:
        ValueError: ``arch`` is not a baseline arch.
    """
    if not is_baseline(arch):
        raise ValueError(f'{arch!r} is not one of {", ".join(BASELINE_ARCHS)}')
    family, size = arch.split('_')
    depths, dims = BASELINE_SIZES[size]
    body = MetaFormer(
        in_chans=in_chans, num_classes=num_classes, depths=depths, dims=dims,
        token_mixers=nn.Identity, norm_layers=GroupNorm1NoBias, mlp_act=StarReLU,
        mlp_bias=False, layer_scale_init_values=None, res_scale_init_values=(None, None, 1.0, 1.0),
        downsample_norm=LayerNorm2dNoBias, use_mlp_head=False, drop_path_rate=drop_path_rate)
    if family == 'randformer':
        for stage, side in zip(body.stages, _RANDOM_MIXING_SIDE):
            if side is not None:
                for block in stage.blocks:
                    block.token_mixer = RandomMixing(side=side)
    return body
