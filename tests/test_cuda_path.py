"""The backbone's CUDA path (metaformer_dense.cuda_path), forced onto CPU, computes what timm's
modules compute: outputs and every parameter and input gradient, for PoolFormer v1/v2,
ConvFormer, CAFormer and IdentityFormer, and steps aside wherever the CPU path does.

Tolerance: 1e-4 absolute and relative in fp32 (the statistics are summed in another order than
torch's group_norm sums them: float rounding, a few 1e-6 here).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import backbone_helpers as helpers
from backbone_helpers import randomized
from metaformer_dense import MetaFormerBackbone, cuda_path, group_norm

TOL = dict(atol=1e-4, rtol=1e-4)
ARCHS = ['poolformer_s12', 'poolformerv2_s12', 'convformer_s18', 'caformer_s18',
         'identityformer_s12']


@pytest.fixture
def on_cpu():
    with cuda_path.used_on('cpu'):
        yield


@pytest.fixture
def norm_calls(monkeypatch):
    """Every group_norm1 call's input shape (the CUDA path's norm, as the blocks call it)."""
    return helpers.record_calls(monkeypatch, group_norm, 'group_norm1',
                                lambda x, *rest: tuple(x.shape))


def _outputs_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    outs = model(x)
    sum((o * torch.linspace(-1, 1, o.shape[1]).view(1, -1, 1, 1)).square().mean()
        for o in outs).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads, x.grad


def _assert_same(got, ref):
    (outs, grads, dx), (routs, rgrads, rdx) = got, ref
    for o, r in zip(outs, routs):
        torch.testing.assert_close(o, r, **TOL)
    assert grads.keys() == rgrads.keys() and len(grads) > 10
    for name in rgrads:
        scale = rgrads[name].abs().max().item()
        torch.testing.assert_close(grads[name], rgrads[name], rtol=1e-4, atol=1e-4 * max(scale, 1),
                                   msg=lambda m: f'{name}: {m}')
    torch.testing.assert_close(dx, rdx, rtol=1e-4, atol=1e-4 * max(rdx.abs().max().item(), 1))


@pytest.mark.parametrize('arch', ARCHS)
def test_backbone_equals_timms_modules(arch, norm_calls):
    model = randomized(arch, channels_last=False)
    x = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    want = _outputs_and_grads(copy.deepcopy(model), x)  # timm's modules: the CPU default
    assert norm_calls == []
    with cuda_path.used_on('cpu'):
        got = _outputs_and_grads(model, x)
    n_path = len(norm_calls)
    _assert_same(got, want)
    # Every output norm, and for the GroupNorm families every block norm, went through it.
    blocks = sum(model.depths[:4]) if arch.startswith(('poolformer', 'identityformer')) else 0
    assert n_path == 4 + 2 * blocks


@pytest.mark.parametrize('batch,hw', [(1, (64, 64)), (3, (45, 71)), (4, (33, 50))])
def test_batches_sizes_and_inference(batch, hw):
    model = randomized('poolformer_s12', channels_last=False, out_indices=(1, 3)).eval()
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        want = model(x)
        with cuda_path.used_on('cpu'):
            got = model(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


def test_channels_last_stages_and_cpu_default(norm_calls):
    # On CPU by default: F.group_norm everywhere (no call of the spread function).
    model = randomized('poolformer_s12')
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    assert norm_calls == []
    # Forced with the NHWC default: the CPU path runs the stages, the output norms spread.
    with cuda_path.used_on('cpu'), torch.no_grad():
        got = model(x)
    assert len(norm_calls) == 4
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, **TOL)


def test_with_cp_and_autocast(norm_calls):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    model = randomized('poolformer_s12', channels_last=False, with_cp=True)
    want = _outputs_and_grads(model, x)
    with cuda_path.used_on('cpu'):
        got = _outputs_and_grads(model, x)
    assert len(norm_calls) > 4 + 2 * sum(model.depths)  # the checkpointed blocks ran twice
    _assert_same(got, want)
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        want = model(x)
        with cuda_path.used_on('cpu'):
            got = model(x)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        # bf16 convolutions: both paths round the same products; the norms differ in rounding.
        torch.testing.assert_close(g.float(), w.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize('option', ['algebraic_mixer', 'fold_norm2'])
@pytest.mark.parametrize('arch', ['poolformer_s12', 'poolformerv2_s12'])
def test_block_rewrites_equal_timms_block(option, arch, monkeypatch):
    calls = helpers.record_calls(monkeypatch, cuda_path, '_algebraic_mixer_half'
                                 if option == 'algebraic_mixer' else '_folded_fc1')
    model = randomized(arch, channels_last=False)
    x = torch.randn(3, 3, 50, 70, generator=torch.Generator().manual_seed(3))
    want = _outputs_and_grads(model, x)
    with cuda_path.used_on('cpu'), cuda_path.block_options(**{option: True}):
        got = _outputs_and_grads(model, x)
    assert len(calls) == sum(model.depths)
    _assert_same(got, want)


def test_block_options_reject_unknown_names_and_restore():
    with pytest.raises(ValueError, match='unknown block option.*fold_norm2'):
        with cuda_path.block_options(fold_norm3=True):
            pass
    with cuda_path.block_options(fold_norm2=True):
        assert cuda_path.OPTIONS['fold_norm2']
    assert not any(cuda_path.OPTIONS.values())


def test_hooks_tracing_and_export_see_timms_modules(on_cpu, norm_calls):
    model = randomized('poolformer_s12', channels_last=False).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        eager = model(x)
    n = len(norm_calls)
    seen = []
    handle = model.stages[0].blocks[0].norm1.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        hooked = model(x)
    handle.remove()
    assert len(seen) == 1 and len(norm_calls) == n  # the hooked module ran; no spread norm
    traced = torch.jit.trace(model, x, check_trace=False)
    assert 'group_norm' in str(traced.inlined_graph)
    exported = torch.export.export(model, (x,))
    assert 'group_norm' in str(exported.graph)
    assert len(norm_calls) == n
    for outs in (hooked, traced(x), exported.module()(x)):
        for o, e in zip(outs, eager):
            torch.testing.assert_close(o, e, **TOL)


def test_state_dict_and_module_tree_unchanged(on_cpu):
    model = MetaFormerBackbone('poolformerv2_s12')
    plain = MetaFormerBackbone('poolformerv2_s12')
    assert list(model.state_dict()) == list(plain.state_dict())
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
    assert cuda_path.wanted('cpu') and not cuda_path.wanted('cuda')
    with cuda_path.used_on():
        assert not cuda_path.wanted('cpu')
    assert cuda_path.wanted('cpu')
    # The norms really are GroupNorm(1, C) modules read in place.
    norm = model.stages[0].blocks[0].norm1
    assert group_norm.is_group_norm1(norm) and norm.bias is None
    x = torch.randn(2, norm.num_channels, 9, 11)
    torch.testing.assert_close(group_norm.norm_forward(norm, x),
                               F.group_norm(x, 1, norm.weight, None, norm.eps), **TOL)
