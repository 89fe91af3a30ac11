"""The MetaFormer backbone's output contract and OpenMMLab-style arguments."""
import math

import pytest
import torch

from metaformer_dense import ARCHS, MetaFormerBackbone


def _expected_hw(h, w, stride):
    # stem: conv 7x7 / 4, pad 2; each later stage: conv 3x3 / 2, pad 1
    h, w = (h + 4 - 7) // 4 + 1, (w + 4 - 7) // 4 + 1
    for _ in range(int(math.log2(stride // 4))):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h, w


def test_every_timm_metaformer_is_available():
    families = {a.split('_')[0] for a in ARCHS}
    assert families == {'poolformer', 'poolformerv2', 'convformer', 'caformer', 'identityformer',
                        'randformer'}
    for size in ('s12', 's24', 's36', 'm36', 'm48'):
        assert f'poolformer_{size}' in ARCHS


@pytest.mark.parametrize('arch', ARCHS)
def test_declared_channels_and_strides_match_outputs(arch):
    model = MetaFormerBackbone(arch).eval()
    h, w = 97, 71  # divisible by neither 32 nor 4
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    assert len(outs) == 4 == len(model.out_channels) == len(model.strides)
    assert model.strides == (4, 8, 16, 32)
    for out, c, s in zip(outs, model.out_channels, model.strides):
        assert out.shape == (1, c, *_expected_hw(h, w, s))
        assert torch.isfinite(out).all()


def test_v1_widths_follow_reference():
    assert MetaFormerBackbone('poolformer_s12').out_channels == (64, 128, 320, 512)
    assert MetaFormerBackbone('poolformer_m36').out_channels == (96, 192, 384, 768)
    assert MetaFormerBackbone('s24').arch == 'poolformer_s24'  # mmpretrain-style short name


def test_out_indices_subset_and_truncation():
    model = MetaFormerBackbone('poolformer_s12', out_indices=(1, 2)).eval()
    assert len(model.stages) == 3  # stage 3 is never used, so it is not built
    assert sorted(model.out_norms.keys()) == ['1', '2']
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 320] == list(model.out_channels)
    assert model.strides == (8, 16)


def test_output_norm_is_groupnorm_over_channels():
    model = MetaFormerBackbone('poolformer_s12', out_indices=(3,)).eval()
    out = model(torch.randn(1, 3, 64, 64))[0]
    # GroupNorm(1, C) at init: zero mean, unit variance over (C, H, W) per sample
    assert abs(out.mean().item()) < 1e-4
    assert out.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize('frozen', [-1, 0, 1, 2, 4])
def test_frozen_stages(frozen):
    model = MetaFormerBackbone('poolformer_s12', frozen_stages=frozen)
    model.train()
    stem_frozen = frozen >= 0
    assert all(p.requires_grad != stem_frozen for p in model.stem.parameters())
    assert model.stem.training != stem_frozen
    for i, stage in enumerate(model.stages):
        is_frozen = i < frozen
        assert all(p.requires_grad != is_frozen for p in stage.parameters()), i
        assert all(m.training != is_frozen for m in stage.modules()), i
        assert all(p.requires_grad != is_frozen for p in model.out_norms[str(i)].parameters())
    outs = model(torch.randn(1, 3, 64, 64))
    if frozen == 4:  # nothing left to train
        assert not any(o.requires_grad for o in outs)
        return
    sum(o.sum() for o in outs).backward()  # frozen parts get no gradient
    if stem_frozen:
        assert model.stem.conv.weight.grad is None
    else:
        assert model.stem.conv.weight.grad is not None


def test_norm_eval_keeps_norms_in_eval_mode():
    model = MetaFormerBackbone('convformer_s18', norm_eval=True)
    model.train()
    norms = [m for m in model.modules()
             if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))]
    assert norms and all(not m.training for m in norms)
    assert model.stages[0].blocks[0].mlp.training  # everything else trains
    model2 = MetaFormerBackbone('convformer_s18', norm_eval=False).train()
    assert all(m.training for m in model2.modules())


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    a = MetaFormerBackbone('poolformer_s12', with_cp=False)
    b = MetaFormerBackbone('poolformer_s12', with_cp=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for m in (a, b):
        m.train()
        sum(o.square().sum() for o in m(x)).backward()
    assert torch.allclose(a.stages[2].blocks[0].mlp.fc1.weight.grad,
                          b.stages[2].blocks[0].mlp.fc1.weight.grad, atol=1e-5)


def test_drop_path_is_stochastic_in_training_only():
    model = MetaFormerBackbone('poolformer_s12', drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    o1 = model(x)[-1]
    torch.manual_seed(1)
    o2 = model(x)[-1]
    assert not torch.allclose(o1, o2)
    model.eval()
    assert torch.equal(model(x)[-1], model(x)[-1])


@pytest.mark.parametrize('kwargs, err, text', [
    (dict(arch='poolformer_s13'), ValueError, 'poolformer_s12'),
    (dict(out_indices=(0, 4)), ValueError, 'out_indices'),
    (dict(out_indices=(2, 1)), ValueError, 'out_indices'),
    (dict(out_indices=()), ValueError, 'out_indices'),
    (dict(frozen_stages=5), ValueError, 'frozen_stages'),
    (dict(frozen_stages=-2), ValueError, 'frozen_stages'),
    (dict(drop_path_rate=1.5), ValueError, 'drop_path_rate'),
    (dict(pool_size=5), TypeError, 'pool_size'),  # unknown arguments are not swallowed
])
def test_bad_arguments_raise(kwargs, err, text):
    with pytest.raises(err, match=text):
        MetaFormerBackbone(**kwargs)


def test_layer_scale_init_value_for_training_from_scratch():
    default = MetaFormerBackbone('poolformer_s36')
    scales = [p for n, p in default.named_parameters() if 'layer_scale' in n]
    assert scales and all(torch.all(p == 1e-6) for p in scales)  # s36's own init
    model = MetaFormerBackbone('poolformer_s36', layer_scale_init_value=0.5)
    scales = [p for n, p in model.named_parameters() if 'layer_scale' in n]
    assert len(scales) == 2 * sum(model.depths) and all(torch.all(p == 0.5) for p in scales)
    with pytest.raises(ValueError, match='no layer scales'):
        MetaFormerBackbone('convformer_s18', layer_scale_init_value=0.5)


def test_pretrained_path_is_the_deprecated_spelling_of_init_cfg(tmp_path):
    source = MetaFormerBackbone('poolformer_s12', out_indices=(0,))
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = str(tmp_path / 'weights.pth')
    torch.save(source.state_dict(), path)
    with pytest.warns(FutureWarning, match=r"pretrained=.* is deprecated; use init_cfg="):
        model = MetaFormerBackbone('poolformer_s12', out_indices=(0,), pretrained=path)
    assert model.init_cfg == dict(type='Pretrained', checkpoint=path)
    model.init_weights()
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    with pytest.raises(ValueError, match='keep only init_cfg'):
        MetaFormerBackbone(pretrained=path, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(TypeError, match='pretrained must be a checkpoint path'):
        MetaFormerBackbone(pretrained=True)
