"""Convert a MetaFormer / PoolFormer checkpoint to this toolkit's format.

Reads any layout the backbone loads (official PoolFormer ImageNet ``.pth.tar``, official
MetaFormer baselines, timm ``.pth`` / ``.safetensors``, mmpretrain, the paper's mmdet 2.x /
mmseg 0.x detection and segmentation releases, this toolkit's own) and writes
``{'meta': {...}, 'state_dict': {...}}`` as ``.pth``, or a ``.safetensors`` file when DST ends so
(its header then holds the meta as JSON). Examples:

    python tools/convert_checkpoint.py poolformer_s12.pth.tar checkpoints/poolformer_s12.pth
    python tools/convert_checkpoint.py model.safetensors s12.pth --arch poolformer_s12
    python tools/convert_checkpoint.py retinanet_poolformer_s12_release.pth retinanet_s12.safetensors

A backbone checkpoint becomes the keys of ``MetaFormerBackbone.state_dict()`` (``stem.*``,
``stages.*``, ``out_norms.*``); a whole detector or segmentor (keys under ``backbone.``) keeps its
neck and head keys unchanged and gets converted ``backbone.*`` keys. The tool prints the detected
layout, a summary of the renames, the keys dropped (ImageNet classifier), the keys missing
against ``--arch`` (the dense backbone's output norms are not in ImageNet checkpoints; they are
freshly initialised when loaded), and any float dtype cast to float32. Without ``--arch`` the
architecture is found from the weights. A checkpoint that does not fit the architecture (shapes,
depths, extra blocks) or holds integer tensors where weights are float is an error. Optimizer
state is not copied. The input is read without unpickling code.
"""
from __future__ import annotations

import argparse
import os.path as osp
import re
import sys
from collections import Counter
from typing import List, Optional, Sequence, Tuple

import torch

from metaformer_dense.backbone import MetaFormerBackbone, find_arch, resolve_arch
from metaformer_dense.checkpoint import (CheckpointError, extract_state_dict, read_checkpoint,
                                         split_backbone, write_checkpoint)
from metaformer_dense.mmengine_setup import allow_runner_checkpoints

PREFIX = 'backbone.'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments of the converter."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='checkpoint to convert (.pth, .pth.tar, .pt, .safetensors)')
    parser.add_argument('dst', help='output file: .safetensors, else a torch .pth')
    parser.add_argument('--arch', default=None,
                        help="backbone architecture, e.g. poolformer_s12 or s12 (default: found "
                        "from the weights)")
    parser.add_argument('--force', action='store_true', help='overwrite DST if it exists')
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- conversion
def summarise_renames(renamed: Sequence[Tuple[str, str]], limit: int = 12) -> List[str]:
    """Group renames by pattern (numbers become ``N``): ``'a.N.b -> c.N.d (x12)'`` lines."""
    groups = Counter((re.sub(r'\d+', 'N', old), re.sub(r'\d+', 'N', new)) for old, new in renamed)
    lines = [f'{old} -> {new} (x{n})' for (old, new), n in groups.most_common(limit)]
    if len(groups) > limit:
        lines.append(f'... and {len(groups) - limit} more patterns')
    return lines


def convert(src: str, arch: Optional[str] = None) -> Tuple[dict, List[str]]:
    """Convert the checkpoint file ``src``.

    Args:
        src: Checkpoint in any supported layout.
        arch: Backbone architecture (a timm MetaFormer name or ``s12`` ... ``m48``); found from
            the weights when None.

    Returns:
        ``({'meta': ..., 'state_dict': ...}, report lines)``.

    Raises:
        ValueError: Unknown ``arch``.
        CheckpointError: Unreadable file, unknown layout, or weights that do not fit ``arch``.
    """
    allow_runner_checkpoints()  # training checkpoints (work_dirs/.../iter_N.pth) read too
    raw = read_checkpoint(src)
    backbone, others = split_backbone(extract_state_dict(raw))
    arch = resolve_arch(arch) if arch else find_arch(backbone)
    with torch.device('meta'):  # shapes and dtypes of the full backbone, no memory
        model = MetaFormerBackbone(arch)
    fit = model.fit_weights(backbone)  # also refuses integer weights
    fit.check(f'checkpoint {src!r}')
    if fit.unexpected:  # the output holds the arch's weights only
        raise CheckpointError(f'checkpoint {src!r} has {len(fit.unexpected)} keys that are no '
                              f'weights of {arch}: {fit.unexpected[:3]}')
    conv, missing, ref = fit.conversion, fit.missing, model.state_dict()
    cast = Counter()
    state = {}
    for key, value in conv.state_dict.items():
        if value.dtype != ref[key].dtype:
            cast[str(value.dtype).replace('torch.', '')] += 1
            value = value.to(ref[key].dtype)
        state[key] = value
    whole = bool(others)
    if whole:
        state = {**{PREFIX + k: v for k, v in state.items()}, **others}
    meta = raw.get('meta') if isinstance(raw, dict) and isinstance(raw.get('meta'), dict) else {}
    meta = dict(meta, arch=arch, source_format=conv.source_format,
                converted_from=osp.basename(src))

    report = [f'{src}: {conv.source_format} layout, {"whole model" if whole else "backbone"}, '
              f'arch {arch}']
    if conv.renamed:
        report.append(f'renamed {len(conv.renamed)} backbone keys:')
        report += ['  ' + line for line in summarise_renames(conv.renamed)]
    else:
        report.append('renamed: none (already this toolkit\'s names)')
    report.append(f'dropped {len(conv.dropped)}: {conv.dropped or "none"}')
    report.append(f'missing vs {arch} ({len(missing)}, freshly initialised when loaded): '
                  f'{_group_missing(missing) or "none"}')
    if cast:
        report.append('cast to float32: ' + ', '.join(f'{n} {d}' for d, n in cast.items()))
    if whole:
        report.append(f'kept {len(others)} non-backbone keys unchanged')
    return dict(meta=meta, state_dict=state), report


def _group_missing(keys: Sequence[str]) -> str:
    modules = sorted({k.rsplit('.', 1)[0] for k in keys})
    return ', '.join(f'{m}.*' for m in modules)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if osp.abspath(args.src) == osp.abspath(args.dst):
        sys.exit('error: DST must differ from SRC')
    if osp.exists(args.dst) and not args.force:
        sys.exit(f'error: {args.dst} exists; pass --force to overwrite it')
    try:
        checkpoint, report = convert(args.src, args.arch)
    except ValueError as exc:  # CheckpointError included
        sys.exit(f'error: {exc}')
    write_checkpoint(checkpoint, args.dst)
    print('\n'.join(report))
    print(f'wrote {args.dst} ({len(checkpoint["state_dict"])} tensors)')


if __name__ == '__main__':
    main()
