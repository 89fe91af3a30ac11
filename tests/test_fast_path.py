"""The backbone's CPU path (metaformer_dense/fast_path.py) computes what timm's modules compute."""
import copy

import pytest
import torch

from metaformer_dense import MetaFormerBackbone, fast_path

X = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))
ARCHS = ['poolformer_s12', 'poolformerv2_s12', 'convformer_s18', 'caformer_s18']


def _randomized(arch, **kw):
    """A backbone whose every block matters (ImageNet init leaves layer scales at 1e-5)."""
    model = MetaFormerBackbone(arch, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'layer_scale' in name:
                p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _reference(model):
    """The same weights through timm's modules (the stock NCHW path)."""
    ref = copy.deepcopy(model)
    ref.channels_last = False
    return ref


@pytest.fixture
def small_chunks(monkeypatch):
    # Several MLP chunks per stage at this input size, the last one partial.
    monkeypatch.setattr(fast_path, 'CHUNK_BYTES', 64 * 4 * 4 * 64)


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = fast_path.stage_forward

    def counting(stage, x):
        calls.append(torch.is_grad_enabled())
        return real(stage, x)

    monkeypatch.setattr(fast_path, 'stage_forward', counting)
    return calls


@pytest.mark.parametrize('arch', ARCHS)
def test_inference_matches_timm_modules(arch, small_chunks, spy):
    model = _randomized(arch).eval()
    ref = _reference(model).eval()
    x = X.clone()
    with torch.no_grad():
        out, expected = model(x), ref(x)
        again = model(x)
    assert spy and not any(spy)  # the CPU path ran, without autograd
    assert torch.equal(x, X)  # the caller's tensor is not touched by the in-place updates
    for o, e, a in zip(out, expected, again):
        assert o.is_contiguous()
        torch.testing.assert_close(o, e, atol=1e-4, rtol=1e-4)
        assert torch.equal(o, a)  # no state leaks from one call into the next
    with torch.inference_mode():
        for o, e in zip(model(x), expected):
            torch.testing.assert_close(o, e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('arch', ['poolformer_s12', 'poolformerv2_s12', 'convformer_s18'])
def test_training_gradients_match_timm_modules(arch, small_chunks, spy):
    model = _randomized(arch).train()
    ref = _reference(model).train()
    grads = []
    for m in (model, ref):
        x = X.clone().requires_grad_()
        outs = m(x)
        sum((o * torch.linspace(-1, 1, o.shape[1])[:, None, None]).square().mean()
            for o in outs).backward()
        grads.append({'input': x.grad, **{n: p.grad for n, p in m.named_parameters()}})
    assert spy and all(spy)
    for name, g in grads[1].items():
        assert grads[0][name] is not None, name
        # norm1 biases cancel in pool(y) - y: their true gradient is 0, both sides are noise
        torch.testing.assert_close(grads[0][name], g, atol=2e-5, rtol=1e-3, msg=name)


def test_stochastic_depth_and_train_mode_use_timm_modules(small_chunks):
    model = _randomized('poolformer_s12', drop_path_rate=0.3).train()
    ref = _reference(model).train()
    with torch.no_grad():
        torch.manual_seed(3)
        out = model(X)
        torch.manual_seed(3)
        expected = ref(X)
    for o, e in zip(out, expected):  # same random paths dropped on both sides
        torch.testing.assert_close(o, e, atol=1e-4, rtol=1e-4)


def test_falls_back_where_it_does_not_apply(spy):
    model = _randomized('poolformer_s12').eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        model(X)  # autocast: timm's modules
    nchw = MetaFormerBackbone('poolformer_s12', channels_last=False).eval()
    with torch.no_grad():
        nchw(X)
    assert not spy
    seen = []
    hook = model.stages[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(X)
    hook.remove()
    assert len(seen) == 1  # a hooked stage runs through its modules, so the hook fires
    assert len(spy) == 3  # the three other stages took the CPU path


def test_gradient_checkpointing_keeps_timm_path(spy):
    model = MetaFormerBackbone('poolformer_s12', with_cp=True).train()
    sum(o.mean() for o in model(X)).backward()
    assert not spy and model.stem.conv.weight.grad is not None
