"""Layer-wise learning-rate decay for detectors and segmentors with a MetaFormer backbone.

Fine-tuning recipes of the ConvNeXt model zoo (Mask R-CNN / Cascade Mask R-CNN 3x) train the early
backbone layers at a smaller learning rate than the later ones: layer ``i`` of ``L`` gets
``lr * decay_rate ** (L + 1 - i)``, so the stem learns slowest and everything after the backbone
(neck, heads) at the full rate. mmdet's ``LearningRateDecayOptimizerConstructor`` knows only
ConvNeXt's parameter names; this constructor applies the same rule to the MetaFormer backbone's
names (``stem.*``, ``stages.N.downsample.*``, ``stages.N.blocks.M.*``, ``out_norms.N.*``).

Which layer a parameter belongs to (``decay_type``):

* ``'layer_wise'`` (default), ConvNeXt's grouping, so that the zoo's decay rates mean the same
  thing: the stem is layer 0, stage 0 layer 1, stage 1 (with its downsampling) layer 2, the blocks
  of stage 2 in groups of three layers 3, 4, ... (its downsampling with the first group), and
  stage 3 (with its downsampling) the last layer ``L = 4 + (depth_2 - 1) // 3``. ConvFormer-S18
  (depths 3-3-9-3, as ConvNeXt-T) has ``L = 6``, the ``num_layers`` of mmdet's ConvNeXt-T configs;
  36-block MetaFormers have ``L = 9``.
* ``'stage_wise'``: the stem is layer 0 and stage ``N`` layer ``N + 1`` (``L = 4``).

The output norms (``out_norms``) are not in ImageNet checkpoints: they start fresh and train at
the full rate with the neck, as mmdet's rule does for ConvNeXt's output norms. Weight decay: none
for biases and 1-D parameters (norm weights, layer scales, StarReLU's scale and bias), the
configured ``weight_decay`` for the rest, as in mmdet's constructor. Frozen parameters are left out.

Usage (registered as ``'MetaFormerLayerDecayConstructor'`` by ``mmdet_plugin`` and ``mmseg_plugin``)::

    optim_wrapper = dict(
        type='OptimWrapper',
        constructor='MetaFormerLayerDecayConstructor',
        paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise'),
        optimizer=dict(type='AdamW', lr=2e-4, weight_decay=0.05))

Needs mmengine only.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from .backbone import MetaFormerBackbone

__all__ = ['MetaFormerLayerDecayConstructor', 'num_decay_layers', 'layer_id']

DECAY_TYPES = ('layer_wise', 'stage_wise')
_PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers')


def num_decay_layers(depths: Sequence[int], decay_type: str = 'layer_wise') -> int:
    """The index ``L`` of the last backbone layer (the stem is layer 0; neck and heads are ``L + 1``).

    Args:
        depths: Blocks per stage of the backbone, e.g. ``(3, 3, 9, 3)``.
        decay_type: ``'layer_wise'`` or ``'stage_wise'``.
    """
    _check_decay_type(decay_type)
    if decay_type == 'stage_wise':
        return 4
    return 4 + (depths[2] - 1) // 3


def layer_id(name: str, depths: Sequence[int], decay_type: str = 'layer_wise') -> int:
    """The layer of one backbone parameter, named as in ``MetaFormerBackbone.named_parameters()``.

    Args:
        name: e.g. ``'stem.conv.weight'``, ``'stages.2.blocks.4.mlp.fc1.weight'``,
            ``'out_norms.1.weight'``.
        depths: Blocks per stage of the backbone.
        decay_type: ``'layer_wise'`` or ``'stage_wise'``.

    Returns:
        0 for the stem, ``num_decay_layers(depths, decay_type) + 1`` for the output norms (and
        for names outside the stem and stages), the rule of the module docstring in between.
    """
    last = num_decay_layers(depths, decay_type)
    parts = name.split('.')
    if parts[0] == 'stem':
        return 0
    if parts[0] != 'stages':
        return last + 1  # out_norms: fresh, trained like the neck
    stage = int(parts[1])
    if decay_type == 'stage_wise':
        return stage + 1
    if stage < 2:
        return stage + 1
    if stage == 3:
        return last
    if parts[2] == 'blocks':
        return 3 + int(parts[3]) // 3
    return 3  # stage 2's downsampling, with its first group of blocks


def _check_decay_type(decay_type: str) -> None:
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"paramwise_cfg.decay_type must be one of {DECAY_TYPES}, got "
                         f"{decay_type!r}")


class MetaFormerLayerDecayConstructor(DefaultOptimWrapperConstructor):
    """Optimizer wrapper constructor with layer-wise lr decay over a MetaFormer backbone.

    Args:
        optim_wrapper_cfg: As for ``DefaultOptimWrapperConstructor``; ``optimizer.lr`` and
            ``optimizer.weight_decay`` are the rates of the neck and heads.
        paramwise_cfg: ``decay_rate`` (in (0, 1], required), ``decay_type`` (``'layer_wise'``
            or ``'stage_wise'``) and optionally ``num_layers``, which must then equal what the
            backbone gives (a check for configs copied from another backbone). Other keys are
            an error: this constructor does not apply mmengine's ``custom_keys`` or ``*_mult``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(_PARAMWISE_KEYS))
        if unknown:
            raise ValueError(
                f'MetaFormerLayerDecayConstructor: unknown paramwise_cfg keys {unknown}; it takes '
                f'{_PARAMWISE_KEYS}. custom_keys / *_mult belong to the default constructor: '
                "drop `constructor='MetaFormerLayerDecayConstructor'` to use them.")
        rate = paramwise_cfg.get('decay_rate')
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError('MetaFormerLayerDecayConstructor needs paramwise_cfg.decay_rate in '
                             f'(0, 1] (1 means no decay), got {rate!r}')
        _check_decay_type(paramwise_cfg.setdefault('decay_type', 'layer_wise'))
        # The parent would validate custom_keys etc.; there are none to validate.
        super().__init__(optim_wrapper_cfg, None)
        self.paramwise_cfg = paramwise_cfg

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        """Append one param group per (layer, with / without weight decay) to ``params``."""
        backbone = getattr(module, 'backbone', None)
        if not isinstance(backbone, MetaFormerBackbone):
            raise ValueError(
                'MetaFormerLayerDecayConstructor needs a model whose `backbone` is the MetaFormer '
                f"backbone (type='MetaFormer'); got {type(backbone).__name__}. For ConvNeXt use "
                "mmdet's LearningRateDecayOptimizerConstructor.")
        cfg = self.paramwise_cfg
        decay_type, rate = cfg['decay_type'], float(cfg['decay_rate'])
        last = num_decay_layers(backbone.depths, decay_type)
        if cfg.get('num_layers') is not None and cfg['num_layers'] != last:
            raise ValueError(
                f'paramwise_cfg.num_layers={cfg["num_layers"]} does not fit {backbone.arch} '
                f'(depths {backbone.depths}), which has {last} {decay_type} layers: set '
                f'num_layers={last} or leave it out (it is derived from the backbone).')
        base_wd = self.base_wd or 0.0
        groups: Dict[Tuple[int, bool], dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith('backbone.'):
                lid = layer_id(name[len('backbone.'):], backbone.depths, decay_type)
            else:
                lid = last + 1
            decay = not (param.ndim <= 1 or name.endswith('.bias'))
            group = groups.get((lid, decay))
            if group is None:
                scale = rate ** (last + 1 - lid)
                group = groups[(lid, decay)] = dict(
                    params=[], lr=self.base_lr * scale, weight_decay=base_wd if decay else 0.0,
                    lr_scale=scale, layer_id=lid)
            group['params'].append(param)
        ordered = [groups[k] for k in sorted(groups)]
        params.extend(ordered)
        lines = [f'  layer {g["layer_id"]:2d}: lr x {g["lr_scale"]:.4g}, weight decay '
                 f'{g["weight_decay"]:g}, {len(g["params"])} tensors' for g in ordered]
        print_log(f'MetaFormerLayerDecayConstructor ({decay_type}, decay_rate {rate:g}, '
                  f'{last + 2} layers: stem 0 ... backbone {last}, neck/heads {last + 1}):\n'
                  + '\n'.join(lines), logger='current')
