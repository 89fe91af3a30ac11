"""The backbone's memory layout: channels-last on CPU, NCHW elsewhere; same numbers either way,
NCHW outputs, layout kept on load."""
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


def test_default_layout_follows_the_device():
    def layout(m):
        w = m.stem.conv.weight  # 7x7 (1x1 weights are both layouts at once)
        return 'NHWC' if w.is_contiguous(memory_format=torch.channels_last) else 'NCHW'

    auto = MetaFormerBackbone('poolformer_s12')
    assert layout(auto) == 'NHWC' and auto._nhwc('cpu')
    # Any move (.cuda(), .to(device)) re-lays the weights out for the new device; the meta
    # device stands in for CUDA here (tests/test_gpu.py checks .cuda() itself).
    assert layout(auto.to('meta')) == 'NCHW' and not auto._nhwc('meta')
    outs = auto(torch.empty(1, 3, 64, 96, device='meta'))
    assert [o.shape[1] for o in outs] == [64, 128, 320, 512]
    assert layout(auto.to_empty(device='cpu')) == 'NHWC'
    # Forced layouts stay put; lean blocks need NHWC, so lean_training=True picks it everywhere.
    assert layout(MetaFormerBackbone('poolformer_s12', channels_last=True).to('meta')) == 'NHWC'
    assert layout(MetaFormerBackbone('poolformer_s12', channels_last=False)) == 'NCHW'
    assert layout(MetaFormerBackbone('poolformer_s12', lean_training=True).to('meta')) == 'NHWC'
    with pytest.raises(TypeError, match='channels_last must be None'):
        MetaFormerBackbone('poolformer_s12', channels_last='yes')


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


def _wrong_backend(calls):
    """A torch.compile backend whose graphs return wrong numbers, as a miscompile does."""
    def backend(gm, example_inputs):
        def run(*args):
            calls.append(1)
            return tuple(o * 1.5 if isinstance(o, torch.Tensor) and o.is_floating_point() else o
                         for o in gm(*args))
        return run
    return backend


def test_a_compiled_forward_that_disagrees_with_eager_is_dropped_with_a_warning():
    calls = []
    model = MetaFormerBackbone('poolformer_s12', out_indices=(0, 1),
                               compile=dict(backend=_wrong_backend(calls))).eval()
    with torch.no_grad():
        expected = model._forward(X)
        with pytest.warns(RuntimeWarning, match=r'differ from eager by .* input \(2, 3, 70, 90\)'):
            outs = model(X)
        assert calls  # the compiled graph ran, and its wrong outputs were not returned
        for o, e in zip(outs, expected):
            torch.testing.assert_close(o, e)
        calls.clear()
        again = model(X)  # eager from now on, for every input
        model(X[:1, :, :64, :64])
    assert not calls and model._compiled_forward.rejected
    torch.testing.assert_close(again[1], expected[1])


def test_a_compiled_forward_is_checked_once_per_input_signature():
    model = MetaFormerBackbone('poolformer_s12', out_indices=(0, 1),
                               compile=dict(backend='eager')).eval()
    with torch.no_grad():
        model(X)  # compiles, checks against eager
        guard = model._compiled_forward
        eager, guard_runs = guard.eager, []
        guard.eager = lambda x: guard_runs.append(tuple(x.shape)) or eager(x)
        model(X)  # same signature: not checked again
        model(X[:1])  # new shape: checked
    assert guard_runs == [(1, 3, 70, 90)] and guard.rejected is None and len(guard.checked) == 2
    # random outputs (stochastic depth in training) cannot be compared: not checked
    noisy = MetaFormerBackbone('poolformer_s12', out_indices=(0,), drop_path_rate=0.3,
                               compile=dict(backend=_wrong_backend([]))).train()
    with torch.no_grad():
        noisy(X)
    assert noisy._compiled_forward.rejected is None and not noisy._compiled_forward.checked
    skip = MetaFormerBackbone('poolformer_s12', out_indices=(0,),
                              compile=dict(backend='eager', verify=False)).eval()
    with torch.no_grad():
        skip(X)
    assert not skip._compiled_forward.checked
