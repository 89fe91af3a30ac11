"""Registers the MetaFormer backbone with mmseg: ``backbone=dict(type='MetaFormer', arch=...)``.

Configs load it with ``custom_imports = dict(imports=['mmseg_plugin'])``. Needs mmseg only.
"""
from mmseg.registry import MODELS

from metaformer_dense import MetaFormerBackbone, allow_runner_checkpoints

MODELS.register_module('MetaFormer', module=MetaFormerBackbone)
allow_runner_checkpoints()  # so `--resume` works on torch >= 2.6 without unsafe unpickling

__all__ = ['MetaFormerBackbone']
