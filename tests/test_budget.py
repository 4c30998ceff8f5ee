"""Width matching lands within one unit of width of the target, for every basis and both targets."""

import pytest

from kanformer import create_ffn, ffn_flops, ffn_params, list_ffns, match_hidden

KAN_FFNS = [n for n in list_ffns() if n not in ("mlp",)]


def _cost(target, name, d, h, kw):
    return ffn_params(name, d, h, **kw) if target == "params" else ffn_flops(name, d, h, **kw)


@pytest.mark.parametrize("name", KAN_FFNS)
@pytest.mark.parametrize("target", ["params", "flops"])
@pytest.mark.parametrize("d_model", [32, 384, 768])
def test_match_hidden_within_one_unit(name, target, d_model):
    goal = _cost(target, "mlp", d_model, 4 * d_model, {})
    h = match_hidden(name, d_model, target=target)
    below, at, above = (_cost(target, name, d_model, w, {}) for w in (h - 1, h, h + 1))
    # the real-valued solution lies between h-1 and h+1, and h is the nearest integer width
    assert below <= goal <= above
    assert abs(at - goal) <= min(abs(below - goal), abs(above - goal))


@pytest.mark.parametrize("kw", [{"grid_size": 10}, {"grid_size": 3, "spline_order": 1}, {"base": False}])
def test_match_hidden_accounts_for_basis_options(kw):
    h = match_hidden("bspline", 128, **kw)
    goal = ffn_params("mlp", 128, 512)
    assert abs(ffn_params("bspline", 128, h, **kw) - goal) <= ffn_params("bspline", 128, 1, **kw)


def test_match_hidden_against_a_module_or_a_number():
    ref = create_ffn("swiglu", 64, 200)
    h = match_hidden("chebyshev", 64, target="flops", reference=ref)
    assert abs(ffn_flops("chebyshev", 64, h) - ref.flops_per_token()) < ffn_flops("chebyshev", 64, 1)
    h = match_hidden("rbf", 64, reference=50_000)
    assert ffn_params("rbf", 64, h - 1) <= 50_000 <= ffn_params("rbf", 64, h + 1)


def test_swiglu_matches_its_closed_form():
    # 3*d*h = 2*d*H + H + d  (GPT-2 MLP with biases, H = 4d)
    d = 768
    assert match_hidden("swiglu", d) == round((2 * d * 4 * d + 4 * d + d) / (3 * d))
