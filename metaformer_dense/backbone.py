"""The MetaFormer dense-prediction backbone (PoolFormer v1/v2, ConvFormer, CAFormer,
IdentityFormer, RandFormer, and any registered token mixer).

PoolFormer: "MetaFormer Is Actually What You Need for Vision" (Yu et al., CVPR 2022).
ConvFormer / CAFormer / PoolFormerV2 / IdentityFormer / RandFormer: "MetaFormer Baselines for
Vision" (Yu et al., TPAMI 2024); the last two are built in :mod:`metaformer_dense.baselines`.

The blocks, stems and stages are timm's (``timm.models.metaformer``); this module only
(1) drops timm's classifier head, (2) adds one ``GroupNorm(1, C)`` on every emitted stage output,
as the papers' detection and segmentation backbones do, and (3) speaks OpenMMLab's backbone
vocabulary (``out_indices``, ``frozen_stages``, ``norm_eval``, ``with_cp``, ``init_cfg``).
It depends on torch, timm and mmengine only; the mmdet / mmseg plugins register it.
"""
from __future__ import annotations

import warnings
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn

from . import cuda_path, fast_path, group_norm, lean_training, mixers, weights_fit
from .baselines import BASELINE_ARCHS, build_baseline, is_baseline
from .checkpoint import convert_state_dict, extract_state_dict, read_checkpoint, split_backbone
from .compile_guard import CheckedCompile
from .errors import CheckpointError
from .weights_fit import WeightsFit

__all__ = ['MetaFormerBackbone', 'ARCHS', 'SHORT_NAMES', 'resolve_arch', 'find_arch']

#: Every MetaFormer variant timm ships (``poolformer*``, ``convformer_*``, ``caformer_*``) and the
#: MetaFormer-baselines archs timm lacks (``identityformer_*``, ``randformer_*``).
ARCHS: Tuple[str, ...] = tuple(sorted(timm.list_models(module='metaformer') + list(BASELINE_ARCHS)))
#: mmpretrain-style short names for the PoolFormer v1 sizes: ``'s12'`` -> ``'poolformer_s12'``.
SHORT_NAMES: Dict[str, str] = {s: f'poolformer_{s}' for s in ('s12', 's24', 's36', 'm36', 'm48')}


def resolve_arch(arch: str) -> str:
    """The full name of ``arch``: a name in :data:`ARCHS`, or a short name (``'s12'`` ... ``'m48'``).

    Raises:
        ValueError: Neither; the message lists the names that exist.
    """
    arch = SHORT_NAMES.get(arch, arch)
    if arch not in ARCHS:
        raise ValueError(f'unknown MetaFormer arch {arch!r}; choose one of: {", ".join(ARCHS)}')
    return arch


