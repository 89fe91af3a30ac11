"""Checkpoint formats: every layout users hold loads and gives the reference outputs.

The reference is mmpretrain's PoolFormer (an independent implementation using the official key
names). timm-format files are produced with timm's own converter, so neither side of the
comparison uses this toolkit's conversion code.
"""
import pytest
import torch
import mmpretrain.models.backbones as mmpretrain_backbones  # pinned for tests: no import, no pass
from safetensors.torch import save_file

from metaformer_dense import CheckpointError, MetaFormerBackbone, convert_state_dict
from metaformer_dense.checkpoint import detect_format

V1_SIZES = ('s12', 's24', 's36', 'm36', 'm48')
X = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(0))


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif 'layer_scale' in name:  # ImageNet init is 1e-5..1e-6; make the blocks matter
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _reference(size, seed=0, norms=True):
    ref = mmpretrain_backbones.PoolFormer(arch=size, out_indices=(0, 2, 4, 6))
    ref.eval()  # mmpretrain's train() returns None, so no chaining
    _randomize(ref, seed)
    if not norms:  # formats without output norms: compare against freshly initialised norms
        for i in (0, 2, 4, 6):
            getattr(ref, f'norm{i}').reset_parameters()
    with torch.no_grad():
        return ref, ref(X)


def _timm_state_dict(official_sd, size):
    import timm
    from timm.models.metaformer import checkpoint_filter_fn
    model = timm.create_model(f'poolformer_{size}')
    model.load_state_dict(checkpoint_filter_fn(
        {k: v for k, v in official_sd.items() if not k.startswith('norm')}, model), strict=False)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _assert_same(outs, ref_outs):
    assert len(outs) == len(ref_outs) == 4
    for a, b in zip(outs, ref_outs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _load_backbone(path, size):
    model = MetaFormerBackbone(f'poolformer_{size}',
                               init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    with torch.no_grad():
        return model.eval()(X)


@pytest.mark.parametrize('size', V1_SIZES)
def test_backbone_formats_match_mmpretrain(size, tmp_path):
    ref, ref_outs = _reference(size)
    official = {k: v for k, v in ref.state_dict().items() if not k.startswith('norm')}

    # official ImageNet release: raw state dict with classifier keys
    raw = dict(official, **{'norm.weight': torch.ones(512), 'head.weight': torch.zeros(1000, 512)})
    torch.save(raw, tmp_path / 'official.pth.tar')
    # mmpretrain: {'meta', 'state_dict'} with backbone. prefix, output norms norm0/2/4/6
    torch.save({'meta': {'mmpretrain_version': '1.2.0'},
                'state_dict': {f'backbone.{k}': v for k, v in ref.state_dict().items()}},
               tmp_path / 'mmpretrain.pth')
    _assert_same(_load_backbone(tmp_path / 'mmpretrain.pth', size), ref_outs)

    # formats without output norms are compared with fresh norms
    ref_plain, plain_outs = _reference(size, norms=False)
    _assert_same(_load_backbone(tmp_path / 'official.pth.tar', size), plain_outs)
    timm_sd = _timm_state_dict(official, size)
    torch.save(timm_sd, tmp_path / 'timm.pth')
    save_file(timm_sd, str(tmp_path / 'timm.safetensors'))
    _assert_same(_load_backbone(tmp_path / 'timm.pth', size), plain_outs)
    _assert_same(_load_backbone(tmp_path / 'timm.safetensors', size), plain_outs)


class _Detector(torch.nn.Module):
    """A whole model shaped like an mmdet 2.x release: backbone + a neck conv."""

    def __init__(self, size):
        super().__init__()
        self.backbone = MetaFormerBackbone(f'poolformer_{size}')
        self.neck = torch.nn.Conv2d(self.backbone.out_channels[-1], 8, 1)


@pytest.mark.parametrize('size', V1_SIZES)
def test_paper_release_whole_model_loads_strictly(size, tmp_path):
    from mmengine.runner import load_checkpoint
    ref, ref_outs = _reference(size, seed=1)
    neck = torch.nn.Conv2d(512 if size.startswith('s') else 768, 8, 1)
    sd = {f'backbone.{k}': v for k, v in ref.state_dict().items()}
    sd.update({f'neck.{k}': v for k, v in neck.state_dict().items()})
    path = tmp_path / 'release.pth'
    torch.save({'meta': {'mmdet_version': '2.19.0', 'CLASSES': ('person', 'car')},
                'state_dict': sd, 'optimizer': {}}, path)
    model = _Detector(size)
    load_checkpoint(model, str(path), map_location='cpu', strict=True)
    with torch.no_grad():
        _assert_same(model.backbone.eval()(X), ref_outs)
    assert torch.equal(model.neck.weight, neck.weight)


def test_toolkit_checkpoint_round_trips(tmp_path):
    a = MetaFormerBackbone('convformer_s18').eval()
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in a.state_dict().items()}},
               tmp_path / 'mine.pth')
    b = MetaFormerBackbone('convformer_s18', init_cfg=dict(type='Pretrained',
                                                           checkpoint=str(tmp_path / 'mine.pth')))
    b.init_weights()
    x = torch.randn(1, 3, 64, 64)
    assert all(torch.equal(p, q) for p, q in zip(a(x), b.eval()(x)))


