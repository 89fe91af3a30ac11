"""Whether a state dict fits a backbone's architecture, and which architecture a state dict is.

Loading pretrained weights, whole-model loading, :func:`find_arch` and
``tools/convert_checkpoint.py`` all ask :func:`fit_weights`.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch

from .checkpoint import CheckpointError, WeightsFit, convert_state_dict


def fit_weights(model, state_dict: Mapping[str, torch.Tensor]) -> WeightsFit:
    """Do these backbone weights (any supported layout) fit this backbone's architecture?

    The one answer to that question: loading pretrained weights, :func:`find_arch` and
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
    body_missing = [k for k in missing if not k.startswith('out_norms.')]
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


def find_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the timm MetaFormer architecture whose weights ``state_dict`` holds exactly.

    Args:
        state_dict: Backbone weights in any supported layout, without a ``backbone.`` prefix.

    Raises:
        CheckpointError: No architecture fits exactly (or the weights are not a MetaFormer's).
    """
    plain = convert_state_dict(state_dict).state_dict
    if any('.token_mixer.qkv.' in k for k in plain):
        family = 'caformer_'
    elif any('.token_mixer.pwconv1.' in k for k in plain):
        family = 'convformer_'
    else:
        fc1 = plain.get('stages.0.blocks.0.mlp.fc1.weight')
        family = 'poolformer_' if fc1 is not None and fc1.ndim == 4 else 'poolformerv2_'
    from .backbone import ARCHS, MetaFormerBackbone  # the backbone imports this module
    for arch in (a for a in ARCHS if a.startswith(family)):
        with torch.device('meta'):  # shapes and dtypes only, no memory
            candidate = MetaFormerBackbone(arch)
        fit = candidate.fit_weights(state_dict)
        if fit.fits and not fit.unexpected:
            return arch
    raise CheckpointError(
        f'no {family}* architecture fits these weights exactly; pass --arch to see which '
        'keys or shapes differ')
