"""metaformer_dense.group_norm: GroupNorm(1, C) from multi-block reductions equals torch's.

The function is what the CUDA path is for; it runs on any device, so its numbers are checked here
on CPU against ``F.group_norm`` and timm's norm modules: forward and every gradient, in float64
(exact to rounding) and float32 (1e-5 relative), for the shapes and layouts the backbones feed it.
"""
import pytest
import torch
import torch.nn.functional as F
from timm.models.metaformer import GroupNorm1, GroupNorm1NoBias

from metaformer_dense.group_norm import group_norm1

SHAPES = [(1, 64, 50, 76), (2, 128, 25, 38), (3, 320, 13, 19), (4, 512, 7, 10), (2, 5, 3, 7)]


def both(x, weight, bias, eps=1e-5):
    """Outputs and input/weight/bias gradients of group_norm1 and F.group_norm, for one dy."""
    results = []
    dy = torch.randn_like(x, memory_format=torch.contiguous_format)
    for fn in (group_norm1, lambda *a: F.group_norm(a[0], 1, *a[1:])):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None
                  for t in (x, weight, bias)]
        xi = leaves[0]
        if not x.is_contiguous():
            xi = xi.contiguous(memory_format=torch.channels_last)
        out = fn(xi, leaves[1], leaves[2], eps)
        out.backward(dy.to(out.dtype))
        results.append((out.detach(), [t.grad for t in leaves if t is not None]))
    return results


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('affine', ['weight+bias', 'weight', 'none'])
def test_equals_torch_forward_and_every_gradient(shape, affine):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    weight = torch.randn(shape[1], dtype=torch.float64) if affine != 'none' else None
    bias = torch.randn(shape[1], dtype=torch.float64) if affine == 'weight+bias' else None
    (out, grads), (ref, ref_grads) = both(x, weight, bias)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('layout', ['channels_last', 'non_contiguous'])
def test_float32_in_any_layout(layout):
    torch.manual_seed(1)
    base = torch.randn(2, 64, 33, 50)
    x = (base.contiguous(memory_format=torch.channels_last) if layout == 'channels_last'
         else torch.randn(2, 64, 33, 100)[..., ::2])
    assert not x.is_contiguous()
    weight, bias = torch.randn(64), torch.randn(64)
    (out, grads), (ref, ref_grads) = both(x, weight, bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_keep_fp32_statistics(dtype):
    torch.manual_seed(2)
    x = (torch.randn(2, 64, 20, 30) * 4 + 10).to(dtype)  # a large mean: fp16 sums would drift
    weight, bias = torch.randn(64), torch.randn(64)
    out = group_norm1(x, weight, bias)
    assert out.dtype == dtype
    ref = F.group_norm(x.float(), 1, weight, bias)  # exact statistics, then rounded once
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=2 * torch.finfo(dtype).eps * 8)


def test_autocast_gives_torchs_dtype_and_numbers():
    x = torch.randn(2, 64, 20, 30)
    weight, bias = torch.randn(64), torch.randn(64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ref = F.group_norm(x, 1, weight, bias)
        out = group_norm1(x, weight, bias)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_constant_input_gives_finite_zeros_and_gradients():
    x = torch.full((2, 8, 5, 7), 3.0, requires_grad=True)
    weight, bias = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    out = group_norm1(x, weight, bias)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, weight, bias))


@pytest.mark.parametrize('module', [GroupNorm1, GroupNorm1NoBias])
def test_reads_timms_modules_parameters_in_place(module):
    torch.manual_seed(3)
    norm = module(96)
    with torch.no_grad():
        norm.weight.normal_()
        if norm.bias is not None:
            norm.bias.normal_()
    x = torch.randn(2, 96, 19, 23)
    torch.testing.assert_close(group_norm1(x, norm.weight, norm.bias, norm.eps), norm(x),
                               rtol=1e-5, atol=1e-5)


def test_tracing_sees_torchs_own_group_norm():
    traced = torch.jit.trace(lambda x: group_norm1(x, None, None), torch.randn(1, 4, 3, 3))
    assert 'group_norm' in str(traced.graph)
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'):
        group_norm1(torch.randn(4, 3))
