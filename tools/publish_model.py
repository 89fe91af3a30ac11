"""Publish a trained model: the weights of a training checkpoint, with its hash in the file name.

Takes a checkpoint ``tools/train.py`` wrote (``work_dirs/<config>/iter_N.pth`` / ``epoch_N.pth``)
and writes its weights alone, as mmdet's ``tools/model_converters/publish_model.py`` does:
optimizer, schedulers and the message hub are dropped, ``meta`` keeps plain data only (class
names and palette, epoch / iter, versions, config text), a DDP ``module.`` prefix is removed.
The output is a ``.pth`` (readable by ``torch.load(weights_only=True)`` with no allow-list) or a
``.safetensors`` file (meta as JSON in its header), renamed to ``NAME-<sha256 prefix>.EXT``: the
hash convention torch.hub uses and the toolkit's URL loader checks, so a copy served from a URL
is verified when it is fetched. Examples:

    python tools/publish_model.py work_dirs/retinanet_poolformer_s12/epoch_12.pth retinanet_s12.pth
    python tools/publish_model.py work_dirs/upernet_convformer_s18/iter_160000.pth upernet.safetensors

The input is read with the toolkit's safe reader (``weights_only=True`` plus the few classes a
runner checkpoint pickles), so a tampered file cannot run code while it is published.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import os.path as osp
import sys
from typing import Optional, Sequence

from metaformer_dense import allow_runner_checkpoints
from metaformer_dense.checkpoint import (CheckpointError, extract_state_dict, read_checkpoint,
                                         strip_ddp_prefix, write_checkpoint)

HASH_CHARS = 8  # as mmdet's publish_model; the URL loader accepts 6 to 64


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments of the publisher."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='training checkpoint (work_dirs/.../iter_N.pth or epoch_N.pth)')
    parser.add_argument('dst', help='NAME.pth or NAME.safetensors; written as NAME-<sha256[:8]>.EXT')
    parser.add_argument('--force', action='store_true', help='overwrite an existing output')
    return parser.parse_args(argv)


def plain(value):
    """``value`` with numpy scalars / arrays as Python numbers / lists and any other object as its
    ``str``: what ``torch.load(weights_only=True)`` and JSON read without an allow-list."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if hasattr(value, 'tolist'):  # numpy arrays and scalars
        return value.tolist()
    return str(value)


def weights_of(raw: dict) -> dict:
    """``{'meta': plain meta, 'state_dict': weights}`` of a read checkpoint."""
    state_dict = {strip_ddp_prefix(k): v for k, v in extract_state_dict(raw).items()}
    meta = raw.get('meta') if isinstance(raw.get('meta'), dict) else {}
    return dict(meta=plain(meta), state_dict=state_dict)


def hashed_name(path: str) -> str:
    """``NAME.EXT`` -> ``NAME-<first HASH_CHARS hex digits of the file's sha256>.EXT``."""
    sha = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            sha.update(chunk)
    stem, ext = osp.splitext(path)
    return f'{stem}-{sha.hexdigest()[:HASH_CHARS]}{ext}'


def publish(src: str, dst: str, force: bool = False) -> str:
    """Write the weights of ``src`` to ``dst`` renamed with its hash; return the final path.

    Raises:
        CheckpointError: ``src`` is unreadable or holds no state dict.
        ValueError: ``dst`` has another extension than ``.pth`` / ``.safetensors``, or the
            final file exists and ``force`` is not set.
    """
    if not dst.endswith(('.pth', '.safetensors')):
        raise ValueError(f'DST must end in .pth or .safetensors, got {dst}')
    allow_runner_checkpoints()
    checkpoint = weights_of(read_checkpoint(src))
    write_checkpoint(checkpoint, dst)
    final = hashed_name(dst)
    if osp.exists(final) and not force:
        os.remove(dst)
        raise ValueError(f'{final} exists; pass --force to overwrite it')
    os.replace(dst, final)
    return final


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        final = publish(args.src, args.dst, args.force)
    except ValueError as exc:  # CheckpointError included
        sys.exit(f'error: {exc}')
    print(f'wrote {final}')


if __name__ == '__main__':
    main()