def find_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the timm MetaFormer architecture whose weights ``state_dict`` holds exactly.

    Args:
        state_dict: Backbone weights in any supported layout, without a ``backbone.`` prefix.

    Raises:
        CheckpointError: No architecture fits exactly (or the weights are not a MetaFormer's).
    """
    plain = convert_state_dict(state_dict).state_dict
    if any(k.endswith('.token_mixer.random_matrix') for k in plain):
        family = 'randformer_'
    elif any('.token_mixer.qkv.' in k for k in plain):
        family = 'caformer_'
    elif any('.token_mixer.pwconv1.' in k for k in plain):
        family = 'convformer_'
    else:
        fc1 = plain.get('stages.0.blocks.0.mlp.fc1.weight')
        # IdentityFormer's weights are PoolFormerV2's, name for name and shape for shape (the
        # pooling mixer has none): those are named PoolFormerV2.
        family = 'poolformer_' if fc1 is not None and fc1.ndim == 4 else 'poolformerv2_'
    for arch in (a for a in ARCHS if a.startswith(family)):
        with torch.device('meta'):  # shapes and dtypes only, no memory
            candidate = MetaFormerBackbone(arch)
        fit = candidate.fit_weights(state_dict)
        if fit.fits and not fit.unexpected:
            return arch
    raise CheckpointError(
        f'no {family}* architecture fits these weights exactly; pass --arch to see which '
        'keys or shapes differ')


_NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)


class MetaFormerBackbone(BaseModule):
    """MetaFormer backbone emitting normalised multi-scale stage features.

    Args:
        arch: A MetaFormer name (see :data:`ARCHS`, e.g. ``'poolformer_s12'``,
            ``'convformer_s18'``, ``'randformer_s12'``); ``'s12'`` ... ``'m48'`` are short for
            PoolFormer v1.
        in_channels: Input image channels.
        out_indices: Stages (0..3) whose outputs are returned, each after its own
            ``GroupNorm(1, C)``. Stages after the last index are not built.
        frozen_stages: ``-1`` freezes nothing, ``0`` the stem, ``k`` the stem and the first
            ``k`` stages (with their output norms), as mmdet's ResNet and Swin count.
        norm_eval: Keep normalisation layers in eval mode while training (GroupNorm / LayerNorm
            keep no running statistics; accepted for config compatibility).
        drop_path_rate: Stochastic depth rate, increasing linearly over blocks (timm's rule).
        with_cp: Checkpoint block activations to save memory at the cost of recomputation.
        layer_scale_init_value: Initial value of every layer scale, for training from scratch;
            ``None`` keeps the arch's own (1e-5 / 1e-6 for PoolFormer v1, which leaves the blocks
            nearly inert for hundreds of iterations without ImageNet weights). Loaded
            checkpoints overwrite it.
        channels_last: Run the stem and stages in channels-last (NHWC) memory: same math; it
            lets the stages run through :mod:`metaformer_dense.fast_path` on CPU. ``None``
            (default): NHWC on CPU, NCHW elsewhere (the faster layout of each, docs/speed.md),
            decided from the device the backbone is moved to (``.cuda()``, ``.to(...)``);
            ``True`` / ``False`` force it. Outputs are always plain contiguous NCHW tensors.
        compile: ``torch.compile`` the forward on its first call: ``True``, or a dict of
            ``torch.compile`` arguments. A new input shape may recompile (docs/speed.md). The
            first call per input signature is compared with eager; a compiled forward that
            disagrees is dropped with a warning (:mod:`metaformer_dense.compile_guard`);
            ``verify=False`` in the dict skips the check.
        lean_training: Each block saves only its input and ``fc1``'s output for backward and
            recomputes the rest (:mod:`metaformer_dense.lean_training`): same gradients, less
            memory kept for backward, any device; needs NHWC (``True`` makes
            ``channels_last=None`` pick it on every device) and no autocast. ``None`` (default):
            on for CPU tensors of pooling archs (PoolFormer v1/v2), off elsewhere, where it is
            slower than timm's modules (convolution mixers recompute their convolution; on CUDA
            ``with_cp`` is both faster and smaller): docs/speed.md has the measurements.
            ``True`` / ``False`` force it. ``with_cp`` takes precedence.
        token_mixers: Token mixers from mmengine's registry instead of the arch's:
            ``dict(type='MyMixer', ...)`` for every stage, or a list of four (``None`` keeps the
            arch's own mixer in that stage). Each block gets its own instance, built with
            ``dim`` (the stage's channels) as a default argument; it must map ``(N, C, H, W)``
            to the same shape (checked on every call). Checkpoints of the arch still load: the
            mixers' weights are reported missing. See :mod:`metaformer_dense.mixers`.
        init_cfg: mmengine init config. ``dict(type='Pretrained', checkpoint=PATH)`` accepts
            official, mmpretrain, timm (``.pth``/``.safetensors``), paper-release and toolkit
            checkpoints and reports missing and unexpected keys.
        pretrained: Deprecated: mmseg's older spelling of
            ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)`` (mmseg's
            ``EncoderDecoder(pretrained=PATH)`` hands it to the backbone). Accepted with a
            ``FutureWarning``; give ``init_cfg`` instead.
    """

    def __init__(self,
                 arch: str = 'poolformer_s12',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 drop_path_rate: float = 0.0,
                 with_cp: bool = False,
                 layer_scale_init_value: Optional[float] = None,
                 channels_last: Optional[bool] = None,
                 compile: Union[bool, dict] = False,
                 lean_training: Optional[bool] = None,
                 token_mixers: Union[None, dict, Sequence[Optional[dict]]] = None,
                 init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None):
        if pretrained is not None:
            if not isinstance(pretrained, str):
                raise TypeError(f'pretrained must be a checkpoint path (str) or None, got '
                                f'{pretrained!r}')
            if init_cfg is not None:
                raise ValueError(f'pretrained={pretrained!r} and init_cfg={init_cfg!r} both say '
                                 'how to initialise the backbone; keep only init_cfg')
            warnings.warn(f"MetaFormerBackbone: pretrained={pretrained!r} is deprecated; use "
                          f"init_cfg=dict(type='Pretrained', checkpoint={pretrained!r})",
                          FutureWarning, stacklevel=2)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        arch = resolve_arch(arch)
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not 0 <= i <= 3 for i in out_indices) \
                or len(set(out_indices)) != len(out_indices) or list(out_indices) != sorted(out_indices):
            raise ValueError(f'out_indices must be distinct increasing stage indices in 0..3, got {out_indices}')
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(f'frozen_stages must be an int in -1..4 (-1: nothing, 0: stem, '
                             f'k: stem + first k stages), got {frozen_stages!r}')
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
        for name, value in (('channels_last', channels_last), ('lean_training', lean_training)):
            if value is not None and not isinstance(value, bool):
                raise TypeError(f'{name} must be None (auto), True or False, got {value!r}')
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f'compile must be True/False or a dict of torch.compile arguments, '
                            f'got {compile!r}')

        self.arch = arch
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.channels_last = channels_last
        self.lean_training = lean_training
        self.compile_cfg: Optional[dict] = (dict(compile) if isinstance(compile, dict)
                                            else {} if compile else None)

        mixer_cfgs = mixers.normalise_mixer_cfgs(token_mixers)
        if is_baseline(arch):
            body = build_baseline(arch, in_chans=in_channels, drop_path_rate=drop_path_rate)
        else:
            body = timm.create_model(arch, pretrained=False, num_classes=0,
                                     in_chans=in_channels, drop_path_rate=drop_path_rate)
        last = max(out_indices)
        self.stem = body.stem
        self.stages = body.stages[:last + 1]
        info = body.feature_info[:last + 1]
        #: Name prefixes of the registry-built mixers' weights (no released checkpoint has them).
        self.mixer_prefixes: Tuple[str, ...] = tuple(mixers.install_mixers(
            self.stages, [f['num_chs'] for f in info], mixer_cfgs[:last + 1]))
        self.out_norms = nn.ModuleDict(
            {str(i): nn.GroupNorm(1, info[i]['num_chs']) for i in out_indices})
        for stage in self.stages:
            stage.set_grad_checkpointing(with_cp)
        self._fast_stages = tuple(fast_path.stage_supported(s) for s in self.stages)
        self._spread_stages = tuple(cuda_path.stage_supported(s) for s in self.stages)
        # Recomputing a pooling mixer in backward is cheap; a convolution mixer is not.
        self._pooling_mixers = all(type(b.token_mixer).__name__ == 'Pooling'
                                   for s in self.stages for b in s.blocks)
        #: Channels and strides of the emitted features, in output order.
        self.out_channels: Tuple[int, ...] = tuple(info[i]['num_chs'] for i in out_indices)
        self.strides: Tuple[int, ...] = tuple(info[i]['reduction'] for i in out_indices)
        self.depths: Tuple[int, ...] = tuple(len(s.blocks) for s in body.stages)
        self.dims: Tuple[int, ...] = tuple(f['num_chs'] for f in body.feature_info)
        del body  # the classifier head is not kept
        if layer_scale_init_value is not None:
            scales = [p for n, p in self.named_parameters() if 'layer_scale' in n]
            if not scales:
                raise ValueError(f'{arch} has no layer scales; drop layer_scale_init_value')
            with torch.no_grad():
                for p in scales:
                    p.fill_(float(layer_scale_init_value))
        self._match_weight_layout()
        self._freeze_stages()

    def _nhwc(self, device_type: str) -> bool:
        """Whether the stem and stages run channels-last on this device type."""
        if self.channels_last is not None:
            return self.channels_last
        return device_type == 'cpu' or self.lean_training is True

    def _match_weight_layout(self) -> None:
        # Convolution weights in the layout the forward runs in: a channels-last weight would
        # make cuDNN run an NCHW input channels-last too. Loading (load_state_dict copies in
        # place) and initialisation keep the layout.
        first = next(self.parameters(), None)
        if first is None:
            return
        fmt = (torch.channels_last if self._nhwc(first.device.type)
               else torch.contiguous_format)
        super()._apply(lambda t: t.contiguous(memory_format=fmt) if t.dim() == 4 else t)

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .cuda() / .cpu() / .half() ...: with channels_last=None the layout
        # follows the device the weights land on.
        out = super()._apply(fn, *args, **kwargs)
        if self.channels_last is None:
            self._match_weight_layout()
        return out

    # ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Compute the normalised features of the stages in ``out_indices``.

        Args:
            x: Images, ``(N, C, H, W)``.

        Returns:
            One contiguous NCHW tensor per index in ``out_indices``.
        """
        if self.compile_cfg is None:
            return self._forward(x)
        compiled = self.__dict__.get('_compiled_forward')
        if compiled is None:
            # Under the compiler _forward runs timm's modules (fast_path.observed): inductor fuses
            # them itself, and the CPU path's loops over row chunks would only unroll. Checked
            # against eager per input signature: the compiler can be silently wrong.
            compiled = CheckedCompile(self, self._forward, self.compile_cfg)
            # Kept out of state_dict, pickling and deepcopy (see __getstate__).
            self.__dict__['_compiled_forward'] = compiled
        return compiled(self, x)

    def _forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        # CPU: the same math with less memory traffic (fast_path.py), unless a tracer, exporter,
        # compiler or hook watches (they would see the chunk loop, the in-place updates and the
        # recomputation); timm's modules otherwise. With autograd, the memory-lean blocks
        # (any device, see lean_training). Decided once per call: a hook on the stem must see an
        # output that stage 0 does not overwrite.
        # The weights' device, not x's: under torch.fx, x (and a parameter reached as an
        # attribute) is a proxy that cannot be branched on.
        device_type = next(self.parameters()).device.type
        nhwc = self._nhwc(device_type)
        watched = fast_path.observed(self)
        unobserved = nhwc and not (self.with_cp and torch.is_grad_enabled()) and not watched
        # CUDA: timm's modules with GroupNorm(1, C) from multi-block reductions (cuda_path).
        spread = not watched and cuda_path.wanted(device_type)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        # `unobserved` first: under torch.fx, x is a proxy whose device cannot be branched on.
        lean = (unobserved and torch.is_grad_enabled()
                and (self.lean_training if self.lean_training is not None
                     else x.device.type == 'cpu' and self._pooling_mixers)
                and lean_training.lean_applies(x))
        fast = unobserved and fast_path.applies(x)
        outs = []
        for i, stage in enumerate(self.stages):
            if lean and self._fast_stages[i]:
                x = self._run_stage(i, lean_training.stage_forward_lean, x, stage)
            elif fast and self._fast_stages[i]:
                x = self._run_stage(i, fast_path.stage_forward, x, stage)
            elif spread and self._spread_stages[i]:
                x = self._run_stage(i, cuda_path.stage_forward, x, stage)
            else:
                x = self._run_stage(i, stage, x)
            if i in self.out_indices:
                norm = self.out_norms[str(i)]
                # Consumers (FPN, mmcv's CPU RoIAlign, ...) get plain NCHW tensors.
                outs.append((group_norm.norm_forward(norm, x) if spread else norm(x)).contiguous())
        return tuple(outs)

    @staticmethod
    def _run_stage(i: int, run, x: torch.Tensor, *args) -> torch.Tensor:
        """``run(*args, x)`` (a stage, or a fast-path function and its stage), naming stage
        ``i`` when a token mixer returns the wrong shape."""
        try:
            return run(*args, x)
        except mixers.MixerShapeError as exc:
            raise mixers.MixerShapeError(f'stage {i}: {exc}') from None

    def __getstate__(self) -> dict:
        # A compiled forward is bound to this instance: copies compile their own on first use.
        state = dict(super().__getstate__())
        state.pop('_compiled_forward', None)
        return state

    # ------------------------------------------------------------------------------------------
    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.stem)
        for i in range(min(self.frozen_stages, len(self.stages))):
            frozen.append(self.stages[i])
            if str(i) in self.out_norms:
                frozen.append(self.out_norms[str(i)])
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _NORM_TYPES):
                    m.eval()
        return self

    # ------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if not cfg.get('checkpoint'):
                raise ValueError("init_cfg=dict(type='Pretrained') needs checkpoint=PATH")
            self.load_pretrained(cfg['checkpoint'])
            self._is_init = True
        else:
            super().init_weights()

    def load_pretrained(self, path: str) -> Dict[str, list]:
        """Load backbone weights from a checkpoint file in any supported layout.

        ImageNet checkpoints carry no output norms; those stay freshly initialised and are
        reported as missing. Classifier weights are dropped and reported. The weights enter
        through ``load_state_dict``, the path whole-model loading takes too (see
        ``_load_from_state_dict``).

        Returns:
            ``{'missing': [...], 'unexpected': [...], 'dropped': [...]}``.

        Raises:
            CheckpointError: unreadable file, or weights for another architecture.
        """
        state, _ = split_backbone(extract_state_dict(read_checkpoint(path)))
        fit = self.fit_weights(state)
        fit.check(f'checkpoint {path!r}')  # the error names the file; loading checks again
        conv = fit.conversion
        keys = self.load_state_dict(conv.state_dict, strict=False)
        loaded = len(conv.state_dict) - len(keys.unexpected_keys)
        print_log(f'Loaded {conv.source_format} checkpoint {path} into {self.arch}: '
                  f'{loaded} tensors; missing (freshly initialised) '
                  f'{keys.missing_keys or "none"}; unexpected (unused) '
                  f'{keys.unexpected_keys or "none"}; dropped classifier keys '
                  f'{conv.dropped or "none"}', logger='current')
        return dict(missing=list(keys.missing_keys), unexpected=list(keys.unexpected_keys),
                    dropped=conv.dropped)

    def fit_weights(self, state_dict: Mapping[str, torch.Tensor]) -> WeightsFit:
        """Do these backbone weights (any supported layout) fit this backbone's architecture?

        See :func:`metaformer_dense.weights_fit.fit_weights`, the one answer to that question.
        """
        return weights_fit.fit_weights(self, state_dict)

    # ------------------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Whole-model loading (mmengine.runner.load_checkpoint(detector, ...), torch's
        # load_state_dict) reaches the backbone with keys under `prefix`. Keys in another layout
        # (official, mmpretrain, paper release, timm) are renamed here, in place, before the
        # children read them, so such checkpoints load strictly into a whole detector.
        mine = [k for k in state_dict if k.startswith(prefix)]
        if mine:
            local = {k[len(prefix):]: state_dict[k] for k in mine}
            # Weights that do not fit this arch are an error even for non-strict loaders
            # (mmdet's init_detector, mmseg's init_model and the inferencers load with
            # strict=False, which would only warn and leave a half-loaded backbone).
            fit = self.fit_weights(local)
            fit.check(f'checkpoint weights under {prefix!r}')
            conv = fit.conversion
            if conv.source_format != 'toolkit':
                for k in mine:
                    del state_dict[k]
                for k, v in conv.state_dict.items():
                    state_dict[prefix + k] = v
                for k in conv.dropped:  # left in place so strict loading reports them
                    state_dict[prefix + k] = local[k]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
