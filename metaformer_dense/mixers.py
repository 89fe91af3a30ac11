"""Token mixers from mmengine's registry in a MetaFormer arch (the backbone's ``token_mixers``).

``MetaFormerBackbone(arch='poolformer_s12', token_mixers=dict(type='MyMixer', ...))`` keeps the
arch's depths, widths, norms, MLPs and scales and puts ``MyMixer`` in every block; a list of four
entries gives one per stage (``None`` keeps the arch's own mixer there). Each mixer is built by
``mmengine.registry.MODELS`` with ``dim`` (the stage's channels) as a default argument, so a
class registered in mmdet's or mmseg's ``MODELS`` (children of mmengine's) is found under the
runner's default scope, and a user file listed in ``custom_imports`` is enough.

A mixer takes and returns ``(N, C, H, W)`` tensors of the same shape. Blocks with such a mixer
check the shape on every call: a wrong one raises :class:`MixerShapeError` (the backbone names
the stage), instead of broadcasting silently into the residual.

The CPU fast path (:mod:`metaformer_dense.fast_path`) calls any mixer as a black box and is valid
for all of them; the memory-lean blocks (:mod:`metaformer_dense.lean_training`) recompute the
mixer in backward and run only the mixers :func:`recomputable` knows (a mixer with dropout,
batch statistics or other state would give different results the second time).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from timm.models.metaformer import Attention, MetaFormerBlock, Pooling, SepConv
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from .baselines import RandomMixing

__all__ = ['MixerShapeError', 'MixerCheckedBlock', 'call_mixer', 'install_mixers',
           'normalise_mixer_cfgs', 'recomputable']

MixerCfg = Union[dict, None]


class MixerShapeError(ValueError):
    """A token mixer returned a tensor of another shape than its input."""


def call_mixer(block: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``block.token_mixer(y)``; for a :class:`MixerCheckedBlock`, its output shape checked.

    Raises:
        MixerShapeError: The output's shape differs from ``y``'s.
    """
    t = block.token_mixer(y)
    if isinstance(block, MixerCheckedBlock) and not is_fx_symbolic_tracing() \
            and (not isinstance(t, torch.Tensor) or t.shape != y.shape):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise MixerShapeError(
            f'token mixer {type(block.token_mixer).__name__} returned {got} for an input of '
            f'shape {tuple(y.shape)}; a MetaFormer token mixer must return a tensor of its '
            "input's shape (N, C, H, W)")
    return t


class MixerCheckedBlock(MetaFormerBlock):
    """timm's ``MetaFormerBlock`` with a registry-built mixer whose output shape is checked.

    Same modules, parameters and math; only the forward checks the mixer's output first.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(call_mixer(self, self.norm1(x))))
        return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))


def normalise_mixer_cfgs(token_mixers: Union[MixerCfg, Sequence[MixerCfg]],
                         num_stages: int = 4) -> List[Optional[dict]]:
    """One config (or None: the arch's own mixer) per stage.

    Raises:
        TypeError / ValueError: Not a dict, None, or a list of ``num_stages`` of them.
    """
    if token_mixers is None:
        return [None] * num_stages
    if isinstance(token_mixers, dict):
        cfgs = [token_mixers] * num_stages
    elif isinstance(token_mixers, (list, tuple)):
        if len(token_mixers) != num_stages:
            raise ValueError(f'token_mixers lists one mixer config per stage: {num_stages} '
                             f'entries (None keeps the arch\'s own), got {len(token_mixers)}')
        cfgs = list(token_mixers)
    else:
        raise TypeError("token_mixers must be a config dict (dict(type='MyMixer', ...)), a list "
                        f'of {num_stages} of them (None: the arch\'s own), or None; got '
                        f'{token_mixers!r}')
    for i, cfg in enumerate(cfgs):
        if cfg is not None and (not isinstance(cfg, dict) or 'type' not in cfg):
            raise TypeError(f'token_mixers entry for stage {i} must be a dict with a "type" '
                            f'key (or None), got {cfg!r}')
    return [None if c is None else dict(c) for c in cfgs]


def install_mixers(stages: Sequence[nn.Module], dims: Sequence[int],
                   cfgs: Sequence[Optional[dict]]) -> List[str]:
    """Put a freshly built registry mixer into every block of the stages with a config.

    Args:
        stages: timm ``MetaFormerStage`` s, in order (``stages[i]`` gets ``cfgs[i]``).
        dims: Channels of each stage.
        cfgs: From :func:`normalise_mixer_cfgs`.

    Returns:
        Module-name prefixes (``'stages.i.blocks.j.token_mixer.'``) of the installed mixers.

    Raises:
        ValueError: A config names no registered class or the class cannot be built; the
            message names the stage.
    """
    from mmengine.registry import MODELS
    prefixes = []
    for i, (stage, dim, cfg) in enumerate(zip(stages, dims, cfgs)):
        if cfg is None:
            continue
        if not stage.use_nchw:
            raise ValueError(f'stage {i} of this arch runs attention on token sequences; a '
                             'registry token mixer there is not supported: give None for it')
        for j, block in enumerate(stage.blocks):
            try:
                mixer = MODELS.build(cfg, default_args=dict(dim=dim))
            except KeyError as exc:
                if 'is not in the' not in str(exc):  # raised by the mixer's own code
                    raise
                raise ValueError(
                    f'token_mixers for stage {i}: {exc.args[0]} Register the class with '
                    '@MODELS.register_module() (mmengine.registry, mmdet.registry or '
                    "mmseg.registry) and list its file in the config's custom_imports") from None
            except TypeError as exc:
                raise TypeError(f'token_mixers for stage {i}: building {cfg["type"]!r} with '
                                f'dim={dim} and {sorted(set(cfg) - {"type"})} failed ({exc}); a '
                                "mixer's __init__ takes dim (the stage's channels)") from exc
            if not isinstance(mixer, nn.Module):
                raise TypeError(f'token_mixers for stage {i} built a {type(mixer).__name__}, '
                                'not an nn.Module')
            block.token_mixer = mixer
            block.__class__ = MixerCheckedBlock  # same state; the forward checks the mixer
            prefixes.append(f'stages.{i}.blocks.{j}.token_mixer.')
    return prefixes


def recomputable(mixer: nn.Module) -> bool:
    """Whether running ``mixer`` again on the same input gives the same output and leaves no
    trace: the mixers of the toolkit's archs (timm's pooling and separable convolution without
    dropout, the identity, RandFormer's random mixing). Registry mixers are not assumed to be."""
    if type(mixer) in (Pooling, nn.Identity, RandomMixing):
        return True
    if type(mixer) is SepConv:
        return True  # convolutions and StarReLU only
    if type(mixer) is Attention:
        return mixer.attn_drop.p == 0 and mixer.proj_drop.p == 0
    return False
