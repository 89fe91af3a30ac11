"""The backbone's channels-last default: same numbers as NCHW, NCHW outputs, layout kept on load."""
import copy

import pytest
import torch

from metaformer_dense import MetaFormerBackbone

X = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))


def _pair(arch='poolformer_s12', **kw):
    cl = MetaFormerBackbone(arch, **kw)
    with torch.no_grad():  # layer scales of 1e-5 would hide the blocks: make them matter
        for name, p in cl.named_parameters():
            if 'layer_scale' in name:
                p.fill_(0.5)
    nchw = MetaFormerBackbone(arch, channels_last=False, **kw)
    nchw.load_state_dict(cl.state_dict())
    return cl, nchw


@pytest.mark.parametrize('arch', ['poolformer_s12', 'caformer_s18'])
def test_channels_last_matches_nchw_and_returns_contiguous_nchw(arch):
    cl, nchw = _pair(arch)
    assert cl.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert nchw.stem.conv.weight.is_contiguous()
    with torch.no_grad():
        a, b = cl.eval()(X), nchw.eval()(X)
    for p, q in zip(a, b):
        assert p.is_contiguous()  # plain NCHW for FPNs, RoIAlign and friends
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)


def test_channels_last_gradients_match_nchw():
    cl, nchw = _pair(out_indices=(1, 3))
    grads = []
    for model in (cl, nchw):
        sum(o.square().mean() for o in model.train()(X)).backward()
        named = dict(model.named_parameters())
        assert all(p.grad is not None for p in named.values())
        grads.append(named)
    for name, p in grads[0].items():
        torch.testing.assert_close(p.grad, grads[1][name].grad, atol=1e-4, rtol=1e-3)


def test_layout_survives_state_dict_loading_and_checkpointing():
    src = MetaFormerBackbone('poolformer_s12', channels_last=False)
    dst = MetaFormerBackbone('poolformer_s12', with_cp=True)
    dst.load_state_dict(src.state_dict())
    assert dst.stages[2].blocks[0].mlp.fc1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(dst.stages[2].blocks[0].mlp.fc1.weight, src.stages[2].blocks[0].mlp.fc1.weight)
    outs = dst.train()(X)  # gradient checkpointing re-runs blocks on channels-last tensors
    sum(o.mean() for o in outs).backward()
    assert dst.stem.conv.weight.grad is not None


def test_compile_switch_is_validated_and_copyable():
    with pytest.raises(TypeError, match='compile must be'):
        MetaFormerBackbone('poolformer_s12', compile='yes')
    model = MetaFormerBackbone('poolformer_s12', out_indices=(0,), compile=dict(mode='reduce-overhead'))
    assert model.compile_cfg == dict(mode='reduce-overhead')
    clone = copy.deepcopy(model)  # the lazily compiled forward is per instance, never copied
    assert clone.compile_cfg == model.compile_cfg and '_compiled_forward' not in clone.__dict__
    assert MetaFormerBackbone('poolformer_s12').compile_cfg is None
