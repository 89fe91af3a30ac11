"""Layer-wise lr decay over a MetaFormer backbone: each parameter's lr and weight decay.

The expected layer of each parameter is written out by hand for ConvFormer-S18 and checked
against mmdet's own ConvNeXt rule (same depths as ConvNeXt-T) on every parameter; the
constructor is then built the way a Runner builds it, from the configs that use it.
"""
from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from torch import nn

from metaformer_dense import MetaFormerBackbone
from metaformer_dense.layer_decay import MetaFormerLayerDecayConstructor, layer_id
from conftest import REPO

LR, WD = 2e-4, 0.05


class Detector(nn.Module):
    """A backbone and a head: the attribute names the constructor reads."""

    def __init__(self, arch: str, **kwargs):
        super().__init__()
        self.backbone = MetaFormerBackbone(arch, **kwargs)
        self.head = nn.Conv2d(self.backbone.out_channels[-1], 8, 1)


def param_groups(model: nn.Module, decay_rate: float, decay_type: str = 'layer_wise') -> dict:
    """name -> (lr, weight decay) as the built optimizer holds them."""
    wrapper = MetaFormerLayerDecayConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=LR, weight_decay=WD)),
        dict(decay_rate=decay_rate, decay_type=decay_type))(model)
    ids = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            assert ids[id(p)] not in out, 'a parameter is in two groups'
            out[ids[id(p)]] = (group['lr'], group['weight_decay'])
    return out


def test_each_parameter_gets_the_lr_and_weight_decay_of_its_layer():
    model = Detector('convformer_s18')  # depths 3-3-9-3: layers 0 (stem) .. 6, heads 7
    groups = param_groups(model, decay_rate=0.9)
    assert set(groups) == {n for n, _ in model.named_parameters()}  # every parameter, once

    def lr_of(layer):  # 8 layers: stem 0 ... heads 7
        return LR * 0.9 ** (7 - layer)

    expected_layer = {
        'backbone.stem.conv.weight': 0,
        'backbone.stem.norm.weight': 0,
        'backbone.stages.0.blocks.2.mlp.fc1.weight': 1,
        'backbone.stages.1.downsample.conv.weight': 2,
        'backbone.stages.1.blocks.0.token_mixer.pwconv1.weight': 2,
        'backbone.stages.2.downsample.conv.weight': 3,
        'backbone.stages.2.blocks.2.mlp.fc2.weight': 3,
        'backbone.stages.2.blocks.3.mlp.fc2.weight': 4,
        'backbone.stages.2.blocks.8.token_mixer.dwconv.weight': 5,
        'backbone.stages.3.downsample.conv.weight': 6,
        'backbone.stages.3.blocks.2.mlp.fc1.weight': 6,
        'backbone.out_norms.3.weight': 7,  # fresh (not in ImageNet checkpoints): full rate
        'head.weight': 7,
    }
    for name, layer in expected_layer.items():
        lr, _ = groups[name]
        assert lr == pytest.approx(lr_of(layer)), name
    # Weight decay: none for biases and 1-D parameters (norms, layer scales, StarReLU scale).
    no_decay = ['backbone.stem.conv.bias', 'backbone.stem.norm.weight',
                'backbone.stages.2.blocks.4.norm1.weight', 'backbone.stages.1.blocks.0.mlp.act.scale',
                'backbone.stages.3.blocks.0.res_scale1.scale', 'backbone.out_norms.3.bias',
                'head.bias']
    for name in no_decay:
        assert groups[name][1] == 0.0, name
    for name in ('backbone.stem.conv.weight', 'backbone.stages.2.blocks.3.mlp.fc2.weight',
                 'head.weight'):
        assert groups[name][1] == WD, name


def test_layers_are_mmdets_convnext_layers_for_the_same_depths():
    """ConvFormer-S18 has ConvNeXt-T's depths: every parameter lands where mmdet puts ConvNeXt's."""
    from mmdet.engine.optimizers.layer_decay_optimizer_constructor import \
        get_layer_id_for_convnext

    backbone = MetaFormerBackbone('convformer_s18')
    for name, _ in backbone.named_parameters():
        parts = name.split('.')
        if parts[0] == 'stem':
            convnext = 'backbone.downsample_layers.0.x'
        elif parts[0] == 'stages' and parts[2] == 'downsample':
            convnext = f'backbone.downsample_layers.{parts[1]}.x'
        elif parts[0] == 'stages':
            convnext = f'backbone.stages.{parts[1]}.{parts[3]}.x'
        else:
            convnext = f'backbone.norm{parts[1]}.weight'  # ConvNeXt's output norms
        assert layer_id(name, backbone.depths) == get_layer_id_for_convnext(convnext, 6), name


