"""The backbone implementations the speed benchmark compares, on identical weights, and the
checks that they compute the same function.

``toolkit`` (:class:`metaformer_dense.MetaFormerBackbone`, channels-last), ``toolkit-nchw``,
``toolkit-torch-norms`` (torch's ``group_norm`` instead of the CUDA path's), ``timm`` (``features_only``) and ``mmpretrain`` (its PoolFormer) receive the same random weights,
with layer scales large enough that every block matters. Outputs are compared in fp32 with
``atol=1e-4``: the toolkit's and mmpretrain's normalised outputs directly; timm's
``features_only`` has no output norms, so its raw stage outputs are compared with the toolkit's
stage outputs before the norms. Parameter gradients are compared with mmpretrain's as well.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from metaformer_dense import MetaFormerBackbone, convert_state_dict, cuda_path

IMPLS = ('toolkit', 'toolkit-nchw', 'toolkit-torch-norms', 'timm', 'mmpretrain')
#: Implementations that differ from the toolkit only on CUDA (timed there only by default).
CUDA_ONLY_IMPLS = ('toolkit-torch-norms',)
ATOL = 1e-4


# ----------------------------------------------------------------------------------------------
# Building the implementations on identical weights
# ----------------------------------------------------------------------------------------------
def randomize_(model: nn.Module, seed: int = 0) -> None:
    """Give a toolkit backbone random weights under which every block changes the output.

    ImageNet initialisation sets layer scales to 1e-5/1e-6, which would make all blocks
    near-identities and an agreement check meaningless.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if 'layer_scale' in name:
                p.copy_(0.1 + 0.2 * noise.abs())
            elif 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith('bias'):
                p.copy_(0.02 * noise)
            else:  # conv weights, fan-in scaled so activations stay O(1)
                fan_in = p[0].numel()
                p.copy_(noise / fan_in ** 0.5)


def copy_by_names(dst: nn.Module, src_state: Dict[str, torch.Tensor],
                   name_map: Dict[str, str]) -> None:
    """Copy ``src_state[name_map[k]]`` into every tensor ``k`` of ``dst``; all must be covered."""
    own = dst.state_dict()
    missing = [k for k in own if name_map.get(k) not in src_state]
    if missing:
        raise RuntimeError(f'no source weight for {len(missing)} keys of {type(dst).__name__} '
                           f'(first: {missing[:3]})')
    dst.load_state_dict({k: src_state[name_map[k]].reshape(own[k].shape) for k in own})


def timm_features(arch: str, state: Dict[str, torch.Tensor]) -> nn.Module:
    """timm ``features_only`` model (no output norms) carrying the toolkit's weights."""
    import timm
    model = timm.create_model(arch, features_only=True, pretrained=False)
    # FeatureListNet flattens `stages.N` into `stages_N`; everything else keeps timm's names.
    names = {k: k.replace('stages_', 'stages.', 1) for k in model.state_dict()}
    copy_by_names(model, state, names)
    return model


def mmpretrain_poolformer(arch: str, state: Dict[str, torch.Tensor]) -> nn.Module:
    """mmpretrain's PoolFormer with output norms after network positions 0, 2, 4, 6."""
    from mmpretrain.models.backbones import PoolFormer
    size = arch.split('_')[-1]
    # frozen_stages=-1: mmpretrain's default (0) freezes the stem, ours and timm's train it.
    model = PoolFormer(arch=size, out_indices=(0, 2, 4, 6), frozen_stages=-1)
    # The toolkit's converter names every mmpretrain key (official layout) in toolkit terms.
    conv = convert_state_dict(model.state_dict(), reference=state)
    copy_by_names(model, state, dict(conv.renamed) | {
        k: k for k in model.state_dict() if k not in dict(conv.renamed)})
    return model


def build_backbones(arch: str, impls: Sequence[str], seed: int = 0) -> Dict[str, nn.Module]:
    """The requested implementations of ``arch``, all with the same random weights."""
    ours = MetaFormerBackbone(arch)
    randomize_(ours, seed)
    state = {k: v.contiguous() for k, v in ours.state_dict().items()}
    models = {}
    for impl in impls:
        if impl == 'toolkit':
            models[impl] = ours
        elif impl == 'toolkit-nchw':
            m = MetaFormerBackbone(arch, channels_last=False)
            m.load_state_dict(state)
            models[impl] = m
        elif impl == 'toolkit-torch-norms':
            m = MetaFormerBackbone(arch)
            m.load_state_dict(state)
            models[impl] = TorchNorms(m)
        elif impl == 'timm':
            models[impl] = timm_features(arch, state)
        elif impl == 'mmpretrain':
            models[impl] = mmpretrain_poolformer(arch, state)
        else:
            raise ValueError(f'unknown implementation {impl!r}; choose from {IMPLS}')
    return models


