"""Bad input gets an error that names the problem and the allowed values."""

import pytest
import torch

from kanformer import KAN, KANLinear, create_ffn, list_ffns, match_hidden


def test_unknown_ffn_lists_registered_names():
    with pytest.raises(ValueError, match="Unknown FFN 'bsplne'. Available: bspline, chebyshev"):
        create_ffn("bsplne", 8, 8)


@pytest.mark.parametrize("name", list_ffns())
@pytest.mark.parametrize("arg,d,h", [("d_model", 0, 8), ("d_model", -3, 8), ("hidden", 8, 0), ("hidden", 8, 2.5)])
def test_non_positive_widths(name, arg, d, h):
    with pytest.raises(ValueError, match=rf"{arg} must be an integer >= 1"):
        create_ffn(name, d, h)


@pytest.mark.parametrize(
    "name,kw,msg",
    [
        ("bspline", {"grid_size": 0}, "grid_size must be an integer >= 1"),
        ("bspline", {"spline_order": -1}, "spline_order must be an integer >= 0"),
        ("bspline", {"grid_range": (1.0, -1.0)}, "grid_range must be finite with low < high"),
        ("bspline", {"grid_range": "wide"}, "grid_range must be two numbers"),
        ("rbf", {"num_grids": 0}, "num_grids must be an integer >= 1"),
        ("chebyshev", {"degree": -1}, "degree must be an integer >= 0"),
        ("jacobi", {"alpha": -1.5}, "alpha must be a number > -1"),
        ("fourier", {"num_frequencies": 0}, "num_frequencies must be an integer >= 1"),
        ("wavelet", {"wavelet": "haar"}, "Unknown wavelet 'haar'. Available: dog, mexican_hat, morlet"),
        ("rational", {"second_init": "relu"},
         "Unknown rational init 'relu'. Available: gelu, gelu_tanh, identity, silu"),
        ("rational", {"groups": 0}, "groups must be an integer >= 1"),
        ("rational", {"groups": 32}, "groups must be <= the width"),
        ("bspline", {"grid": 5}, "unknown argument\\(s\\) grid. Accepted: base, bias, grid_range, grid_size"),
        ("mlp", {"grid_size": 5}, "FFN 'mlp' got unknown argument\\(s\\) grid_size. Accepted: activation, bias"),
        ("mlp", {"activation": "tanh"}, "Unknown activation 'tanh'. Available: gelu, gelu_tanh, relu, silu"),
    ],
)
def test_bad_ffn_options(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        create_ffn(name, 16, 16, **kw)


def test_match_hidden_errors():
    with pytest.raises(ValueError, match="target must be one of params, flops"):
        match_hidden("bspline", 16, target="latency")
    with pytest.raises(ValueError, match="Unknown FFN"):
        match_hidden("nope", 16)
    with pytest.raises(ValueError, match="reference must be an FFN, a positive number or None"):
        match_hidden("bspline", 16, reference=-5)
    with pytest.raises(ValueError, match="already at hidden=1, above the target"):
        match_hidden("bspline", 16, reference=10)


def test_grid_methods_on_a_basis_without_grid():
    layer = KANLinear(4, 3, "chebyshev")
    with pytest.raises(ValueError, match="basis 'chebyshev' has no adaptive grid; update_grid supports: bspline"):
        layer.update_grid(torch.randn(10, 4))
    with pytest.raises(ValueError, match="extend_grid supports: bspline"):
        layer.extend_grid(10)


def test_kan_layer_errors():
    with pytest.raises(ValueError, match="Unknown basis 'spline'. Available: bspline, chebyshev"):
        KANLinear(4, 3, "spline")
    with pytest.raises(ValueError, match="widths needs at least an input and an output width"):
        KAN([3])
    with pytest.raises(ValueError, match=r"widths\[1\] must be an integer >= 1"):
        KAN([3, 0, 1])
    with pytest.raises(ValueError, match=r"KANLinear expects inputs of shape \(\.\.\., 4\)"):
        KANLinear(4, 3)(torch.randn(2, 5))
