"""Reading a tool's config and checking its datasets before the Runner starts.

One pair of tools serves mmdet and mmseg configs: :func:`load_config` reads the config's
``default_scope`` and imports that library's plugin (and so that library) only.

A missing dataset surfaces in mmengine 0.10.7 as a stack trace from deep inside a dataloader;
:func:`check_dataset_paths` fails first, naming the path and the ``--cfg-options`` that move it.
"""
from __future__ import annotations

import importlib
import os
import os.path as osp
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from mmengine.config import Config

__all__ = ['PLUGINS', 'DatasetNotFoundError', 'load_config', 'check_dataset_paths']

#: default_scope -> (OpenMMLab library, this project's plugin registering ``type='MetaFormer'``)
PLUGINS = {'mmdet': ('mmdet', 'mmdet_plugin'), 'mmseg': ('mmseg', 'mmseg_plugin')}


class DatasetNotFoundError(FileNotFoundError):
    """A config's dataset files are not where it says; the message says how to move them."""


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a detection or segmentation config and import the library and plugin it needs.

    Args:
        path: Config file.
        cfg_options: ``--cfg-options`` overrides, merged after loading.

    Returns:
        The config, with its ``default_scope`` checked to be 'mmdet' or 'mmseg'.

    Raises:
        FileNotFoundError: No such config file.
        ValueError: The config names no supported ``default_scope``.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'Config file not found: {path}')
    cfg = Config.fromfile(path)  # also runs the config's `custom_imports`
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in PLUGINS:
        raise ValueError(
            f"{path}: default_scope is {scope!r}; these tools run 'mmdet' or 'mmseg' configs. "
            "Inherit an mmdet or mmseg base config (_base_ = 'mmdet::...' / 'mmseg::...') or "
            "set default_scope in the config.")
    importlib.import_module(PLUGINS[scope][1])  # imports mmdet or mmseg, and only that one
    return cfg


def _leaf_datasets(node: Any, key: str) -> Iterator[tuple[str, dict]]:
    """Yield ``(dotted config key, dataset dict)`` for each real dataset in a dataloader config.

    Walks through ``dataset`` (dataloaders, RepeatDataset, ClassBalancedDataset, ...) and
    ``datasets`` (ConcatDataset) keys.
    """
    if not isinstance(node, dict):
        return
    if isinstance(node.get('datasets'), (list, tuple)):  # ConcatDataset
        for i, sub in enumerate(node['datasets']):
            yield from _leaf_datasets(sub, f'{key}.datasets.{i}')
    elif isinstance(node.get('dataset'), dict):  # RepeatDataset, ClassBalancedDataset, ...
        yield from _leaf_datasets(node['dataset'], f'{key}.dataset')
    else:
        yield key, node


def _is_remote(path: str, node: dict) -> bool:
    backend = (node.get('backend_args') or {}).get('backend', 'local')
    return '://' in path or backend not in ('local', 'disk')


def _missing_paths(cfg: Config, sections: Sequence[str]) -> list[tuple[str, str, str]]:
    """Return ``(config key, configured value, what is missing)`` for each path not on disk."""
    missing = []
    for section in sections:
        node = cfg.get(section)
        if section.endswith('_evaluator'):
            for i, metric in enumerate(node if isinstance(node, (list, tuple)) else [node]):
                ann = metric.get('ann_file') if isinstance(metric, dict) else None
                if isinstance(ann, str) and ann and not _is_remote(ann, metric) \
                        and not osp.isfile(ann):
                    key = section if not isinstance(node, (list, tuple)) else f'{section}.{i}'
                    missing.append((f'{key}.ann_file', ann, 'no such file'))
            continue
        for key, ds in _leaf_datasets(node, section):
            root = ds.get('data_root') or ''
            if root and not _is_remote(root, ds) and not osp.isdir(root):
                missing.append((f'{key}.data_root', root, 'no such directory'))
                continue  # everything below lives under data_root: one line is enough
            ann = ds.get('ann_file') or ''
            if ann and not _is_remote(ann, ds) and not osp.isfile(osp.join(root, ann)):
                missing.append((f'{key}.ann_file', ann, f'no such file {osp.join(root, ann)}'))
            for name, prefix in (ds.get('data_prefix') or {}).items():
                if isinstance(prefix, str) and prefix and not _is_remote(prefix, ds) \
                        and not osp.isdir(osp.join(root, prefix)):
                    missing.append((f'{key}.data_prefix.{name}', prefix,
                                    f'no such directory {osp.join(root, prefix)}'))
    return missing


def check_dataset_paths(cfg: Config, sections: Sequence[str]) -> None:
    """Fail before any model or dataloader is built if a dataset the run needs is missing.

    Relative paths are checked against the current directory, as mmengine resolves them.
    Remote paths (``s3://`` and the like, or a non-local ``backend_args``) are not checked.

    Args:
        cfg: Loaded config.
        sections: Dataloader and evaluator keys the run uses, e.g.
            ``('train_dataloader', 'val_dataloader', 'val_evaluator')``.

    Raises:
        DatasetNotFoundError: Lists every missing path, the config key that sets it, and the
            ``--cfg-options`` line that points it at the right place.
    """
    missing = _missing_paths(cfg, sections)
    if not missing:
        return
    lines = [f'  {key} = {value!r}: {what}' for key, value, what in missing]
    roots = [value for key, value, _ in missing if key.endswith('.data_root')]

    def example(value: str) -> str:  # 'data/coco/ann/x.json' -> '/path/to/coco/ann/x.json'
        for root in roots:
            if value.startswith(root) and value != root:
                return f'{example(root)}/{value[len(root):].lstrip("/")}'
        return f'/path/to/{osp.basename(osp.normpath(value))}'

    hints = ' '.join(f'{key}={example(value)}' for key, value, _ in missing)
    raise DatasetNotFoundError(
        f'Dataset not found (relative paths are read from {os.getcwd()}):\n' + '\n'.join(lines) +
        '\nPut the data there (a symlink will do), or point the config at it, e.g.\n'
        f'  --cfg-options {hints}')