class TorchNorms(nn.Module):
    """A toolkit backbone run with torch's own ``group_norm`` on every device (its CUDA path,
    :mod:`metaformer_dense.cuda_path`, off): what the spread norms buy, side by side."""

    def __init__(self, backbone: MetaFormerBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        with cuda_path.used_on():
            return self.backbone(x)


class TimmWithOutputNorms(nn.Module):
    """timm's ``features_only`` model followed by the dense backbone's output GroupNorms.

    Used inside the detector so that all backbones compute the same function; only the stages
    (the part being compared) differ in implementation.
    """

    def __init__(self, features: nn.Module, norms: Sequence[nn.Module]):
        super().__init__()
        self.features = features
        self.norms = nn.ModuleList(norms)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(n(f) for n, f in zip(self.norms, self.features(x)))


def build_retinanets(config: Path, impls: Sequence[str]) -> Dict[str, nn.Module]:
    """RetinaNet-S12 detectors that differ only in the backbone implementation, same weights.

    The detector is built from ``config`` (backbone: the toolkit's, as the config says); for the
    other implementations its backbone is replaced by an equivalent one with the same weights.
    """
    import copy

    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import mmdet_plugin  # noqa: F401  (registers type='MetaFormer')
    from mmpretrain.models.backbones import PoolFormer

    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None  # no ImageNet file needed: random weights below
    init_default_scope('mmdet')
    ref = MODELS.build(cfg.model)
    randomize_(ref.backbone)
    bstate = {k: v.contiguous() for k, v in ref.backbone.state_dict().items()}
    arch, out_indices = ref.backbone.arch, ref.backbone.out_indices
    dets = {}
    for impl in impls:
        if impl == 'toolkit':
            dets[impl] = ref
            continue
        det = copy.deepcopy(ref)
        if impl == 'toolkit-nchw':
            det.backbone = MetaFormerBackbone(arch, out_indices=out_indices, channels_last=False)
            det.backbone.load_state_dict(bstate)
        elif impl == 'timm':
            import timm
            feats = timm.create_model(arch, features_only=True, out_indices=out_indices)
            copy_by_names(feats, bstate,
                           {k: k.replace('stages_', 'stages.', 1) for k in feats.state_dict()})
            det.backbone = TimmWithOutputNorms(
                feats, [copy.deepcopy(ref.backbone.out_norms[str(i)]) for i in out_indices])
        elif impl == 'mmpretrain':
            det.backbone = PoolFormer(arch=arch.split('_')[-1], frozen_stages=-1,
                                      out_indices=tuple(2 * i for i in out_indices))
            conv = convert_state_dict(det.backbone.state_dict(), reference=bstate)
            ren = dict(conv.renamed)
            copy_by_names(det.backbone, bstate,
                           {k: ren.get(k, k) for k in det.backbone.state_dict()})
        else:
            raise ValueError(f'unknown implementation {impl!r}')
        dets[impl] = det
    return dets


# ----------------------------------------------------------------------------------------------
# Agreement checks
# ----------------------------------------------------------------------------------------------
def _stage_outputs(model: MetaFormerBackbone, x: torch.Tensor) -> List[torch.Tensor]:
    """Raw stage outputs of a toolkit backbone: the inputs of its output norms.

    (Hooks on the stages themselves would send the backbone down timm's module path, which
    is not the path being measured.)
    """
    raw: List[torch.Tensor] = []
    hooks = [n.register_forward_pre_hook(lambda _m, args: raw.append(args[0]))
             for n in model.out_norms.values()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return raw


def max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> Tuple[float, float]:
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b)):
        raise RuntimeError(f'output shapes differ: {[tuple(p.shape) for p in a]} vs '
                           f'{[tuple(q.shape) for q in b]}')
    diff = max((p.float() - q.float()).abs().max().item() for p, q in zip(a, b))
    scale = max(q.float().abs().max().item() for q in b)
    return diff, scale


class _NoTF32:
    """Full fp32 matrix products and convolutions on CUDA for the agreement checks (timing keeps
    torch's defaults: cuDNN convolutions in TF32, which differ from fp32 by ~1e-3)."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def check_agreement(models: Dict[str, nn.Module], x: torch.Tensor) -> Dict[str, dict]:
    """Compare every implementation's fp32 outputs with the toolkit's (``atol=1e-4``)."""
    with _NoTF32():
        return _check_agreement(models, x)


def _check_agreement(models: Dict[str, nn.Module], x: torch.Tensor) -> Dict[str, dict]:
    for model in models.values():
        model.eval()  # (mmpretrain's train() returns None, so no chaining)
    ours = models['toolkit']
    result = {}
    with torch.no_grad():
        ref = ours(x)
        ref_raw = _stage_outputs(ours, x)
        for impl, model in models.items():
            if impl == 'toolkit':
                continue
            if impl == 'timm':
                diff, scale = max_diff(model(x), ref_raw)
                what = 'raw stage outputs (timm features_only has no output norms)'
            else:
                diff, scale = max_diff(model(x), ref)
                what = 'normalised outputs'
            result[impl] = dict(compared=what, max_abs_diff=diff, max_abs_value=scale,
                                ok=diff <= ATOL)
    return result


def check_gradients(ours: nn.Module, other: nn.Module, x: torch.Tensor) -> dict:
    """Backward through both backbones with the same loss; compare the stem's weight gradient."""
    with _NoTF32():
        return _check_gradients(ours, other, x)


def _check_gradients(ours: nn.Module, other: nn.Module, x: torch.Tensor) -> dict:
    grads = []
    for model in (ours, other):
        model.train()
        model.zero_grad(set_to_none=True)
        sum(o.square().mean() for o in model(x)).backward()
        stem = model.stem.conv if hasattr(model, 'stem') else model.patch_embed.proj
        grads.append(stem.weight.grad.detach().clone())
        model.zero_grad(set_to_none=True)
    diff = (grads[0] - grads[1]).abs().max().item()
    return dict(compared='stem conv weight gradient of sum(mean(out**2))', max_abs_diff=diff,
                max_abs_value=grads[1].abs().max().item(), flows=bool(grads[0].abs().sum() > 0),
                ok=diff <= ATOL and bool(grads[0].abs().sum() > 0))