def _official_baselines_layout(timm_sd):
    """Write a timm MetaFormer state dict in the official MetaFormer-baselines layout
    (downsample_layers.N, stages.i.j, Linear MLP weights), independently of our converter."""
    out = {}
    for k, v in timm_sd.items():
        if k.startswith('stem.'):
            k = k.replace('stem.norm.', 'downsample_layers.0.post_norm.').replace(
                'stem.conv.', 'downsample_layers.0.conv.')
        elif '.downsample.' in k:
            i = k.split('.')[1]
            k = k.replace(f'stages.{i}.downsample.norm.', f'downsample_layers.{i}.pre_norm.')
            k = k.replace(f'stages.{i}.downsample.conv.', f'downsample_layers.{i}.conv.')
        elif k.startswith('stages.'):
            k = k.replace('.blocks.', '.', 1)
        elif k.startswith('head.norm.'):
            k = k.replace('head.norm.', 'norm.')
        elif k.startswith('head.fc.'):
            k = k.replace('head.fc.', 'head.')
        if '.mlp.fc' in k and v.dim() == 4:  # official baselines MLPs are nn.Linear
            v = v.flatten(1)
        out[k] = v
    return out


@pytest.mark.parametrize('arch', ['convformer_s18', 'caformer_s18', 'poolformerv2_s12'])
def test_official_baselines_conversion_agrees_with_timm(arch):
    import timm
    from timm.models.metaformer import checkpoint_filter_fn
    model = timm.create_model(arch)
    official = _official_baselines_layout(model.state_dict())
    assert detect_format(official) == 'metaformer_official'
    ours = MetaFormerBackbone(arch)
    conv = convert_state_dict(official, reference=ours.state_dict())
    timm_view = checkpoint_filter_fn(official, model)
    body = {k: v for k, v in timm_view.items() if not k.startswith('head.')}
    assert set(conv.state_dict) == set(body)
    for k, v in body.items():
        assert torch.equal(conv.state_dict[k], v.reshape(conv.state_dict[k].shape)), k
    assert set(ours.state_dict()) - set(conv.state_dict) == {
        k for k in ours.state_dict() if k.startswith('out_norms.')}
    assert all(k.startswith(('head', 'norm.')) for k in conv.dropped) and conv.dropped


