"""Reading MetaFormer checkpoints safely and converting their key names.

Users hold MetaFormer weights in five layouts:

* official PoolFormer ImageNet release: ``patch_embed.proj``, ``network.{0..6}``, ``layer_scale_1``;
* mmpretrain / mmcls and the paper's mmdet 2.x / mmseg 0.x releases: the same names under
  ``backbone.``, plus output norms ``norm{0,2,4,6}`` counted over network positions;
* official MetaFormer-baselines release: ``downsample_layers.N``, ``stages.i.j``;
* timm (``.pth`` or ``.safetensors``): ``stem.conv``, ``stages.i.blocks.j``, ``layer_scale1.scale``;
* this toolkit: timm names plus ``out_norms.{stage}`` (output GroupNorms of the dense backbone).

:func:`convert_state_dict` maps any of them onto this toolkit's names. It is a pure function:
tensors in, tensors out, plus a list of the keys it dropped (ImageNet classifier heads).

:func:`read_checkpoint` never unpickles arbitrary objects: pickled files go through
``torch.load(weights_only=True)``, which refuses any global that is not on torch's allow-list, so
a checkpoint cannot run code when it is read.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch

from .download import resolve_checkpoint
from .errors import CheckpointError

Tensor = torch.Tensor

__all__ = [
    'check_float_weights', 'ConversionResult', 'convert_state_dict', 'detect_format',
    'read_checkpoint', 'write_checkpoint', 'extract_state_dict', 'split_backbone', 'strip_ddp_prefix',
]


@dataclass
class ConversionResult:
    """Output of :func:`convert_state_dict`.

    Attributes:
        state_dict: Tensors under this toolkit's key names.
        source_format: The detected input layout.
        renamed: ``(old, new)`` pairs for every key whose name changed.
        dropped: Keys left out on purpose (classifier heads, final ImageNet norm).
    """
    state_dict: Dict[str, Tensor]
    source_format: str
    renamed: List[Tuple[str, str]] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Format detection and conversion (pure functions)
# ----------------------------------------------------------------------------------------------

FORMATS = ('toolkit', 'timm', 'poolformer_official', 'metaformer_official')


def detect_format(keys) -> str:
    """Name the layout of a backbone state dict (prefixes such as ``backbone.`` already removed).

    Raises:
        CheckpointError: if no known MetaFormer layout matches.
    """
    keys = set(keys)
    if any(k.startswith('out_norms.') for k in keys):
        return 'toolkit'
    if 'stem.conv.weight' in keys:
        return 'timm'
    if 'patch_embed.proj.weight' in keys:
        return 'poolformer_official'
    if 'downsample_layers.0.conv.weight' in keys:
        return 'metaformer_official'
    sample = ', '.join(sorted(keys)[:5]) or '(no keys)'
    raise CheckpointError(
        'the checkpoint is not a MetaFormer/PoolFormer state dict in any known layout '
        f'(official, mmpretrain, timm, paper release or this toolkit); first keys: {sample}')


_DROP = re.compile(r'^(head\.|head_dist\.|norm\.|dist_head\.)')
# Official PoolFormer: network position 2i holds stage i's blocks, 2i-1 its downsampling conv.
_V1_BLOCK = re.compile(r'^network\.(\d+)\.(\d+)\.(.*)$')
_V1_DOWN = re.compile(r'^network\.(\d+)\.proj\.(.*)$')
_V1_OUT_NORM = re.compile(r'^norm(\d+)\.(.*)$')
_V2_DOWN = re.compile(r'^downsample_layers\.(\d+)\.(.*)$')
_V2_BLOCK = re.compile(r'^stages\.(\d+)\.(\d+)\.(.*)$')


def _rename_block_param(rest: str) -> str:
    # official 'layer_scale_1' / 'res_scale_1' parameters are timm's 'layer_scale1.scale' modules
    return re.sub(r'^(layer|res)_scale_?(\d)$', r'\1_scale\2.scale', rest)


def _rename_key(key: str, fmt: str) -> str | None:
    """New name of one key, or None when the key is dropped on purpose."""
    if fmt in ('toolkit', 'timm'):
        return None if key.startswith('head.') else key
    if fmt == 'poolformer_official':
        if key.startswith('patch_embed.proj.'):
            return 'stem.conv.' + key[len('patch_embed.proj.'):]
        m = _V1_BLOCK.match(key)
        if m:
            pos, blk, rest = int(m[1]), m[2], m[3]
            if pos % 2 == 0:
                return f'stages.{pos // 2}.blocks.{blk}.{_rename_block_param(rest)}'
        m = _V1_DOWN.match(key)
        if m and int(m[1]) % 2 == 1:
            return f'stages.{(int(m[1]) + 1) // 2}.downsample.conv.{m[2]}'
        m = _V1_OUT_NORM.match(key)
        if m and int(m[1]) % 2 == 0:
            return f'out_norms.{int(m[1]) // 2}.{m[2]}'
        return None if _DROP.match(key) else key
    if fmt == 'metaformer_official':
        m = _V2_DOWN.match(key)
        if m:
            stage, rest = int(m[1]), m[2]
            rest = rest.replace('post_norm.', 'norm.').replace('pre_norm.', 'norm.')
            return f'stem.{rest}' if stage == 0 else f'stages.{stage}.downsample.{rest}'
        m = _V2_BLOCK.match(key)
        if m:
            return f'stages.{m[1]}.blocks.{m[2]}.{_rename_block_param(m[3])}'
        m = _V1_OUT_NORM.match(key)
        if m:  # dense releases of the baselines number output norms by stage
            return f'out_norms.{m[1]}.{m[2]}'
        return None if _DROP.match(key) else key
    raise ValueError(f'unknown format {fmt!r}; expected one of {FORMATS}')


def convert_state_dict(state_dict: Mapping[str, Tensor],
                       reference: Mapping[str, Tensor] | None = None) -> ConversionResult:
    """Map a backbone state dict in any known layout onto this toolkit's key names.

    Args:
        state_dict: Backbone weights, without a ``backbone.`` or ``module.`` prefix.
        reference: Optional target state dict (or ``{name: tensor-like with .shape}``). When
            given, a tensor whose shape differs from its target only by trailing singleton
            dimensions (a ``Linear`` weight feeding a 1x1 ``Conv2d``, as the official baselines
            store their MLPs) is reshaped to the target shape. Nothing else is reshaped.
            Dtypes are checked against it too: integer or bool tensors where the target is
            floating point are refused; other floating dtypes (float16, bfloat16, float64) are
            kept here and cast to the model's dtype by ``load_state_dict``.

    Returns:
        A :class:`ConversionResult`; tensors are not copied.

    Raises:
        CheckpointError: Unknown layout, or non-floating tensors where ``reference`` has
            floating-point ones (a corrupt or mislabelled file: casting them would load garbage).
    """
    fmt = detect_format(state_dict.keys())
    result = ConversionResult(state_dict={}, source_format=fmt)
    wrong_dtype = []
    for key, value in state_dict.items():
        new = _rename_key(key, fmt)
        if new is None:
            result.dropped.append(key)
            continue
        if reference is not None and new in reference:
            if reference[new].dtype.is_floating_point and not value.dtype.is_floating_point:
                wrong_dtype.append(f'{key} ({str(value.dtype).replace("torch.", "")})')
            target = tuple(reference[new].shape)
            if tuple(value.shape) != target and _differs_by_singletons(tuple(value.shape), target):
                value = value.reshape(target)
        if new != key:
            result.renamed.append((key, new))
        result.state_dict[new] = value
    if wrong_dtype:
        raise CheckpointError(_wrong_dtype_message(wrong_dtype))
    return result


def _wrong_dtype_message(wrong: Sequence[str]) -> str:
    return (f'{len(wrong)} weights are stored as integers or bools where the model has '
            f'floating-point parameters (first: {", ".join(wrong[:3])}); the file is corrupt '
            'or was written by a broken export: re-export the weights as float32 or float16')


def check_float_weights(model: 'torch.nn.Module', state_dict: Mapping[str, Any]) -> None:
    """Refuse a whole-model state dict whose tensors are integers or bools where ``model`` has
    floating-point weights (``load_state_dict`` would silently cast them).

    Keys are matched by name (a leading ``module.`` is ignored); keys the model does not have
    are left to strict loading to report.

    Raises:
        CheckpointError: Naming the first offending keys and their dtypes.
    """
    own = model.state_dict()
    wrong = []
    for key, value in state_dict.items():
        name = strip_ddp_prefix(key)
        if name in own and own[name].dtype.is_floating_point \
                and isinstance(value, torch.Tensor) and not value.dtype.is_floating_point:
            wrong.append(f'{key} ({str(value.dtype).replace("torch.", "")})')
    if wrong:
        raise CheckpointError(_wrong_dtype_message(wrong))


def _differs_by_singletons(src: Tuple[int, ...], dst: Tuple[int, ...]) -> bool:
    def strip(shape):
        shape = list(shape)
        while shape and shape[-1] == 1:
            shape.pop()
        return shape
    return strip(src) == strip(dst)


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------
def _is_safetensors(path: str) -> bool:
    """Sniff the safetensors layout: an 8-byte little-endian header size, then a JSON object."""
    with open(path, 'rb') as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], 'little')
    return head[8:9] == b'{' and 0 < size <= os.path.getsize(path) - 8


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint file without executing code from it.

    ``path`` may also be an ``http(s)://`` URL or an ``hf-hub:`` name: the file is fetched once
    into the standard cache (:mod:`metaformer_dense.download`) and read from there.

    Pickle-based files (``.pth``, ``.pth.tar``, ``.pt``) are read with
    ``torch.load(weights_only=True)``; safetensors files (recognised by content, whatever their
    suffix) with :mod:`safetensors`.

    Raises:
        CheckpointError: the path is missing, a directory, empty, truncated, not a checkpoint,
            or holds objects that are not plain tensors and containers.
    """
    path = resolve_checkpoint(os.fspath(path))
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint not found: {path!r}; check the path in the config '
                              "(e.g. init_cfg=dict(type='Pretrained', checkpoint=...)) or on the command line")
    if os.path.isdir(path):
        raise CheckpointError(f'checkpoint path {path!r} is a directory; point it at a .pth or '
                              '.safetensors file inside it')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'checkpoint {path!r} is an empty file (an interrupted download or copy?)')
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device='cpu')
        except (SafetensorError, ValueError, OSError) as exc:
            raise CheckpointError(f'checkpoint {path!r} looks like safetensors but cannot be '
                                  f'read ({exc}); the file is probably truncated or corrupt') from exc
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        found = re.search(r'GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)', msg)
        # An allowed global (e.g. getattr) used to reach and call a refused function
        called = re.search(r'call reduce for unrecognized function (.+?) which belongs', msg)
        if found or called:
            name = (found.group(1) or found.group(2)) if found else called.group(1)
            raise CheckpointError(
                f'checkpoint {path!r} contains a pickled Python object ({name}) that is not a '
                'tensor or plain container; it was refused, because unpickling it could run code. '
                'An mmengine training checkpoint (work_dirs/.../iter_N.pth) reads once its few '
                'classes are allow-listed (metaformer_dense.allow_runner_checkpoints(); the '
                "toolkit's tools do it), and tools/publish_model.py writes its weights alone; for "
                'another file, ask its author for a weights-only .safetensors or .pth') from exc
        raise CheckpointError(f'{path!r} is not a PyTorch checkpoint (nor safetensors), or it is '
                              'corrupt: its bytes do not parse as one') from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f'{path!r} is not a readable PyTorch checkpoint; it is probably '
                              f'truncated or corrupt ({type(exc).__name__}: {exc})') from exc


