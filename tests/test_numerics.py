"""Each basis computes what its paper defines; grid changes preserve the function."""

import math

import pytest
import torch

from kanformer import KANLinear, create_ffn
from kanformer.layers.bspline import BSplineBasis
from kanformer.layers.chebyshev import ChebyshevBasis
from kanformer.layers.jacobi import JacobiBasis
from kanformer.layers.rational import GroupRational, rational, safe_denominator


@pytest.mark.parametrize("grid_size,order", [(1, 0), (3, 1), (5, 3), (10, 2)])
def test_bspline_partition_of_unity_inside_the_grid(grid_size, order):
    basis = BSplineBasis(6, grid_size=grid_size, spline_order=order, grid_range=(-1.5, 2.0))
    x = torch.rand(500, 6, dtype=torch.float64) * 3.5 - 1.5  # in [-1.5, 2.0)
    values = basis.to(torch.float64)(x)
    assert values.shape == (500, 6, grid_size + order)
    assert (values >= 0).all()
    torch.testing.assert_close(values.sum(-1), torch.ones(500, 6, dtype=torch.float64))


def test_bspline_partition_of_unity_after_update_grid():
    layer = KANLinear(4, 2, grid_size=6)
    data = torch.randn(1000, 4) * torch.tensor([0.1, 1.0, 3.0, 10.0])
    layer.update_grid(data)
    values = layer.basis(data)
    torch.testing.assert_close(values.sum(-1), torch.ones(1000, 4), atol=1e-5, rtol=0)


def _smooth_layer(grid_size, in_features=8, out_features=4, lo=-1.0, hi=1.0):
    """A B-spline layer whose edge functions are smooth curves sin(f*x + p), set by least squares."""
    layer = KANLinear(in_features, out_features, grid_size=grid_size, grid_range=(lo, hi), base=False)
    xs = torch.linspace(lo, hi, 400)[:, None].expand(400, in_features)
    freq = torch.rand(out_features, in_features) * 2 + 0.5
    phase = torch.rand(out_features, in_features) * 3
    target = torch.sin(freq * xs[:, None, :] + phase).permute(2, 0, 1)  # (I, N, O)
    design = layer.basis(xs).permute(1, 0, 2)  # (I, N, B)
    with torch.no_grad():
        layer.coef.copy_(torch.linalg.lstsq(design, target).solution.permute(2, 0, 1))
    return layer


@pytest.mark.parametrize("grid_size", [5, 10])
@pytest.mark.parametrize("dist", ["uniform", "normal"])
def test_update_grid_preserves_the_function(grid_size, dist):
    layer = _smooth_layer(grid_size)
    x = torch.rand(2000, 8) * 2 - 1 if dist == "uniform" else (torch.randn(2000, 8) * 0.4).clamp(-1, 1)
    before = layer(x)
    old_grid = layer.basis.grid.clone()
    layer.update_grid(x)
    assert not torch.allclose(layer.basis.grid, old_grid)  # the knots really moved
    assert (layer(x) - before).abs().max() < 5e-3 * before.abs().max()


def test_update_grid_follows_the_data_range():
    layer = KANLinear(3, 2, grid_size=4, grid_range=(-1, 1))
    x = torch.randn(500, 3) * 5 + 20
    layer.update_grid(x)
    knots = layer.basis.interior_knots()
    assert torch.all(knots[:, 0] <= x.min(0).values) and torch.all(knots[:, -1] >= x.max(0).values)


@pytest.mark.parametrize("old,new,tol", [(5, 10, 1e-5), (4, 12, 1e-5), (5, 8, 1e-2)])
def test_extend_grid_preserves_the_function(old, new, tol):
    layer = _smooth_layer(old)
    x = torch.rand(1000, 8) * 2 - 1
    before = layer(x)
    layer.extend_grid(new)
    assert layer.basis.grid_size == new and layer.coef.shape == (4, 8, new + 3)
    assert (layer(x) - before).abs().max() < tol * before.abs().max()


