"""Draw a detector's boxes and masks, or a segmentor's label map, on images.

One tool for mmdet and mmseg configs: the config's ``default_scope`` picks mmdet's
``DetInferencer`` or mmseg's ``MMSegInferencer`` for the prediction and that library's visualizer
for the drawing. Each input image gives ``OUT_DIR/<name>.png``. Examples:

    python demo/image_demo.py data/tiny_coco/val/000001.jpg \\
        configs/demo/retinanet_poolformer_s12_tiny.py work_dirs/retinanet/epoch_20.pth
    python demo/image_demo.py photos/ configs/mask_rcnn_poolformer_s12.py mask_rcnn_s12.pth \\
        --out-dir vis/ --score-thr 0.5 --device cuda:0
    python demo/image_demo.py a.jpg b.png configs/semantic_fpn_poolformer_s12.py fpn_s12.safetensors

CHECKPOINT is a whole model: one this toolkit trained (tools/train.py), its ``.safetensors``
conversion (tools/convert_checkpoint.py), or a model the PoolFormer paper released for mmdet 2.x /
mmseg 0.x (official backbone key names are converted while loading). It is read without
unpickling code (``torch.load(weights_only=True)`` or safetensors) and must fit the config's
model exactly: missing or unexpected weights are an error, not a silent random initialisation.
Grayscale, RGBA and 16-bit images are converted to 8-bit colour; images more elongated than
8:1 are zero-padded at the bottom/right for the model (the picture is cut back to the image); an
unreadable or truncated image stops the run with an error naming the file.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
#: Images more elongated than this are zero-padded (bottom/right) before inference, so that the
#: config's keep-ratio resize cannot shrink their short side to nothing.
MAX_ASPECT = 8.0


class DemoError(Exception):
    """Bad input to the demo (image, checkpoint, config, device); the message says which."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments of the demo."""
    from mmengine.config import DictAction  # light; the heavy imports wait until after --help
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', metavar='IMAGE',
                        help=f'image files, or folders of them ({", ".join(IMAGE_EXTENSIONS)})')
    parser.add_argument('config', help='the model config (mmdet or mmseg)')
    parser.add_argument('checkpoint', help='whole-model weights: a .pth or .safetensors file, '
                        'an http(s):// URL or an hf-hub: name')
    parser.add_argument('--out-dir', default='demo_out',
                        help='where the drawn images go (default: %(default)s)')
    parser.add_argument('--device', default=None,
                        help="'cpu' or 'cuda:0' (default: cuda:0 when available, else cpu)")
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes/masks scoring at least this '
                        '(default: %(default)s)')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: opacity of the drawn label map (default: %(default)s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. model.test_cfg.nms.iou_threshold=0.6')
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- inputs
def collect_images(inputs: Sequence[str]) -> List[str]:
    """Expand folders (not recursively) into their image files; keep files as given.

    Raises:
        DemoError: A path does not exist, or a folder holds no images.
    """
    images = []
    for item in inputs:
        if osp.isdir(item):
            found = sorted(osp.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(IMAGE_EXTENSIONS)
                           and osp.isfile(osp.join(item, n)))
            if not found:
                raise DemoError(f'folder {item!r} holds no images '
                                f'(looked for {", ".join(IMAGE_EXTENSIONS)})')
            images += found
        elif osp.isfile(item):
            images.append(item)
        else:
            raise DemoError(f'image not found: {item!r}')
    return images


def read_image(path: str):
    """Decode an image file to an 8-bit 3-channel BGR array (the layout mmcv pipelines expect).

    Grayscale is replicated to three channels, an alpha channel is dropped and 16-bit samples
    are scaled to 8 bits.

    Raises:
        DemoError: The file is empty, not an image, truncated or otherwise undecodable.
    """
    import mmcv
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    with open(path, 'rb') as f:
        data = f.read()
    if not data:
        raise DemoError(f'image {path!r} is an empty file')
    # PIL notices truncated files (OpenCV silently decodes what it can and pads with gray).
    try:
        with Image.open(path) as probe:
            probe.load()
    except UnidentifiedImageError as exc:
        raise DemoError(f'{path!r} is not an image file (or is corrupt beyond recognition)') \
            from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / broken streams
        raise DemoError(f'image {path!r} is corrupt or truncated ({exc}); re-export or '
                        're-download it') from exc
    img = mmcv.imfrombytes(data, flag='color', channel_order='bgr', backend='cv2')
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DemoError(f'image {path!r} could not be decoded to 8-bit colour')
    return img


# ----------------------------------------------------------------------------- weights
def read_weights(path: str) -> dict:
    """Read a whole-model checkpoint safely as ``{'state_dict': ..., 'meta': ...}``.

    Raises:
        DemoError: The file cannot be read or holds no state dict.
    """
    from metaformer_dense.checkpoint import CheckpointError, extract_state_dict, read_checkpoint
    from metaformer_dense.download import resolve_checkpoint
    try:
        path = resolve_checkpoint(path)  # a URL or hf-hub: name: fetched once, then cached
        raw = read_checkpoint(path)
        state_dict = extract_state_dict(raw)
    except CheckpointError as exc:
        raise DemoError(str(exc)) from exc
    meta = raw.get('meta') if isinstance(raw, dict) else None
    if not isinstance(meta, dict):
        meta = _safetensors_meta(path)
    return dict(state_dict=state_dict, meta=meta or {})


def _safetensors_meta(path: str) -> dict:
    """The ``meta`` JSON that tools/convert_checkpoint.py stores in a safetensors header."""
    try:
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            text = (f.metadata() or {}).get('meta')
        return json.loads(text) if text else {}
    except Exception:  # not safetensors, or no usable meta: the config's classes are used
        return {}


def _dataset_meta(cfg, meta: dict) -> dict:
    """Classes and palette: the checkpoint's (mmdet 3 / mmseg 1, or 2.x/0.x ``CLASSES``),
    else the config's test dataset's."""
    import copy

    from mmengine.registry import DATASETS
    if isinstance(meta.get('dataset_meta'), dict) and meta['dataset_meta'].get('classes'):
        found = {k.lower(): v for k, v in meta['dataset_meta'].items()
                 if k.lower() in ('classes', 'palette')}
    elif meta.get('CLASSES'):
        found = dict(classes=meta['CLASSES'])
        if meta.get('PALETTE'):
            found['palette'] = meta['PALETTE']
    else:
        found = {}
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset_cfg['lazy_init'] = True  # metainfo only: no annotation file is read
    from_cfg = DATASETS.build(dataset_cfg).metainfo
    if not found:
        found = dict(classes=from_cfg['classes'])
    if not found.get('palette') and len(from_cfg.get('palette') or ()) == len(found['classes']):
        found['palette'] = from_cfg['palette']
    return found


def _checked_inferencer(base: type, weights: dict, checkpoint_path: str) -> type:
    """A subclass of ``base`` (an OpenMMLab inferencer) that loads ``weights`` once, strictly.

    The stock inferencers re-read the checkpoint file themselves and load it with
    ``strict=False``, so a checkpoint for another model only warns and the demo then draws a
    randomly initialised model's output. This one loads the dict read safely above, fails on
    any missing, unexpected or mis-shaped weight, and gives the model the checkpoint's classes
    and palette (:func:`_dataset_meta`) in place of the stock loader's.
    """
    from metaformer_dense import CheckpointError
    from metaformer_runner import load_model_strictly

    class Checked(base):
        def _load_weights_to_model(self, model, checkpoint, cfg) -> None:
            try:
                load_model_strictly(model, weights['state_dict'], source=checkpoint_path)
            except CheckpointError as exc:
                raise DemoError(str(exc)) from exc
            model.dataset_meta = _dataset_meta(cfg, weights['meta'])

    Checked.__name__ = f'Checked{base.__name__}'
    return Checked


# ----------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> List[str]:
    """Predict and draw every input image; return the written file paths.

    Raises:
        DemoError: Bad image, checkpoint, config or device.
    """
    import mmcv
    import torch

    from metaformer_runner import load_config

    images = collect_images(args.inputs)
    for path in images:  # fail on a bad image before minutes go into building the model
        read_image(path)
    device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise DemoError(f'--device {device}: no CUDA device is visible here; use --device cpu')
    try:
        cfg = load_config(args.config, args.cfg_options)
    except (FileNotFoundError, ValueError) as exc:
        raise DemoError(str(exc)) from exc
    # Inference never needs the backbone's ImageNet file (the checkpoint holds every weight).
    backbone = cfg.model.get('backbone') or {}
    if isinstance(backbone, dict):
        backbone['init_cfg'] = None
    if cfg.get('visualizer'):
        cfg.visualizer.vis_backends = []  # this tool writes the pictures itself
    weights = read_weights(args.checkpoint)

    if cfg.default_scope == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = _checked_inferencer(DetInferencer, weights, args.checkpoint)(
            model=cfg, weights=None, device=device, show_progress=False)
        draw_kwargs = dict(pred_score_thr=args.score_thr)
    else:
        from mmseg.apis import MMSegInferencer
        inferencer = _checked_inferencer(MMSegInferencer, weights, args.checkpoint)(
            model=cfg, weights=None, device=device)
        inferencer.visualizer.set_dataset_meta(**inferencer.model.dataset_meta)
        inferencer.visualizer.alpha = args.opacity
        draw_kwargs = dict(with_labels=True)

    os.makedirs(args.out_dir, exist_ok=True)
    written, used = [], set()
    for path in images:
        img = read_image(path)
        height, width = img.shape[:2]
        padded = pad_to_aspect(img, MAX_ASPECT)
        with torch.no_grad():
            pred = inferencer(padded, return_datasamples=True)
        # mmdet answers {'predictions': [sample]}; mmseg the sample itself for a single image
        pred = pred['predictions'] if isinstance(pred, dict) else pred
        pred = pred[0] if isinstance(pred, list) else pred
        name = osp.splitext(osp.basename(path))[0]
        stem, n = name, 1
        while name in used:  # same file name from two folders
            name, n = f'{stem}_{n}', n + 1
        used.add(name)
        out_file = osp.join(args.out_dir, name + '.png')
        inferencer.visualizer.add_datasample(
            name, padded[..., ::-1], pred, draw_gt=False, draw_pred=True, show=False,
            out_file=out_file, **draw_kwargs)
        note = ''
        if padded.shape != img.shape:  # drawn on the padded canvas: cut back to the image
            mmcv.imwrite(mmcv.imread(out_file)[:height, :width], out_file)
            note = f'; padded to {padded.shape[1]}x{padded.shape[0]} for the model'
        print(f'{path} -> {out_file}' + _summary(pred, args.score_thr) + note, flush=True)
        written.append(out_file)
    return written


def pad_to_aspect(img, max_aspect: float):
    """Zero-pad the short side (bottom or right) so that long / short <= ``max_aspect``.

    A keep-ratio resize to the model's input scale would shrink the short side of a very
    elongated image below one pixel. Padding at the bottom/right leaves the coordinates of
    everything in the image unchanged.
    """
    import numpy as np
    height, width = img.shape[:2]
    need_h = int(np.ceil(width / max_aspect))
    need_w = int(np.ceil(height / max_aspect))
    if height >= need_h and width >= need_w:
        return img
    out = np.zeros((max(height, need_h), max(width, need_w), img.shape[2]), img.dtype)
    out[:height, :width] = img
    return out


def _summary(pred, score_thr: float) -> str:
    if 'pred_instances' in pred:
        kept = int((pred.pred_instances.scores >= score_thr).sum())
        return f' ({kept} detections >= {score_thr})'
    if 'pred_sem_seg' in pred:
        labels = pred.pred_sem_seg.data.unique().numel()
        return f' ({labels} classes in the label map)'
    return ''


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except DemoError as exc:
        sys.exit(f'error: {exc}')


if __name__ == '__main__':
    main()
