"""The backbone's CPU path (metaformer_dense/fast_path.py) computes what timm's modules compute."""

import pytest
import torch

from timm.models.metaformer import MetaFormerStage
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

import backbone_helpers as helpers
from backbone_helpers import randomized as _randomized, timm_modules_copy as _reference
from metaformer_dense import MetaFormerBackbone, fast_path

X = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))
ARCHS = ['poolformer_s12', 'poolformerv2_s12', 'convformer_s18', 'caformer_s18', 'randformer_s12']


@pytest.fixture
def small_chunks(monkeypatch):
    helpers.small_chunks(monkeypatch)


@pytest.fixture
def spy(monkeypatch):
    return helpers.record_calls(monkeypatch, fast_path, 'stage_forward',
                                lambda *_: torch.is_grad_enabled())


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('arch', ARCHS)
def test_inference_matches_timm_modules(arch, fused, small_chunks, spy, monkeypatch):
    # fused: oneDNN's linear with GELU and bias in the product (where torch has it);
    # not fused: the addmm + F.gelu fallback for builds without it
    monkeypatch.setattr(fast_path, '_fused_linear', None if fused else False)
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
    # this machine's torch (a standard x86 build) has the fused op; the fallback stays off it
    assert fast_path._fused_linear is (fused and torch.backends.mkldnn.is_available())
    with torch.inference_mode():
        for o, e in zip(model(x), expected):
            torch.testing.assert_close(o, e, atol=1e-4, rtol=1e-4)


def test_unfused_mlp_switches_the_fallback_on_and_restores(small_chunks, monkeypatch):
    # benchmarks.speed times the CPU path with and without oneDNN's fused fc1 + GELU this way
    from benchmarks.speed_timing import unfused_mlp
    monkeypatch.setattr(fast_path, '_fused_linear', None)
    addmm_calls = []  # the unfused products: addmm, then F.gelu
    linear = fast_path._linear
    monkeypatch.setattr(fast_path, '_linear', lambda *a: addmm_calls.append(1) or linear(*a))
    model = _randomized('poolformer_s12').eval()
    fused_here = torch.backends.mkldnn.is_available()
    with torch.no_grad():
        fused = model(X)
        assert bool(addmm_calls) != fused_here
        addmm_calls.clear()
        with pytest.raises(RuntimeError, match='inside'):
            with unfused_mlp():
                unfused = model(X)
                assert addmm_calls  # every MLP chunk went through addmm
                raise RuntimeError('inside')
        addmm_calls.clear()
        model(X)  # the fused default is back, even after an exception inside
        assert fast_path._fused_linear is fused_here and bool(addmm_calls) != fused_here
    for f, u in zip(fused, unfused):
        torch.testing.assert_close(u, f, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('arch', ['poolformer_s12', 'poolformerv2_s12', 'convformer_s18'])
def test_training_gradients_match_timm_modules(arch, small_chunks, spy):
    # The chunked-MLP training path (lean_training=False; tests/test_lean_training.py covers
    # the default, memory-lean one).
    model = _randomized(arch, lean_training=False).train()
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


@pytest.fixture
def timm_stage_calls(monkeypatch):
    """Stages run through timm's ``MetaFormerStage.forward`` (the modules, not the CPU path)."""
    return helpers.record_calls(monkeypatch, MetaFormerStage, 'forward')


def test_falls_back_where_it_does_not_apply(spy):
    model = _randomized('poolformer_s12').eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        model(X)  # autocast: timm's modules
    nchw = MetaFormerBackbone('poolformer_s12', channels_last=False).eval()
    with torch.no_grad():
        nchw(X)
    assert not spy


def test_unobserved_forward_takes_the_cpu_path(spy, timm_stage_calls):
    model = _randomized('poolformer_s12').eval()
    with torch.no_grad():
        model(X)
    assert len(spy) == 4 and not timm_stage_calls
    handle = model.stages[2].blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: None)
    with torch.no_grad():
        model(X)
    handle.remove()
    assert len(spy) == 4 and len(timm_stage_calls) == 4  # hooked: every stage ran the modules
    with torch.no_grad():
        model(X)
    assert len(spy) == 8 and len(timm_stage_calls) == 4  # the hook is gone: fast again


# Every module whose output a feature-visualisation, distillation or CAM tool would hook, and
# the backbone itself.
HOOKED = ['', 'stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3', 'stages.0.blocks.1',
          'out_norms.0', 'out_norms.1', 'out_norms.2', 'out_norms.3']


def _clone(value):
    return tuple(_clone(v) for v in value) if isinstance(value, tuple) else value.clone()


def _close(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for p, q in zip(a, b):
            _close(p, q)
    else:
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('arch', ['poolformer_s12'])
def test_hooks_see_what_eager_computes(arch, small_chunks, spy):
    """A hook keeps references to what it saw (no copy), as most tools do; they must still hold
    the values timm's modules compute when the forward returns."""
    model = _randomized(arch).eval()
    ref = _reference(model).eval()
    expected, seen_in = {}, {}
    handles = [ref.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: expected.__setitem__(n, _clone(o))) for n in HOOKED]
    with torch.no_grad():
        ref_out = ref(X)
    for h in handles:
        h.remove()
    for name in HOOKED:
        seen = {}
        module = model.get_submodule(name)
        handles = [module.register_forward_hook(lambda m, i, o: seen.__setitem__('out', o)),
                   module.register_forward_pre_hook(lambda m, i: seen.__setitem__('in', i[0]))]
        with torch.no_grad():
            out = model(X)
        for h in handles:
            h.remove()
        _close(seen['out'], expected[name])
        seen_in[name] = seen['in']
        _close(out, ref_out)
    # A stage's input is the stem's / the previous stage's output, whoever hooked it.
    _close(seen_in['stages.0'], expected['stem'])
    _close(seen_in['stages.1'], expected['stages.0'])
    _close(seen_in['out_norms.0'], expected['stages.0'])
    assert not spy  # every one of these forwards ran the modules


@pytest.mark.parametrize('register', [register_module_forward_hook, register_module_forward_pre_hook])
def test_global_hooks_fire_for_every_module(register, spy):
    model = _randomized('poolformer_s12').eval()
    ref = _reference(model).eval()
    fired = []
    handle = register(lambda m, *args: fired.append(m))
    try:
        with torch.no_grad():
            model(X)
            ours = list(fired)
            fired.clear()
            ref(X)
    finally:
        handle.remove()
    # The same modules, in the same order, as the stock NCHW path: none skipped by the CPU path.
    names = {m: n for n, m in model.named_modules()}
    ref_names = {m: n for n, m in ref.named_modules()}
    assert [names[m] for m in ours] == [ref_names[m] for m in fired]
    assert not spy


def test_gradient_checkpointing_keeps_timm_path(spy):
    model = MetaFormerBackbone('poolformer_s12', with_cp=True).train()
    sum(o.mean() for o in model(X)).backward()
    assert not spy and model.stem.conv.weight.grad is not None
