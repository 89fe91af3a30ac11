"""Registers the MetaFormer backbone with mmseg: ``backbone=dict(type='MetaFormer', arch=...)``.

Also registers the layer-wise lr decay constructor (``MetaFormerLayerDecayConstructor``).

Configs load it with ``custom_imports = dict(imports=['mmseg_plugin'])``. Needs mmseg only.
"""
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from metaformer_dense import (MetaFormerBackbone, MetaFormerLayerDecayConstructor,
                              allow_runner_checkpoints)
from metaformer_dense.download import register_url_loaders

MODELS.register_module('MetaFormer', module=MetaFormerBackbone)
OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=MetaFormerLayerDecayConstructor)
allow_runner_checkpoints()  # so `--resume` works on torch >= 2.6 without unsafe unpickling
register_url_loaders()  # URL / hf-hub: checkpoints: cached, verified, read safely

__all__ = ['MetaFormerBackbone']