@pytest.mark.parametrize('arch,last', [('poolformer_s12', 5), ('poolformer_m48', 11),
                                       ('caformer_s36', 9)])
def test_stem_decays_most_and_deeper_archs_get_more_layers(arch, last):
    model = Detector(arch)
    groups = param_groups(model, decay_rate=0.8)
    assert groups['backbone.stem.conv.weight'][0] == pytest.approx(LR * 0.8 ** (last + 1))
    assert groups['backbone.stages.3.blocks.0.mlp.fc1.weight'][0] == pytest.approx(LR * 0.8)
    assert groups['head.weight'][0] == pytest.approx(LR)


def test_stage_wise_and_frozen_parameters():
    model = Detector('poolformer_s12', frozen_stages=1)  # stem and stage 0 frozen
    groups = param_groups(model, decay_rate=0.5, decay_type='stage_wise')
    assert not any(n.startswith(('backbone.stem.', 'backbone.stages.0.')) for n in groups)
    assert groups['backbone.stages.1.blocks.0.mlp.fc1.weight'][0] == pytest.approx(LR * 0.5 ** 3)
    assert groups['backbone.stages.3.blocks.1.mlp.fc1.weight'][0] == pytest.approx(LR * 0.5)
    assert groups['head.weight'][0] == pytest.approx(LR)


@pytest.mark.parametrize('paramwise,message', [
    (dict(decay_rate=1.5), 'decay_rate in (0, 1]'),
    (dict(), 'decay_rate in (0, 1]'),
    (dict(decay_rate=0.9, decay_type='block_wise'), "decay_type must be one of"),
    (dict(decay_rate=0.9, custom_keys={}), "unknown paramwise_cfg keys ['custom_keys']"),
])
def test_bad_settings_are_named(paramwise, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')
                       .replace('[', r'\[').replace(']', r'\]')):
        MetaFormerLayerDecayConstructor(dict(optimizer=dict(type='AdamW', lr=LR)), paramwise)


def test_num_layers_copied_from_another_backbone_and_foreign_backbones_are_errors():
    ctor = MetaFormerLayerDecayConstructor(dict(optimizer=dict(type='AdamW', lr=LR)),
                                           dict(decay_rate=0.9, num_layers=6))
    with pytest.raises(ValueError, match='num_layers=6 does not fit convformer_s36.*num_layers=9'):
        ctor(Detector('convformer_s36'))
    ctor(Detector('convformer_s18'))  # 6 is right for 3-3-9-3
    other = nn.Module()
    other.backbone = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match="`backbone` is the MetaFormer backbone.*got Conv2d"):
        ctor(other)


@pytest.mark.parametrize('stem,rate', [('mask_rcnn_3x_ms_convformer_s36', 0.95),
                                       ('cascade_mask_rcnn_3x_caformer_s18', 0.7)])
def test_detection_configs_build_the_decayed_optimizer(stem, rate):
    """As a Runner does: the config's optim_wrapper through mmengine's builder, mmdet scope."""
    import mmdet_plugin  # noqa: F401  (registers the constructor with mmdet)
    from mmdet.registry import MODELS

    cfg = Config.fromfile(str(REPO / 'configs' / f'{stem}.py'))
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base = cfg.optim_wrapper.optimizer.lr
    last = 4 + (model.backbone.depths[2] - 1) // 3
    lrs = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            lrs[id(p)] = group['lr']
    assert lrs[id(model.backbone.stem.conv.weight)] == pytest.approx(base * rate ** (last + 1))
    assert lrs[id(model.neck.lateral_convs[0].conv.weight)] == pytest.approx(base)
    assert len(lrs) == sum(1 for p in model.parameters() if p.requires_grad)


def test_mmseg_registers_the_constructor_too():
    import mmseg_plugin  # noqa: F401
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

    init_default_scope('mmseg')
    wrapper = build_optim_wrapper(Detector('poolformer_s12'), dict(
        type='OptimWrapper', constructor='MetaFormerLayerDecayConstructor',
        optimizer=dict(type='AdamW', lr=LR, weight_decay=WD), paramwise_cfg=dict(decay_rate=0.9)))
    assert OPTIM_WRAPPER_CONSTRUCTORS.get('MetaFormerLayerDecayConstructor') is \
        MetaFormerLayerDecayConstructor
    assert min(g['lr'] for g in wrapper.optimizer.param_groups) == pytest.approx(LR * 0.9 ** 6)
    assert isinstance(wrapper.optimizer, torch.optim.AdamW)
