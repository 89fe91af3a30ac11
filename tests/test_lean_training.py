"""The memory-lean training blocks (lean_training.stage_forward_lean) give timm's gradients and keep
at most half of what timm's modules keep for backward."""
import pytest
import torch

import backbone_helpers as helpers
from backbone_helpers import randomized as _randomized, timm_modules_copy as _timm_modules
from metaformer_dense import lean_training
from benchmarks.saved_tensors import saved_tensor_bytes

X = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def lean_calls(monkeypatch):
    return helpers.record_calls(monkeypatch, lean_training, 'stage_forward_lean')


def _loss(outs):
    return sum((o * torch.linspace(-1, 1, o.shape[1])[:, None, None]).square().mean()
               for o in outs)


def _grads(model, x, seed=3):
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # the same drop-path samples on both sides
    _loss(model(x)).backward()
    return {'input': x.grad, **{n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize('drop_path_rate', [0.0, 0.3])
@pytest.mark.parametrize('arch', ['poolformer_s12', 'poolformerv2_s12', 'convformer_s18',
                                  'caformer_s18', 'randformer_s12'])
def test_gradients_match_timm_modules(arch, drop_path_rate, lean_calls, monkeypatch):
    # Several MLP row chunks per stage at this size, the last one partial.
    helpers.small_chunks(monkeypatch)
    model = _randomized(arch, drop_path_rate=drop_path_rate).train()
    assert model.lean_training is None  # the default: on for CPU, for pooling mixers
    if arch not in ('poolformer_s12', 'poolformerv2_s12'):
        model.lean_training = True  # convolution mixers: off by default on CPU (slower there);
        # IdentityFormer / RandFormer: off by default (not benchmarked), exact when on
    ours, ref = _grads(model, X), _grads(_timm_modules(model), X)
    assert len(lean_calls) == 4 if arch != 'caformer_s18' else len(lean_calls) == 2
    for name, g in ref.items():
        if name.endswith('random_matrix'):  # frozen: no gradient on either side
            assert g is None and ours[name] is None, name
            continue
        assert ours[name] is not None, name
        # PoolFormer v1's norm1 biases cancel in pool(y) - y: their true gradient is 0 and both
        # sides are rounding noise, which atol covers.
        torch.testing.assert_close(ours[name], g, atol=2e-5, rtol=1e-3, msg=name)


def test_frozen_stages_and_input_without_grad(lean_calls):
    model = _randomized('poolformer_s12', frozen_stages=1).train()
    ours, ref = _grads(model, X), _grads(_timm_modules(model), X)
    assert len(lean_calls) == 4
    for name, g in ref.items():
        if g is None:
            assert ours[name] is None, name
        else:
            torch.testing.assert_close(ours[name], g, atol=2e-5, rtol=1e-3, msg=name)


def test_keeps_at_most_half_of_timm_for_backward(lean_calls):
    model = _randomized('poolformer_s12').train()
    ref = _timm_modules(model)
    x = torch.randn(1, 3, 128, 160)
    ours, _ = saved_tensor_bytes(lambda: model(x), exclude=model.parameters())
    theirs, _ = saved_tensor_bytes(lambda: ref(x), exclude=ref.parameters())
    assert lean_calls
    assert ours <= 0.5 * theirs, (ours, theirs)


def test_switch(lean_calls):
    model = _randomized('poolformer_s12', lean_training=False).train()
    _grads(model, X)
    assert not lean_calls
    model.lean_training = True
    _grads(model, X)
    assert len(lean_calls) == 4
    with torch.no_grad():  # inference never takes it
        model(X)
    assert len(lean_calls) == 4
    with pytest.raises(TypeError):
        _randomized('poolformer_s12', lean_training='yes')


def test_hooks_take_timm_modules(lean_calls):
    model = _randomized('poolformer_s12').train()
    handle = model.stages[1].blocks[0].norm1.register_forward_hook(lambda m, i, o: None)
    _grads(model, X)
    handle.remove()
    assert not lean_calls


def test_off_cpu_a_switch_and_device_independent(lean_calls):
    # The meta device stands in for CUDA: no CPU-only operation may be on the lean path, and off
    # CPU it runs only when switched on (the CUDA default waits for a recorded CUDA run).
    x = torch.empty(2, 3, 64, 96, device='meta', requires_grad=True)
    model = _randomized('poolformer_s12', drop_path_rate=0.2).to('meta').train()
    model(x)
    assert not lean_calls
    model.lean_training = True
    sum(o.sum() for o in model(x)).backward()
    assert len(lean_calls) == 4
    assert x.grad.shape == x.shape
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name


def test_default_on_cpu_is_lean_for_pooling_mixers_only(lean_calls):
    """ConvFormer / CAFormer lean blocks recompute a separable convolution in backward and train
    slower than timm's modules on CPU (benchmarks/studies/results/train_step_cpu.md): off by default."""
    for arch, lean in (('poolformerv2_s12', True), ('convformer_s18', False),
                       ('caformer_s18', False)):
        lean_calls.clear()
        _grads(_randomized(arch).train(), X)
        assert bool(lean_calls) == lean, arch
