"""Registers the MetaFormer backbone with mmseg: ``backbone=dict(type='MetaFormer', arch=...)``.

Configs load it with ``custom_imports = dict(imports=['mmseg_plugin'])``. Needs mmseg only.
"""
from mmseg.registry import MODELS

from metaformer_dense import MetaFormerBackbone, allow_runner_checkpoints
from metaformer_dense.download import register_url_loaders

MODELS.register_module('MetaFormer', module=MetaFormerBackbone)
allow_runner_checkpoints()  # so `--resume` works on torch >= 2.6 without unsafe unpickling
register_url_loaders()  # URL / hf-hub: checkpoints: cached, verified, read safely

__all__ = ['MetaFormerBackbone']
