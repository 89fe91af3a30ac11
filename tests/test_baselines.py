"""IdentityFormer and RandFormer: build, parameter counts, official-layout checkpoints, outputs.

The reference below is written from the paper's description ("MetaFormer Baselines for Vision",
Yu et al.) and works on a plain dict of tensors under the official release's key names
(``downsample_layers.N.*``, ``stages.i.j.*``) in NHWC, as the release computes: it shares no
code with the backbone, timm's modules or the toolkit's checkpoint conversion.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from benchmarks.published import METAFORMER_BASELINES_IMAGENET as PUBLISHED
from metaformer_dense import CheckpointError, MetaFormerBackbone
from metaformer_dense.baselines import BASELINE_ARCHS, RandomMixing, build_baseline

SIZES = {'s12': ((2, 2, 6, 2), (64, 128, 320, 512)), 's24': ((4, 4, 12, 4), (64, 128, 320, 512)),
         's36': ((6, 6, 18, 6), (64, 128, 320, 512)), 'm36': ((6, 6, 18, 6), (96, 192, 384, 768)),
         'm48': ((8, 8, 24, 8), (96, 192, 384, 768))}



# ----------------------------------------------------------------------------------------------
# The reference: the paper's model on a dict of official-layout tensors
# ----------------------------------------------------------------------------------------------
def official_state_dict(arch, seed=0, classes=1000):
    """Random weights under the official release's names and shapes."""
    family, size = arch.split('_')
    depths, dims = SIZES[size]
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.05):
        return scale * torch.randn(*shape, generator=g)

    def norm_w(c):
        return 1 + 0.2 * torch.randn(c, generator=g)

    sd = {'downsample_layers.0.conv.weight': w(dims[0], 3, 7, 7, scale=0.1),
          'downsample_layers.0.conv.bias': w(dims[0]),
          'downsample_layers.0.post_norm.weight': norm_w(dims[0])}
    for i in range(1, 4):
        sd[f'downsample_layers.{i}.pre_norm.weight'] = norm_w(dims[i - 1])
        sd[f'downsample_layers.{i}.conv.weight'] = w(dims[i], dims[i - 1], 3, 3)
        sd[f'downsample_layers.{i}.conv.bias'] = w(dims[i])
    for i, (depth, c) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f'stages.{i}.{j}.'
            sd[p + 'norm1.weight'] = norm_w(c)
            if family == 'randformer' and i >= 2:
                n = 196 if i == 2 else 49
                sd[p + 'token_mixer.random_matrix'] = torch.softmax(
                    torch.rand(n, n, generator=g), dim=-1)
            if i >= 2:
                sd[p + 'res_scale1.scale'] = 1 + 0.1 * torch.randn(c, generator=g)
                sd[p + 'res_scale2.scale'] = 1 + 0.1 * torch.randn(c, generator=g)
            sd[p + 'norm2.weight'] = norm_w(c)
            sd[p + 'mlp.fc1.weight'] = w(4 * c, c)
            sd[p + 'mlp.act.scale'] = 0.8 + 0.1 * torch.randn(1, generator=g)
            sd[p + 'mlp.act.bias'] = 0.05 * torch.randn(1, generator=g)
            sd[p + 'mlp.fc2.weight'] = w(c, 4 * c)
    sd['norm.weight'], sd['norm.bias'] = norm_w(dims[3]), w(dims[3])
    sd['head.weight'], sd['head.bias'] = w(classes, dims[3]), w(classes)
    return sd


def reference_stages(sd, x, depths):
    """Stage outputs ``(N, C, H, W)`` of the paper's model with weights ``sd``."""
    def ln_c(t, weight):  # per-token LayerNorm over C, no bias, eps 1e-6 (NHWC)
        return F.layer_norm(t, t.shape[-1:], weight, None, 1e-6)

    def norm_hwc(t, weight):  # normalise over (H, W, C), scale per channel, no bias
        mean = t.mean(dim=(1, 2, 3), keepdim=True)
        var = t.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (t - mean) / torch.sqrt(var + 1e-6) * weight

    outs = []
    t = F.conv2d(x, sd['downsample_layers.0.conv.weight'], sd['downsample_layers.0.conv.bias'],
                 stride=4, padding=2).permute(0, 2, 3, 1)
    t = ln_c(t, sd['downsample_layers.0.post_norm.weight'])
    for i, depth in enumerate(depths):
        if i:
            t = ln_c(t, sd[f'downsample_layers.{i}.pre_norm.weight']).permute(0, 3, 1, 2)
            t = F.conv2d(t, sd[f'downsample_layers.{i}.conv.weight'],
                         sd[f'downsample_layers.{i}.conv.bias'], stride=2, padding=1)
            t = t.permute(0, 2, 3, 1)
        for j in range(depth):
            p = f'stages.{i}.{j}.'
            y = norm_hwc(t, sd[p + 'norm1.weight'])
            if p + 'token_mixer.random_matrix' in sd:
                b, h, w_, c = y.shape
                y = torch.einsum('mn,bnc->bmc', sd[p + 'token_mixer.random_matrix'],
                                 y.reshape(b, h * w_, c)).reshape(b, h, w_, c)
            t = (t * sd[p + 'res_scale1.scale'] if i >= 2 else t) + y
            y = norm_hwc(t, sd[p + 'norm2.weight']) @ sd[p + 'mlp.fc1.weight'].t()
            y = sd[p + 'mlp.act.scale'] * F.relu(y) ** 2 + sd[p + 'mlp.act.bias']
            y = y @ sd[p + 'mlp.fc2.weight'].t()
            t = (t * sd[p + 'res_scale2.scale'] if i >= 2 else t) + y
        outs.append(t.permute(0, 3, 1, 2))
    return outs