def test_ffn_extend_grid_keeps_counts_consistent_and_state_round_trips():
    ffn = create_ffn("bspline", 8, 6, grid_size=3)
    x = torch.rand(300, 8) * 2 - 1
    ffn.update_grid(x)
    before = ffn(x)
    ffn.extend_grid(6, x)
    assert ffn.num_params() == sum(p.numel() for p in ffn.parameters())
    assert (ffn(x) - before).abs().max() < 0.05 * before.abs().max()
    fresh = create_ffn("bspline", 8, 6, grid_size=6)
    fresh.load_state_dict(ffn.state_dict())  # the adapted grid travels with the state dict
    torch.testing.assert_close(fresh(x), ffn(x), rtol=0, atol=0)


def test_chebyshev_equals_cos_n_arccos_in_range():
    basis = ChebyshevBasis(3, degree=7).double()
    x = torch.empty(200, 3, dtype=torch.float64).uniform_(-2.5, 2.5)
    t = torch.tanh(x)
    expected = torch.stack([torch.cos(n * torch.arccos(t)) for n in range(8)], dim=-1)
    torch.testing.assert_close(basis(x), expected)


def test_chebyshev_gradients_finite_when_tanh_saturates():
    basis = ChebyshevBasis(2, degree=6)
    x = torch.tensor([[30.0, -30.0], [1e4, -1e4]], requires_grad=True)
    basis(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def _jacobi_reference(n, a, b, t):
    # P_n^(a,b)(t) = sum_s C(n+a, n-s) C(n+b, s) ((t-1)/2)^s ((t+1)/2)^(n-s), generalised binomials
    def binom(r, k):
        return math.gamma(r + 1) / (math.gamma(k + 1) * math.gamma(r - k + 1))

    return sum(binom(n + a, n - s) * binom(n + b, s) * ((t - 1) / 2) ** s * ((t + 1) / 2) ** (n - s)
               for s in range(n + 1))


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.0, 0.0), (-0.5, 0.5), (2.0, 0.5)])
def test_jacobi_matches_the_explicit_sum(alpha, beta):
    basis = JacobiBasis(2, degree=6, alpha=alpha, beta=beta).double()
    x = torch.empty(100, 2, dtype=torch.float64).uniform_(-3, 3)
    t = torch.tanh(x)
    expected = torch.stack([_jacobi_reference(n, alpha, beta, t) for n in range(7)], dim=-1)
    torch.testing.assert_close(basis(x), expected)


def test_rational_denominator_is_at_least_one_everywhere():
    x = torch.cat([torch.linspace(-1e3, 1e3, 20001), torch.tensor([0.0, -1e-6, 1e-6])])
    for _ in range(20):
        b = torch.randn(4) * 5
        assert (safe_denominator(x, b) >= 1).all()
    layer = GroupRational(12, groups=3, init="gelu")
    with torch.no_grad():
        layer.denominator.normal_(0, 10)
    y = layer(x[:, None].expand(-1, 12))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("init,fn,tol", [
    ("identity", lambda x: x, 1e-6),
    ("gelu", torch.nn.functional.gelu, 2e-3),
    ("silu", torch.nn.functional.silu, 2e-3),
])
def test_rational_initialisation(init, fn, tol):
    layer = GroupRational(10, groups=5, init=init)
    x = torch.linspace(-3, 3, 601)[:, None].expand(-1, 10)
    assert (layer(x) - fn(x)).abs().max() < tol


def test_rational_groups_split_channels_and_share_coefficients():
    layer = GroupRational(10, groups=3)
    assert layer.group_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    with torch.no_grad():
        layer.numerator[1].zero_()
    y = layer(torch.ones(1, 10))
    assert (y[0, 4:7] == 0).all() and (y[0, :4] != 0).all() and (y[0, 7:] != 0).all()


def test_rational_function_is_p_over_q():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    a = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    b = torch.tensor([0.3, -0.2], dtype=torch.float64)
    expected = (0.5 - x + 2 * x**2) / (1 + (0.3 * x - 0.2 * x**2).abs())
    torch.testing.assert_close(rational(x, a, b), expected)
