"""Token mixers from mmengine's registry in MetaFormer archs (``token_mixers=``)."""
import re

import pytest
import torch
from mmengine.registry import MODELS, DefaultScope
from timm.models.metaformer import Pooling
from torch import nn

from backbone_helpers import randomized, timm_modules_copy
from conftest import CPU_ENV, REPO, run_script
from metaformer_dense import (CheckpointError, MetaFormerBackbone, allow_runner_checkpoints,
                             read_checkpoint)
from metaformer_dense.mixers import MixerShapeError

X = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))


@MODELS.register_module(force=True)
class TmDWConvMixer(nn.Module):
    """A depthwise convolution (weights, any grid)."""

    def __init__(self, dim, kernel_size=3):
        super().__init__()
        self.dim = dim
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x):
        return self.conv(x)


@MODELS.register_module(force=True)
class TmDropoutMixer(nn.Module):
    """Random in training: recomputing it in backward would give other gradients."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.proj(x))


@MODELS.register_module(force=True)
class TmSqueezeMixer(nn.Module):
    """Wrong shape: (N, C, 1, 1) would broadcast silently into the residual."""

    def __init__(self, dim):
        super().__init__()

    def forward(self, x):
        return x.mean((2, 3), keepdim=True)


@MODELS.register_module(force=True)
class TmPoolNoSubtract(Pooling):
    """A Pooling subclass with its own forward: must not be short-cut as pool(y) - y."""

    def __init__(self, dim, **kwargs):
        super().__init__()

    def forward(self, x):
        return self.pool(x)


def _stage_mixers(model):
    return [{type(b.token_mixer).__name__ for b in s.blocks} for s in model.stages]


def test_every_block_gets_its_own_mixer_with_the_stage_width():
    model = MetaFormerBackbone('poolformer_s12', token_mixers=dict(type='TmDWConvMixer',
                                                                   kernel_size=5))
    assert _stage_mixers(model) == [{'TmDWConvMixer'}] * 4
    mixers = [b.token_mixer for s in model.stages for b in s.blocks]
    assert len({id(m) for m in mixers}) == len(mixers) == 12
    assert [s.blocks[0].token_mixer.dim for s in model.stages] == [64, 128, 320, 512]
    assert model.stages[0].blocks[0].token_mixer.conv.kernel_size == (5, 5)
    assert len(model.mixer_prefixes) == 12
    outs = model.eval()(X)
    assert [o.shape[1] for o in outs] == [64, 128, 320, 512]


def test_per_stage_list_keeps_the_arch_mixer_where_none():
    model = MetaFormerBackbone('poolformerv2_s12', token_mixers=[
        None, None, dict(type='TmDWConvMixer'), dict(type='TmDWConvMixer')])
    assert _stage_mixers(model) == [{'Pooling'}, {'Pooling'}, {'TmDWConvMixer'},
                                    {'TmDWConvMixer'}]


@pytest.mark.parametrize('bad, match', [
    (dict(type='NoSuchMixer'), r'stage 0: NoSuchMixer is not in the .*custom_imports'),
    ([dict(type='TmDWConvMixer')] * 3, 'one mixer config per stage: 4'),
    ('TmDWConvMixer', 'must be a config dict'),
    (dict(type='TmDWConvMixer', nonsense=1), r"stage 0: building 'TmDWConvMixer' with dim=64"),
])
def test_bad_mixer_configs_are_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MetaFormerBackbone('poolformer_s12', token_mixers=bad)


def test_attention_stages_take_no_registry_mixer():
    with pytest.raises(ValueError, match='stage 2 .*attention'):
        MetaFormerBackbone('caformer_s18', token_mixers=dict(type='TmDWConvMixer'))
    MetaFormerBackbone('caformer_s18', token_mixers=[dict(type='TmDWConvMixer')] * 2 + [None] * 2)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_found_under_mmdet_and_mmseg_default_scopes(scope):
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    name = f'ScopeMixer_{scope}'
    registry.register_module(name=name, force=True, module=TmDWConvMixer)
    with DefaultScope.overwrite_default_scope(scope):
        model = MetaFormerBackbone('poolformer_s12', token_mixers=dict(type=name))
    assert _stage_mixers(model) == [{'TmDWConvMixer'}] * 4


def test_arch_checkpoint_loads_with_the_mixer_weights_reported_missing(tmp_path):
    import timm
    sd = timm.create_model('poolformer_s12').state_dict()  # timm layout, with the head
    torch.save(sd, tmp_path / 's12.pth')
    model = MetaFormerBackbone('poolformer_s12', token_mixers=dict(type='TmDWConvMixer'),
                               init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 's12.pth')))
    model.init_weights()
    report = model.load_pretrained(str(tmp_path / 's12.pth'))
    assert report['unexpected'] == []
    mixer_keys = [k for k in report['missing'] if '.token_mixer.' in k]
    assert len(mixer_keys) == 24  # conv weight and bias in each of 12 blocks
    assert set(report['missing']) - set(mixer_keys) == {
        k for k in model.state_dict() if k.startswith('out_norms.')}
    own = model.state_dict()
    for k, v in sd.items():
        if not k.startswith('head.'):
            assert torch.equal(own[k], v), k
    torch.save(timm.create_model('poolformer_s24').state_dict(), tmp_path / 's24.pth')
    with pytest.raises(CheckpointError, match='poolformer_s12'):
        MetaFormerBackbone('poolformer_s12', token_mixers=dict(type='TmDWConvMixer')
                           ).load_pretrained(str(tmp_path / 's24.pth'))


def test_cpu_path_with_a_registry_mixer_matches_timm_modules():
    model = randomized('poolformer_s12', token_mixers=dict(type='TmDWConvMixer'))
    ref = timm_modules_copy(model)
    with torch.no_grad():
        for o, e in zip(model.eval()(X), ref.eval()(X)):
            torch.testing.assert_close(o, e, atol=1e-4, rtol=1e-4)
    xa, xb = X.clone().requires_grad_(), X.clone().requires_grad_()
    sum(o.square().sum() for o in model.train()(xa)).backward()
    sum(o.square().sum() for o in ref.train()(xb)).backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-3)


def test_pooling_subclass_with_its_own_forward_is_called():
    model = randomized('poolformer_s12', token_mixers=dict(type='TmPoolNoSubtract'))
    ref = timm_modules_copy(model)
    with torch.no_grad():
        for o, e in zip(model.eval()(X), ref.eval()(X)):
            torch.testing.assert_close(o, e, atol=1e-4, rtol=1e-4)


def test_lean_blocks_step_aside_for_a_mixer_they_cannot_recompute():
    model = randomized('poolformer_s12', token_mixers=dict(type='TmDropoutMixer'),
                       lean_training=True).train()
    ref = timm_modules_copy(model).train()
    ref.lean_training = False
    grads = []
    for m in (model, ref):
        x = X.clone().requires_grad_()
        torch.manual_seed(3)  # the same dropout masks on both sides
        sum(o.square().sum() for o in m(x)).backward()
        grads.append((x.grad, {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-4, rtol=1e-3)
    for name, g in grads[1][1].items():
        torch.testing.assert_close(grads[0][1][name], g, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize('path', ['cpu inference', 'cpu training', 'timm modules', 'lean'])
def test_wrong_output_shape_is_an_error_naming_the_stage(path):
    model = MetaFormerBackbone('poolformer_s12', token_mixers=[
        None, None, dict(type='TmSqueezeMixer'), None],
        channels_last=False if path == 'timm modules' else None,
        lean_training=path == 'lean')
    train = path in ('cpu training', 'lean')
    model.train(train)
    with pytest.raises(MixerShapeError, match=re.escape(
            'stage 2: token mixer TmSqueezeMixer returned (2, 320, 1, 1) for an input of '
            'shape (2, 320, 5, 6)')):
        with torch.set_grad_enabled(train):
            model(X)


def _doc_blocks():
    text = (REPO / 'docs/metaformer_mixers.md').read_text()
    blocks = re.findall(r'```python\n(# (\S+\.py)\n.*?)```', text, flags=re.S)
    return {name: body.replace('{REPO}', str(REPO)) for body, name in blocks}


def test_docs_frequency_mixer_trains_retinanet_from_a_folder_outside_the_repo(tmp_path):
    blocks = _doc_blocks()
    for name in ('freq_mixer.py', 'retinanet_freq_s12_tiny.py'):
        (tmp_path / name).write_text(blocks[name])
    env = dict(CPU_ENV, PYTHONPATH=f'{tmp_path}:{CPU_ENV.get("PYTHONPATH", "")}')
    proc = run_script(REPO / 'tools/train.py', 'retinanet_freq_s12_tiny.py', '--work-dir', 'work',
                      cwd=tmp_path, env=env)
    log = proc.stdout + proc.stderr
    losses = [float(v) for v in re.findall(r'\bloss: ([0-9.]+)', log)]
    assert len(losses) >= 6 and all(v == v and v < 1e4 for v in losses), log[-3000:]
    allow_runner_checkpoints()  # a runner checkpoint, read without unpickling code
    ckpt = read_checkpoint(str(tmp_path / 'work/iter_6.pth'))
    keys = [k for k in ckpt['state_dict'] if '.token_mixer.filter.' in k]
    assert len(keys) == 12 * 4  # two 1x1 convolutions (weight, bias) in each of 12 blocks
    # the mixer trained: its last convolution started at zero
    assert ckpt['state_dict']['backbone.stages.0.blocks.0.token_mixer.filter.2.weight'].abs().sum() > 0