# ----------------------------------------------------------------------------------------------
def test_all_ten_are_archs_with_published_parameter_counts():
    assert len(BASELINE_ARCHS) == 10 and set(BASELINE_ARCHS) == set(PUBLISHED)
    for size in SIZES:
        ident = build_baseline(f'identityformer_{size}', num_classes=1000)
        rand = build_baseline(f'randformer_{size}', num_classes=1000)
        n_ident = sum(p.numel() for p in ident.parameters()) / 1e6
        n_rand = sum(p.numel() for p in rand.parameters()) / 1e6
        pub_i, pub_r = PUBLISHED[f'identityformer_{size}'], PUBLISHED[f'randformer_{size}']
        assert round(n_ident, 1) == pub_i['params_m'] == pub_r['params_m'], size
        assert round(n_rand - n_ident, 1) == pub_r['mixing_matrix_params_m'], size
        # and they are the official layout's parameters, one for one
        assert n_rand * 1e6 == sum(v.numel() for v in official_state_dict(
            f'randformer_{size}').values())


@pytest.mark.parametrize('arch', BASELINE_ARCHS)
def test_macs_at_224_as_published(arch):
    from mmengine.analysis import FlopAnalyzer
    model = build_baseline(arch, num_classes=1000).eval()
    flops = FlopAnalyzer(model, torch.randn(1, 3, 224, 224))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    # published with one decimal (rounded or cut): within 0.1 G
    assert abs(flops.total() / 1e9 - PUBLISHED[arch]['macs_g']) <= 0.1


def _save(sd, path):
    torch.save(sd, path)
    return str(path)


@pytest.mark.parametrize('arch', BASELINE_ARCHS)
def test_official_checkpoint_loads_strictly_and_equals_the_paper_model(arch, tmp_path):
    sd = official_state_dict(arch, seed=BASELINE_ARCHS.index(arch))
    path = _save(sd, tmp_path / f'{arch}.pth')
    model = MetaFormerBackbone(arch, init_cfg=dict(type='Pretrained', checkpoint=path))
    report = model.load_pretrained(path)
    assert report['unexpected'] == []
    assert all(k.startswith('out_norms.') for k in report['missing']) and report['missing']
    assert sorted(report['dropped']) == ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']
    model.init_weights()  # the init_cfg route the runners take
    assert torch.equal(model.stem.norm.weight, sd['downsample_layers.0.post_norm.weight'])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = [F.group_norm(r, 1) for r in reference_stages(sd, x, model.depths)]
        for channels_last in (None, False):  # the CPU fast path and timm's modules
            model.channels_last = channels_last
            outs = model.eval()(x)
            assert len(outs) == 4
            for out, r in zip(outs, ref):
                torch.testing.assert_close(out, r, atol=2e-4, rtol=1e-4)


def test_arch_fit_errors(tmp_path):
    rand = _save(official_state_dict('randformer_s12'), tmp_path / 'rand.pth')
    ident = _save(official_state_dict('identityformer_s12'), tmp_path / 'ident.pth')
    deeper = _save(official_state_dict('identityformer_s24'), tmp_path / 's24.pth')
    with pytest.raises(CheckpointError, match='random_matrix'):  # RandFormer into IdentityFormer
        MetaFormerBackbone('identityformer_s12').load_pretrained(rand)
    with pytest.raises(CheckpointError, match='lacks .*random_matrix'):
        MetaFormerBackbone('randformer_s12').load_pretrained(ident)
    with pytest.raises(CheckpointError, match=r'depths \(4, 4, 12, 4\).*\(2, 2, 6, 2\)'):
        MetaFormerBackbone('identityformer_s12').load_pretrained(deeper)
    with pytest.raises(CheckpointError, match='shape mismatches'):
        MetaFormerBackbone('randformer_m36').load_pretrained(rand)


def test_whole_model_strict_load_of_official_names():
    sd = official_state_dict('randformer_s12')
    model = MetaFormerBackbone('randformer_s12')
    # dense releases of the baselines name the output norms norm0 ... norm3
    own = {k.replace('out_norms.', 'norm'): v for k, v in model.state_dict().items()
           if k.startswith('out_norms.')}
    body = {k: v for k, v in sd.items() if not k.startswith(('head.', 'norm.'))}
    result = model.load_state_dict({**body, **own}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.stages[3].blocks[1].token_mixer.random_matrix,
                       sd['stages.3.1.token_mixer.random_matrix'])


