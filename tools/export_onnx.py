"""Export a detector's or segmentor's network (``mode='tensor'``) to ONNX and check it.

The graph takes a batch of preprocessed images, ``(1, 3, H, W)`` float32: normalised as the
config's ``data_preprocessor`` does (mean / std, BGR to RGB) and padded to a multiple of 32.
It returns the raw network outputs of mmdet's / mmseg's ``mode='tensor'``: for RetinaNet the
classification and box-regression maps of every FPN level (decoding and NMS stay outside),
for Semantic FPN the class logits at 1/4 of the input size. Height and width are dynamic.
With ``--check`` the ONNX file is run with onnxruntime at the export size and at the sizes
given, and compared with the PyTorch model in eager mode. docs/deployment.md says what exports
and what does not (two-stage detectors such as Mask R-CNN do not). Examples:

    python tools/export_onnx.py configs/retinanet_poolformer_s12.py --checkpoint CKPT \\
        --out retinanet_s12.onnx --shape 800 1216 --check 640 960
    python tools/export_onnx.py configs/semantic_fpn_poolformer_s12.py --checkpoint CKPT \\
        --out fpn_s12.onnx --shape 512 512 --check 512 1024
    python tools/export_onnx.py configs/retinanet_poolformer_s12.py --out try.onnx  # random weights
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence, Tuple

from mmengine.config import DictAction  # light; the heavy imports wait until after --help

EXPORTERS = ('dynamo', 'torchscript')
# Absolute and relative tolerance of --check (float rounding of the recorded graph: about 1e-5).
TOLERANCE = 1e-4


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='detection (mmdet) or segmentation (mmseg) config')
    parser.add_argument('--checkpoint', help='weights to export (default: random weights, only '
                        'for trying the export)')
    parser.add_argument('--out', required=True, metavar='FILE.onnx', help='ONNX file to write')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'),
                        help='input size the graph is recorded at (multiples of 32; default '
                        '800 1216)')
    parser.add_argument('--check', type=int, nargs='+', default=None, metavar='H W',
                        help='run the ONNX file with onnxruntime at --shape and at these sizes '
                        '(pairs H W) and compare with eager PyTorch')
    parser.add_argument('--exporter', choices=EXPORTERS, default='dynamo',
                        help="torch.onnx.export(dynamo=True) (torch's default; needs onnxscript) "
                        'or the TorchScript-based exporter (dynamo=False)')
    parser.add_argument('--features', action='store_true',
                        help="export the backbone and neck only (model.extract_feat): the part of "
                        'a two-stage detector (Mask R-CNN) that exports')
    parser.add_argument('--opset', type=int, default=18, help="ONNX opset (default 18, the lowest the dynamo exporter implements)")
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config entries, e.g. model.backbone.arch=poolformer_s24')
    args = parser.parse_args(argv)
    if args.check is not None and len(args.check) % 2:
        parser.error(f'--check takes pairs H W, got {args.check}')
    for h, w in [tuple(args.shape)] + _pairs(args.check or []):
        if h % 32 or w % 32:
            parser.error(f'sizes must be multiples of 32 (what the data preprocessors pad to), '
                         f'got {h}x{w}')
    return args


def _pairs(values: Sequence[int]) -> List[Tuple[int, int]]:
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def build_model(config: str, checkpoint: Optional[str] = None, cfg_options: Optional[dict] = None):
    """Build the config's model in eval mode, with ``checkpoint`` loaded strictly if given.

    Returns:
        ``(model, cfg)``.

    Raises:
        FileNotFoundError / ValueError: no such config, or a config of neither library.
        metaformer_dense.CheckpointError, RuntimeError: the checkpoint does not fit the model.
    """
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner.checkpoint import load_state_dict

    from metaformer_dense.checkpoint import (check_float_weights, extract_state_dict,
                                             read_checkpoint)
    from metaformer_runner import load_config

    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    if checkpoint:
        state = extract_state_dict(read_checkpoint(checkpoint))
        check_float_weights(model, state)
        load_state_dict(model, state, strict=True)
    return model.eval(), cfg


def tensor_mode(model, features: bool = False):
    """The module that is exported: ``model``'s ``mode='tensor'`` forward on a batch of images
    (or, with ``features``, its ``extract_feat``: backbone and neck), its outputs flattened
    into one tuple of tensors.

    Raises:
        ValueError: a two-stage detector without ``features``; its ``mode='tensor'`` decodes
            RPN proposals and runs mmcv's NMS on them, which needs per-image metadata and does
            not record as an ONNX graph.
    """
    import torch
    from torch import nn

    if not features and (hasattr(model, 'rpn_head') or hasattr(model, 'roi_head')):
        raise ValueError(
            f'{type(model).__name__} is a two-stage detector: its mode="tensor" decodes RPN '
            "proposals and runs mmcv's NMS on them, which needs image metadata and does not "
            'export to ONNX (see docs/deployment.md). Export its backbone and neck with '
            '--features, or a single-stage detector such as RetinaNet.')

    _make_sizes_symbolic(model)

    class TensorMode(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.features = features

        def forward(self, image: torch.Tensor):
            out = self.model.extract_feat(image) if self.features \
                else self.model(image, mode='tensor')
            return tuple(_flatten(out))

    return TensorMode(model).eval()


def _make_sizes_symbolic(model) -> None:
    """Let mmseg's ``Upsample`` modules scale by their factor inside ``F.interpolate``.

    mmseg's ``Upsample`` (Semantic FPN's scale heads use it) computes its output size in Python,
    ``int(size * scale_factor)``: a tracer records a constant, and ``torch.export`` guards on
    the traced size, a guard the ONNX file does not keep. Either way the graph computes wrong
    numbers at any other input size. For a whole-number factor, interpolating by the factor
    gives the same size and the same sampling positions, and stays symbolic.
    """
    if 'mmseg' not in sys.modules:
        return
    import torch.nn.functional as F
    from mmseg.models.utils.wrappers import Upsample

    class ScaleUpsample(Upsample):
        def forward(self, x):
            return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode,
                                 align_corners=self.align_corners)

    for module in model.modules():
        if type(module) is Upsample and not module.size \
                and isinstance(module.scale_factor, float) and module.scale_factor.is_integer():
            module.__class__ = ScaleUpsample


def _flatten(out):
    if isinstance(out, (list, tuple)):
        for o in out:
            yield from _flatten(o)
    else:
        yield out


def output_names(module, image) -> List[str]:
    """Names for the exported outputs: ``feature_<level>`` with ``features``,
    ``cls_score_<level>`` / ``bbox_pred_<level>`` for a single-stage detector's two groups of
    maps, ``seg_logits`` for a segmentor, else ``output_<i>``."""
    import torch

    with torch.no_grad():
        outs = module(image)
    model = module.model
    if module.features:
        return [f'feature_{i}' for i in range(len(outs))]
    if len(outs) == 1 and hasattr(model, 'decode_head'):
        return ['seg_logits']
    head = getattr(model, 'bbox_head', None)
    if head is not None and not hasattr(model, 'rpn_head') and len(outs) % 2 == 0 \
            and len(outs) // 2 == len(getattr(head.prior_generator, 'strides', ())):
        levels = range(len(outs) // 2)
        return [f'cls_score_{i}' for i in levels] + [f'bbox_pred_{i}' for i in levels]
    return [f'output_{i}' for i in range(len(outs))]


def export(module, path: str, shape: Tuple[int, int], exporter: str = 'dynamo',
           opset: int = 18) -> List[str]:
    """Write ``module`` (from :func:`tensor_mode`) to ``path`` with dynamic height and width.

    Args:
        module: The module to export.
        path: ONNX file to write.
        shape: ``(H, W)`` of the example input the graph is recorded with.
        exporter: ``'dynamo'`` (``torch.onnx.export(dynamo=True)``, via ``torch.export``) or
            ``'torchscript'`` (``dynamo=False``, via ``torch.jit.trace``).
        opset: ONNX opset version.

    Returns:
        The output names, in order.
    """
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got {exporter!r}')
    image = torch.zeros(1, 3, *shape)
    names = output_names(module, image)
    with torch.no_grad():
        if exporter == 'dynamo':
            program = torch.onnx.export(
                module, (image,), dynamo=True, opset_version=opset, input_names=['image'],
                output_names=names, dynamic_shapes={'image': {2: 'height', 3: 'width'}},
                verbose=False)
            program.save(path)
        else:
            dynamic = {'image': {2: 'height', 3: 'width'}}
            torch.onnx.export(module, (image,), path, dynamo=False, opset_version=opset,
                              input_names=['image'], output_names=names, dynamic_axes=dynamic)
    return names


def check(path: str, module, shapes: Sequence[Tuple[int, int]], seed: int = 0) -> List[float]:
    """Run ``path`` with onnxruntime on random images of ``shapes`` and compare with ``module``.

    Returns:
        The largest absolute difference over all outputs, per shape.

    Raises:
        AssertionError: a shape's outputs differ by more than :data:`TOLERANCE` (absolute and
            relative) or have other shapes.
    """
    import torch
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError('checking needs onnxruntime: pip install onnxruntime '
                          '(the tested version is pinned in requirements/tests.txt)') from err

    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    worst = []
    gen = torch.Generator().manual_seed(seed)
    for h, w in shapes:
        image = torch.randn(1, 3, h, w, generator=gen)
        got = session.run(None, {'image': image.numpy()})
        with torch.no_grad():
            expected = module(image)
        if len(got) != len(expected):
            raise AssertionError(f'{h}x{w}: {len(got)} ONNX outputs, {len(expected)} in PyTorch')
        diff = 0.0
        for i, (g, e) in enumerate(zip(got, expected)):
            g = torch.from_numpy(g)
            torch.testing.assert_close(g, e, atol=TOLERANCE, rtol=TOLERANCE,
                                       msg=lambda m: f'{h}x{w}, output {i}: {m}')
            diff = max(diff, float((g - e).abs().max()))
        worst.append(diff)
    return worst


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    from metaformer_dense.checkpoint import CheckpointError
    try:
        model, cfg = build_model(args.config, args.checkpoint, args.cfg_options)
        module = tensor_mode(model, args.features)
    except (FileNotFoundError, ValueError, CheckpointError, RuntimeError) as err:
        sys.exit(f'error: {err}')
    if not args.checkpoint:
        print('no --checkpoint: exporting randomly initialised weights', file=sys.stderr)
    shape = tuple(args.shape)
    names = export(module, args.out, shape, args.exporter, args.opset)
    pre = cfg.model.get('data_preprocessor') or {}
    print(f'wrote {args.out}: input image (1, 3, height, width) float32, outputs {names}; '
          f'normalise with mean {pre.get("mean")} std {pre.get("std")} '
          f'(bgr_to_rgb={pre.get("bgr_to_rgb", False)}) and pad to a multiple of 32 first')
    if args.check is not None:
        shapes = [shape] + _pairs(args.check)
        for (h, w), diff in zip(shapes, check(args.out, module, shapes)):
            print(f'onnxruntime vs eager at {h}x{w}: max abs difference {diff:.2e} '
                  f'(tolerance {TOLERANCE:g} absolute and relative)')


if __name__ == '__main__':
    main()
