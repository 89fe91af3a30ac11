"""Framework-neutral home of the MetaFormer dense backbone and its checkpoint handling.

Depends on torch, timm and mmengine only. ``mmdet_plugin`` and ``mmseg_plugin`` register
:class:`MetaFormerBackbone` with mmdet's and mmseg's model registries as ``type='MetaFormer'``.
"""
from .backbone import ARCHS, MetaFormerBackbone
from .checkpoint import CheckpointError, convert_state_dict, read_checkpoint
from .layer_decay import MetaFormerLayerDecayConstructor
from .safe_globals import allow_runner_checkpoints

__all__ = ['ARCHS', 'MetaFormerBackbone', 'CheckpointError', 'convert_state_dict',
           'read_checkpoint', 'allow_runner_checkpoints', 'MetaFormerLayerDecayConstructor']
__version__ = '0.1.0'