def test_conversion_reports_renames_and_drops():
    ref = mmpretrain_backbones.PoolFormer(arch='s12', out_indices=(0, 2, 4, 6))
    sd = dict(ref.state_dict(), **{'head.weight': torch.zeros(2, 512), 'norm.weight': torch.ones(512)})
    conv = convert_state_dict(sd)
    assert conv.source_format == 'poolformer_official'
    assert ('patch_embed.proj.weight', 'stem.conv.weight') in conv.renamed
    assert ('network.1.proj.weight', 'stages.1.downsample.conv.weight') in conv.renamed
    assert ('network.6.1.layer_scale_2', 'stages.3.blocks.1.layer_scale2.scale') in conv.renamed
    assert ('norm4.bias', 'out_norms.2.bias') in conv.renamed
    assert sorted(conv.dropped) == ['head.weight', 'norm.weight']
    assert set(conv.state_dict) == set(MetaFormerBackbone('poolformer_s12').state_dict())


def _save_s12(tmp_path):
    sd = MetaFormerBackbone('poolformer_s12').state_dict()
    path = tmp_path / 's12.pth'
    torch.save(sd, path)
    return path


def test_wrong_depth_checkpoint_fails_clearly(tmp_path):
    model = MetaFormerBackbone('poolformer_s24', init_cfg=dict(type='Pretrained',
                                                               checkpoint=str(_save_s12(tmp_path))))
    with pytest.raises(CheckpointError, match=r'depths \(2, 2, 6, 2\).*poolformer_s24 has depths \(4, 4, 12, 4\)'):
        model.init_weights()


def test_wrong_width_checkpoint_names_both_shapes(tmp_path):
    model = MetaFormerBackbone('poolformer_m36', init_cfg=dict(type='Pretrained',
                                                               checkpoint=str(_save_s12(tmp_path))))
    with pytest.raises(CheckpointError, match=r'checkpoint \(64, 3, 7, 7\) vs model \(96, 3, 7, 7\)'):
        model.init_weights()


def test_wrong_arch_whole_model_fails_in_strict_load(tmp_path):
    from mmengine.runner import load_checkpoint
    sd = {f'backbone.{k}': v for k, v in MetaFormerBackbone('poolformer_s12').state_dict().items()}
    torch.save({'state_dict': sd}, tmp_path / 'det.pth')
    # An error naming the shapes and depths, strict or not (mmdet's init_detector is not strict).
    for strict in (True, False):
        model = _Detector('m36')
        with pytest.raises(CheckpointError, match=r'does not fit poolformer_m36.*stem.conv.weight: '
                           r'checkpoint \(64, 3, 7, 7\) vs model \(96, 3, 7, 7\).*depths \(2, 2, 6, 2\)'):
            load_checkpoint(model, str(tmp_path / 'det.pth'), strict=strict)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint at all, just text' * 10)
    model = MetaFormerBackbone(init_cfg=dict(type='Pretrained', checkpoint=str(junk)))
    with pytest.raises(CheckpointError, match='not a .*PyTorch checkpoint'):
        model.init_weights()
    torch.save({'foo': torch.zeros(3)}, tmp_path / 'other.pth')
    model = MetaFormerBackbone(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'other.pth')))
    with pytest.raises(CheckpointError, match='not a MetaFormer'):
        model.init_weights()


class _Payload:
    """Unpickling this runs code: it would create the file named by `target`."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, 'w'))


def test_pickle_payload_is_not_executed(tmp_path):
    from mmengine.runner import load_checkpoint
    target = tmp_path / 'pwned'
    sd = {f'backbone.{k}': v for k, v in MetaFormerBackbone('poolformer_s12').state_dict().items()}
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': sd, 'meta': {'note': _Payload(str(target))}}, path)
    # backbone Pretrained init: our reader refuses it and names the object
    model = MetaFormerBackbone(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=r'pickled Python object \((io|builtins).open\).*refused') as err:
        model.init_weights()
    assert 'weights_only=False' not in str(err.value)  # the fix it names is a safe one
    assert 'tools/publish_model.py' in str(err.value)
    # whole-model loading through mmengine (after the plugins' allow-list is installed)
    import mmdet_plugin  # noqa: F401
    with pytest.raises(Exception, match='Weights only load failed'):
        load_checkpoint(_Detector('s12'), str(path), strict=True)
    assert not target.exists()
