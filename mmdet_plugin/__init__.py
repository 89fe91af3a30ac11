"""Registers the MetaFormer backbone with mmdet: ``backbone=dict(type='MetaFormer', arch=...)``.

Also registers the layer-wise lr decay constructor (``MetaFormerLayerDecayConstructor``) and
``InstanceSegTTAModel`` (``tools/test.py --tta`` for Mask R-CNN-type configs).

Configs load it with ``custom_imports = dict(imports=['mmdet_plugin'])``. Needs mmdet only.
"""
from mmdet.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from metaformer_dense import MetaFormerBackbone, MetaFormerLayerDecayConstructor
from metaformer_dense.mmengine_setup import setup_mmengine

from . import tta  # noqa: F401  (registers InstanceSegTTAModel)
from .focal_loss import FocalLossFP32

MODELS.register_module('MetaFormer', module=MetaFormerBackbone)
OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=MetaFormerLayerDecayConstructor)
setup_mmengine()  # safe --resume on torch >= 2.6; URL / hf-hub: checkpoints read safely

__all__ = ['MetaFormerBackbone', 'FocalLossFP32']
