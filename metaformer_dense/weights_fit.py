"""Whether a state dict fits a backbone's architecture: :func:`fit_weights` and its answer.

Loading pretrained weights, whole-model loading, :func:`~metaformer_dense.backbone.find_arch`
and ``tools/convert_checkpoint.py`` all ask :func:`fit_weights`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping

import torch

from .checkpoint import ConversionResult, convert_state_dict
from .errors import CheckpointError

__all__ = ['WeightsFit', 'fit_weights']


@dataclass
class WeightsFit:
    """How backbone weights fit a backbone (``MetaFormerBackbone.fit_weights`` judges).

    Attributes:
        conversion: The weights under this toolkit's key names, and what was renamed or dropped.
        missing: Keys of the backbone that the weights lack.
        unexpected: Keys of the weights that the backbone does not have.
        problem: Why the weights do not fit (a sentence naming keys, shapes and depths), or ''.
    """
    conversion: ConversionResult
    missing: List[str]
    unexpected: List[str]
    problem: str = ''

    @property
    def fits(self) -> bool:
        """Whether the weights are this architecture's."""
        return not self.problem

    def check(self, what: str) -> None:
        """Unless the weights fit, raise :class:`CheckpointError`: ``what`` (e.g. ``"checkpoint
        'x.pth'"``) followed by the problem."""
        if self.problem:
            raise CheckpointError(f'{what} {self.problem}')


def fit_weights(model, state_dict: Mapping[str, torch.Tensor]) -> WeightsFit:
    """Do these backbone weights (any supported layout) fit this backbone's architecture?

    The one answer to that question: loading pretrained weights, ``find_arch`` and
    ``tools/convert_checkpoint.py`` all ask it here. The weights fit when every shape
    matches, every weight of the stem and built stages is there (the output norms may be
    missing: ImageNet checkpoints have none), and the stem and built stages have no extra
    weights (those mean a deeper arch, e.g. S24 weights for S12). Weights of stages that
    ``out_indices`` leave unbuilt, and keys outside the backbone's modules, are unexpected
    but fit.

    Args:
        model: A :class:`~metaformer_dense.MetaFormerBackbone`.
        state_dict: Backbone weights without a ``backbone.`` or ``module.`` prefix.

    Returns:
        The converted weights, the missing and unexpected keys, and the problem if any.

    Raises:
        CheckpointError: Not a MetaFormer layout, or integer weights where floats belong.
    """
    own = model.state_dict()
    conv = convert_state_dict(state_dict, reference=own)
    sd = conv.state_dict
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    fit = WeightsFit(conv, missing, unexpected)
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    # Output norms (ImageNet checkpoints have none) and registry-built token mixers (no released
    # checkpoint has them) may be missing.
    fresh = ('out_norms.',) + tuple(model.mixer_prefixes)
    body_missing = [k for k in missing if not k.startswith(fresh)]
    built = ('stem.',) + tuple(f'stages.{i}.' for i in range(len(model.stages)))
    extra = [k for k in unexpected if k.startswith(built)]
    if shapes:
        lines = '; '.join(f'{k}: checkpoint {s} vs model {m}' for k, s, m in shapes[:3])
        fit.problem = (f'does not fit {model.arch}: {len(shapes)} shape mismatches ({lines}); '
                       f'{_describe(model, sd)}')
    elif body_missing:
        fit.problem = (f'lacks {len(body_missing)} backbone weights of {model.arch} '
                       f'(first: {body_missing[:3]}); {_describe(model, sd)}')
    elif extra:
        fit.problem = (f'has {len(extra)} weights {model.arch} does not have '
                       f'(first: {extra[:3]}); {_describe(model, sd)}')
    return fit


def _describe(model, sd: Dict[str, torch.Tensor]) -> str:
    depths = []
    for i in range(4):
        blocks = {k.split('.')[3] for k in sd if k.startswith(f'stages.{i}.blocks.')}
        depths.append(len(blocks))
    dims = sd['stem.conv.weight'].shape[0] if 'stem.conv.weight' in sd else '?'
    return (f'the checkpoint has stage depths {tuple(depths)} and stem width {dims}; '
            f'{model.arch} has depths {model.depths} and widths {model.dims}: '
            'is it a checkpoint for another arch?')