def test_random_matrix_is_frozen_and_kept():
    model = MetaFormerBackbone('randformer_s12')
    mats = {n: p for n, p in model.named_parameters() if n.endswith('random_matrix')}
    assert len(mats) == 6 + 2
    assert all(not p.requires_grad for p in mats.values())
    assert {tuple(p.shape) for p in mats.values()} == {(196, 196), (49, 49)}
    for p in mats.values():  # row-stochastic as initialised
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[0]))
    model.train()
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 96))).backward()
    assert all(p.grad is None for p in mats.values())


# ----------------------------------------------------------------------------------------------
# RandomMixing at other sizes
# ----------------------------------------------------------------------------------------------
def _window_reference(mix, x):
    """Each side x side window from the top-left, mixed among its real tokens with the matrix
    restricted to them and its rows renormalised."""
    s, m = mix.side, mix.random_matrix
    out = torch.empty_like(x)
    _, c, h, w = x.shape
    idx = torch.arange(s * s).reshape(s, s)
    for top in range(0, h, s):
        for left in range(0, w, s):
            hh, ww = min(s, h - top), min(s, w - left)
            keep = idx[:hh, :ww].reshape(-1)
            sub = m[keep][:, keep]
            sub = sub / sub.sum(-1, keepdim=True)
            tok = x[:, :, top:top + hh, left:left + ww].reshape(x.shape[0], c, -1)
            out[:, :, top:top + hh, left:left + ww] = torch.einsum(
                'mn,bcn->bcm', sub, tok).reshape(x.shape[0], c, hh, ww)
    return out


@pytest.mark.parametrize('side', [14, 7])
def test_random_mixing_equals_the_paper_on_its_grid(side):
    mix = RandomMixing(side=side)
    x = torch.randn(2, 5, side, side)
    ref = torch.einsum('mn,bnc->bmc', mix.random_matrix,
                       x.permute(0, 2, 3, 1).reshape(2, side * side, 5))
    torch.testing.assert_close(mix(x), ref.reshape(2, side, side, 5).permute(0, 3, 1, 2))
    torch.testing.assert_close(mix(x.contiguous(memory_format=torch.channels_last)), mix(x))


@pytest.mark.parametrize('hw', [(20, 30), (50, 76), (5, 9), (28, 14), (15, 3)])
def test_random_mixing_windows_at_sizes_that_do_not_divide(hw):
    mix = RandomMixing(side=14)
    x = torch.randn(2, 3, *hw)
    out = mix(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _window_reference(mix, x))
    # padding never reaches a real token: constant input stays constant (rows sum to one)
    torch.testing.assert_close(mix(torch.ones(1, 2, *hw)), torch.ones(1, 2, *hw))


@pytest.mark.parametrize('size', [(320, 480), (800, 1216)])
def test_randformer_at_dense_sizes(size):
    model = MetaFormerBackbone('randformer_s12').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    h, w = size
    for out, c, s in zip(outs, model.out_channels, (4, 8, 16, 32)):
        assert out.shape == (1, c, -(-h // s), -(-w // s))
        assert torch.isfinite(out).all()


def test_find_arch_names_randformer_and_calls_identityformer_poolformerv2():
    from metaformer_dense.backbone import find_arch
    assert find_arch(official_state_dict('randformer_m36')) == 'randformer_m36'
    # the two have the same weight names and shapes: the docs say to give the arch
    assert find_arch(official_state_dict('identityformer_s24')) == 'poolformerv2_s24'


def test_randformer_config_trains_on_the_tiny_set(tmp_path):
    """configs/retinanet_randformer_s12.py's backbone in the quick tiny RetinaNet run of
    tests/configs (96 px images, six iterations), through tools/train.py."""
    from mmengine.config import Config
    from conftest import REPO, run_script
    backbone = Config.fromfile(str(REPO / 'configs/retinanet_randformer_s12.py')).model.backbone
    assert backbone.arch == 'randformer_s12'
    backbone.init_cfg = None  # no download in tests: from scratch
    (tmp_path / 'tiny.py').write_text(
        f"_base_ = '{REPO}/tests/configs/retinanet_poolformer_s12_tools.py'\n"
        f'model = dict(backbone={backbone.to_dict()!r})\n')
    proc = run_script(REPO / 'tools/train.py', tmp_path / 'tiny.py', '--work-dir', tmp_path / 'w')
    losses = [float(v) for v in re.findall(r'\bloss: ([0-9.]+)', proc.stdout + proc.stderr)]
    assert len(losses) >= 6 and all(math.isfinite(v) for v in losses)
    from metaformer_dense import allow_runner_checkpoints, read_checkpoint
    allow_runner_checkpoints()
    state = read_checkpoint(str(tmp_path / 'w/iter_6.pth'))['state_dict']
    assert state['backbone.stages.3.blocks.1.token_mixer.random_matrix'].shape == (49, 49)
