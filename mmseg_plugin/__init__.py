"""Registers the MetaFormer backbone with mmseg: ``backbone=dict(type='MetaFormer', arch=...)``.

Also registers the layer-wise lr decay constructor (``MetaFormerLayerDecayConstructor``) and the
configs' visualizer (``ContiguousSegLocalVisualizer``, :mod:`mmseg_plugin.visualizer`).

Configs load it with ``custom_imports = dict(imports=['mmseg_plugin'])``. Needs mmseg only.
"""
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from metaformer_dense import MetaFormerBackbone, MetaFormerLayerDecayConstructor
from metaformer_dense.mmengine_setup import setup_mmengine

from .visualizer import ContiguousSegLocalVisualizer

MODELS.register_module('MetaFormer', module=MetaFormerBackbone)
OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=MetaFormerLayerDecayConstructor)
setup_mmengine()  # safe --resume on torch >= 2.6; URL / hf-hub: checkpoints read safely

__all__ = ['MetaFormerBackbone', 'ContiguousSegLocalVisualizer']
