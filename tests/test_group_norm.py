"""metaformer_dense.group_norm computes F.group_norm(x, 1, ...) and its gradients.

Tolerances: fp32 inputs agree within 1e-5 relative to the tensor's largest value (different
summation orders; about 10 fp32 ulps at these sizes); fp16/bf16 inputs are compared with an fp32
reference, within twice the error of F.group_norm's own low-precision result plus one ulp of the
dtype; fp64 is checked by torch.autograd.gradcheck.
"""
import pytest
import torch
import torch.nn.functional as F
from timm.models.metaformer import GroupNorm1, GroupNorm1NoBias

from metaformer_dense.group_norm import group_norm1, is_group_norm1, norm_forward

RTOL = 1e-5
ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    scale = b.abs().max().clamp_min(1e-12)
    err = (a.double() - b.double()).abs().max() / scale
    assert err <= rtol, f'max error {err:.3g} (relative to max {scale:.3g}) > {rtol}'


def params(c: int, bias: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    w = (1 + 0.5 * torch.randn(c, generator=g)).requires_grad_()
    b = (0.3 * torch.randn(c, generator=g)).requires_grad_() if bias else None
    return w, b


def grads(fn, x, w, b, dy):
    x = x.detach().requires_grad_()
    out = fn(x, w, b)
    leaves = [t for t in (x, w, b) if t is not None]
    return (out,) + torch.autograd.grad(out, leaves, dy)


def reference(x, w, b, eps=1e-5):
    return F.group_norm(x, 1, w, b, eps)


def ours(x, w, b, eps=1e-5):
    return group_norm1(x, w, b, eps)


LAYOUTS = {
    'contiguous': lambda t: t,
    'channels_last': lambda t: t.contiguous(memory_format=torch.channels_last),
    'non_contiguous': lambda t: t.transpose(2, 3),
    'sliced': lambda t: t[:, :, 1::2],
}


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('shape', [(1, 64, 20, 31), (2, 37, 13, 11), (3, 5, 7, 9), (4, 96, 6, 10)])
def test_forward_and_every_gradient_match_group_norm(shape, bias, layout):
    g = torch.Generator().manual_seed(sum(shape))
    x = LAYOUTS[layout](3 + 2 * torch.randn(shape, generator=g))
    dy = LAYOUTS[layout](torch.randn(shape, generator=g))
    w, b = params(x.shape[1], bias)
    got, want = grads(ours, x, w, b, dy), grads(reference, x, w, b, dy)
    assert len(got) == len(want) == (4 if bias else 3)
    for a, r in zip(got, want):
        close(a, r)


@pytest.mark.parametrize('affine', ['weight_bias', 'weight', 'none'])
def test_gradcheck_fp64(affine):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(6, dtype=torch.float64, generator=g).requires_grad_() if affine != 'none' else None
    b = torch.randn(6, dtype=torch.float64, generator=g).requires_grad_() if affine == 'weight_bias' else None
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def fn(*args):
        it = iter(args)
        return group_norm1(next(it), next(it) if w is not None else None,
                           next(it) if b is not None else None)
    assert torch.autograd.gradcheck(fn, inputs)
    close(fn(*inputs), reference(x, w, b), 1e-12)


@pytest.mark.parametrize('shape', [(3, 8), (2, 5, 17), (1, 4, 3, 5, 6)])
def test_other_ranks(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    w, b = params(shape[1], True)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    for a, r in zip(grads(ours, x, w, b, dy), grads(reference, x, w, b, dy)):
        close(a, r)


@pytest.mark.parametrize('value', [0.0, 7.5])
def test_constant_input(value):
    """Zero variance: eps keeps rstd finite (1/sqrt(eps)) and the output is the bias, up to the
    rounding of the fused affine x * scale + shift: a few fp32 ulps of |value| * rstd * |w|
    (the form torch's CUDA kernel uses too); gradients within 1e-5 (absolute where 0). Compared with fp64 F.group_norm; torch's fp32 CPU
    kernel is itself off by 1e-4 at 7.5 (its variance of a constant is not 0)."""
    x = torch.full((2, 9, 5, 4), value)
    w, b = params(9, True)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    got = grads(ours, x, w, b, dy)
    want = grads(reference, x.double(), w.detach().double().requires_grad_(),
                 b.detach().double().requires_grad_(), dy.double())
    affine_ulps = 4 * 2.0 ** -24 * value * 1e-5 ** -0.5 * w.detach().abs().max().item()
    for a, r in zip(got, want):
        assert torch.isfinite(a).all()
        err = (a.double() - r).abs().max()
        assert err <= affine_ulps + RTOL * max(r.abs().max().item(), 1.0), (err, affine_ulps)
    if value == 0:
        assert torch.equal(got[0], b.detach().view(1, 9, 1, 1).expand(x.shape).contiguous())


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('param_dtype', ['same', 'fp32'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_inputs_use_fp32_statistics(dtype, param_dtype, layout):
    g = torch.Generator().manual_seed(8)
    x32 = LAYOUTS[layout](4 + 2 * torch.randn(2, 40, 9, 11, generator=g))
    dy32 = LAYOUTS[layout](torch.randn(x32.shape, generator=g))
    w32, b32 = params(40, True)
    pdt = dtype if param_dtype == 'same' else torch.float32
    w, b = (w32.detach().to(pdt).requires_grad_(), b32.detach().to(pdt).requires_grad_())
    x, dy = x32.to(dtype), dy32.to(dtype)
    exact = grads(reference, x.float(), w.detach().float().requires_grad_(),
                  b.detach().float().requires_grad_(), dy.float())
    got, torch_low = grads(ours, x, w, b, dy), grads(reference, x, w, b, dy)
    for a, t, e in zip(got, torch_low, exact):
        assert a.dtype == t.dtype
        scale = e.abs().max()
        err_ours = (a.float() - e).abs().max() / scale
        err_torch = (t.float() - e).abs().max() / scale
        assert err_ours <= 2 * err_torch + ULP[dtype], (err_ours, err_torch)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cpu_autocast_matches_group_norm(dtype):
    """CPU autocast leaves group_norm alone (its dtype is the input's); so does group_norm1."""
    g = torch.Generator().manual_seed(9)
    x = (1 + torch.randn(2, 24, 7, 9, generator=g)).to(dtype)
    dy = torch.randn(x.shape, generator=g).to(dtype)
    w, b = params(24, True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got, want = grads(ours, x, w, b, dy), grads(reference, x, w, b, dy)
    for a, r in zip(got, want):
        assert a.dtype == r.dtype
        close(a.float(), r.float(), RTOL if dtype == torch.float32 else 2 * ULP[dtype])


@pytest.mark.parametrize('cls', [GroupNorm1, GroupNorm1NoBias, 'torch'])
def test_norm_forward_reads_timm_modules_in_place(cls):
    module = torch.nn.GroupNorm(1, 20) if cls == 'torch' else cls(20)
    with torch.no_grad():
        module.weight.normal_(1, 0.3)
        if module.bias is not None:
            module.bias.normal_(0, 0.3)
    assert is_group_norm1(module)
    x = torch.randn(3, 20, 6, 5, generator=torch.Generator().manual_seed(10))
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
    results = []
    for run in (norm_forward, lambda m, t: m(t)):
        module.zero_grad()
        xx = x.clone().requires_grad_()
        out = run(module, xx)
        out.backward(dy)
        results.append([out, xx.grad] + [p.grad.clone() for p in module.parameters()])
    for a, r in zip(*results):
        close(a, r)


def test_other_norms_run_as_themselves():
    module = torch.nn.GroupNorm(4, 20)
    assert not is_group_norm1(module)
    x = torch.randn(2, 20, 3, 3)
    assert torch.equal(norm_forward(module, x), module(x))


class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = GroupNorm1(8)

    def forward(self, x):
        return norm_forward(self.norm, x)


def test_recording_takes_group_norm():
    """Traced or exported, the function is F.group_norm: the graph holds aten's group_norm."""
    model = Wrapper()
    traced = torch.jit.trace(model, torch.randn(2, 8, 5, 5))
    assert 'group_norm' in str(traced.graph)
    exported = torch.export.export(model, (torch.randn(2, 8, 5, 5),))
    assert 'group_norm' in str(exported.graph)
    x = torch.randn(1, 8, 9, 4)
    close(traced(x), model.norm(x))


def test_bad_parameters_name_the_fix():
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(ValueError, match=r'weight has shape \(7,\).*8 channels'):
        group_norm1(x, torch.ones(7))
    with pytest.raises(ValueError, match=r'\(N, C, \*\)'):
        group_norm1(torch.randn(8))


def test_double_backward_is_refused():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    w, b = params(4, True)
    (gx,) = torch.autograd.grad(group_norm1(x, w, b).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='once'):
        gx.sum().backward()


SHAPES = [(1, 64, 50, 76), (2, 128, 25, 38), (3, 320, 13, 19), (4, 512, 7, 10), (2, 5, 3, 7)]


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('affine', ['weight+bias', 'weight', 'none'])
def test_float64_equals_torch_at_the_backbones_shapes(shape, affine):
    """At S12's stage shapes (and an odd one), in float64: equal to rounding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=g) * 3 + 1
    dy = torch.randn(shape, dtype=torch.float64, generator=g)
    w = torch.randn(shape[1], dtype=torch.float64, generator=g) if affine != 'none' else None
    b = torch.randn(shape[1], dtype=torch.float64, generator=g) if affine == 'weight+bias' else None
    w = w.requires_grad_() if w is not None else None
    b = b.requires_grad_() if b is not None else None
    for a, r in zip(grads(ours, x, w, b, dy), grads(reference, x, w, b, dy)):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_with_a_large_mean(dtype):
    """A mean of 10 and std of 4: half-precision sums would drift; fp32 statistics, one rounding."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 64, 20, 30, generator=g) * 4 + 10).to(dtype)
    w, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    out = group_norm1(x, w, b)
    assert out.dtype == dtype
    want = F.group_norm(x.float(), 1, w, b)
    torch.testing.assert_close(out.float(), want, rtol=0, atol=2 * torch.finfo(dtype).eps * 8)


def test_constant_input_with_unit_weight_gives_zeros():
    x = torch.full((2, 8, 5, 7), 3.0, requires_grad=True)
    w, b = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    out = group_norm1(x, w, b)
    assert out.abs().max() <= 4 * 2.0 ** -24 * 3.0 * 1e-5 ** -0.5
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, w, b))
