"""Framework-neutral home of the MetaFormer dense backbone and its checkpoint handling.

The model and its weights only: depends on torch, timm and mmengine (``BaseModule``, logging)
and imports no runner code, no plugin and neither mmdet nor mmseg. ``mmdet_plugin`` and ``mmseg_plugin`` register
:class:`MetaFormerBackbone` with mmdet's and mmseg's model registries as ``type='MetaFormer'``.
"""
from .backbone import ARCHS, MetaFormerBackbone
from .checkpoint import convert_state_dict, read_checkpoint
from .errors import CheckpointError
from .layer_decay import MetaFormerLayerDecayConstructor
from .mmengine_setup import allow_runner_checkpoints
from .version import __version__

__all__ = ['ARCHS', 'MetaFormerBackbone', 'CheckpointError', 'convert_state_dict',
           'read_checkpoint', 'allow_runner_checkpoints', 'MetaFormerLayerDecayConstructor',
           '__version__']