def extract_state_dict(obj) -> Dict[str, Tensor]:
    """Return the state dict inside a loaded checkpoint (``state_dict`` / ``model`` / raw)."""
    if isinstance(obj, Mapping):
        for wrapper in ('state_dict', 'model', 'module'):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError('the checkpoint holds no state dict (expected a mapping of '
                              f'parameter names to tensors, got {type(obj).__name__})')
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'the checkpoint state dict has non-tensor entries: {bad[:5]}')
    return dict(obj)


def strip_ddp_prefix(key: str) -> str:
    """``module.x`` (a DDP-wrapped model's key) -> ``x``."""
    return key[len('module.'):] if key.startswith('module.') else key


def split_backbone(state_dict: Mapping[str, Tensor]
                   ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Split a state dict into (backbone weights without ``backbone.``, all other weights).

    DDP's ``module.`` prefix is dropped first. A state dict with no ``backbone.`` keys is a
    backbone on its own: it is returned whole, with nothing else.
    """
    sd = {strip_ddp_prefix(k): v for k, v in state_dict.items()}
    if not any(k.startswith('backbone.') for k in sd):
        return sd, {}
    backbone = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    return backbone, {k: v for k, v in sd.items() if not k.startswith('backbone.')}


def write_checkpoint(checkpoint: Mapping[str, Any], dst: str) -> None:
    """Write ``{'meta': ..., 'state_dict': ...}`` as ``.safetensors`` (when ``dst`` ends so; the
    meta as JSON in its header) or a torch ``.pth``, through a temporary file renamed at the end."""
    import json
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = f'{dst}.tmp{os.getpid()}'
    if dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        tensors = {k: v.detach().contiguous().clone() for k, v in checkpoint['state_dict'].items()}
        save_file(tensors, tmp, metadata={
            'format': 'pt', 'meta': json.dumps(checkpoint.get('meta') or {}, default=str)})
    else:
        torch.save(dict(checkpoint), tmp)
    os.replace(tmp, dst)
