"""The memory-lean path (layers/lean.py) against the reference definitions: outputs and every gradient, on random
and far-out-of-range inputs, fp64 / fp32 / bf16 autocast; gradchecks; no saved (tokens x in x n_basis) tensor;
dispatch switches; torch.compile(fullgraph=True) of a KAN GPT-2."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kanformer import KANLinear, create_ffn, kanify
from kanformer.layers import dispatch, few_tokens, kan, lean, lean_ffn, lean_rational, vecmath
from kanformer.layers.bspline import BSplineBasis
from kanformer.layers.dispatch import get_kernel, kernel, set_kernel, use_lean
from kanformer.layers.rbf import RBFBasis
from tests.tiny_models import build

LEAN_FFNS = ["bspline", "rbf", "chebyshev", "jacobi", "fourier", "wavelet", "rational", "multkan"]
D, H = 12, 10


def _inputs(dtype, n=48):
    x = torch.randn(n, D, dtype=dtype) * 1.5
    x[0, :3] = 40.0  # far outside every grid / natural range
    x[1, 3:6] = -40.0
    x[2, 6:9] = 2.0  # exactly on a knot of the default B-spline grid
    return x


def _run(ffn, x, mode, autocast=False, call=None):
    """Output, input gradient and parameter gradients of ``ffn`` on ``mode`` (through ``call``, a compiled ``ffn``
    say, where given)."""
    x = x.clone().requires_grad_(True)
    ffn.zero_grad()
    with kernel(mode), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = (ffn if call is None else call)(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    return y.detach().float(), x.grad.float(), {n: p.grad.float().clone() for n, p in ffn.named_parameters()}


def _close(a, b, rtol, atol):
    (ya, gxa, gpa), (yb, gxb, gpb) = a, b
    torch.testing.assert_close(ya, yb, rtol=rtol, atol=atol)
    torch.testing.assert_close(gxa, gxb, rtol=rtol, atol=atol)
    assert gpa.keys() == gpb.keys()
    for name in gpa:
        torch.testing.assert_close(gpa[name], gpb[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("name", LEAN_FFNS)
def test_lean_equals_reference_fp64(name):
    # B-spline knots exactly representable (grid step 1), so the uniform fast path is exact to fp64 rounding
    kw = {"grid_size": 4, "grid_range": (-2.0, 2.0)} if name in ("bspline", "multkan") else {}
    ffn = create_ffn(name, D, H, **kw).double()
    x = _inputs(torch.float64)
    _close(_run(ffn, x, "lean"), _run(ffn, x, "reference"), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("wavelet", ["morlet", "dog"])
def test_lean_wavelets_equal_reference_fp64(wavelet):
    """The other mother wavelets' lean forms and analytic parameter gradients (translations, scales moved off their
    start)."""
    ffn = create_ffn("wavelet", D, H, wavelet=wavelet).double()
    with torch.no_grad():
        for name, p in ffn.named_parameters():
            if "translation" in name or "log_scale" in name:
                p.add_(torch.randn_like(p) * 0.3)
    x = _inputs(torch.float64)
    _close(_run(ffn, x, "lean"), _run(ffn, x, "reference"), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", ["lean", "fused"])
def test_a_wavelet_layer_without_its_base_branch_takes_its_input_gradient_from_the_parameters_backward(mode):
    """The wavelets' own backward (input-major: dL/dx made with the parameters' sums over tokens, transposed back) is
    the whole input gradient where there is no SiLU base branch to add it to; 47 inputs: padded in the fused mode."""
    layer = KANLinear(47, 5, "wavelet", base=False, num_wavelets=4).double()  # 4: a shorter compile, as below
    with torch.no_grad():
        layer.basis.translation.add_(torch.randn_like(layer.basis.translation) * 0.3)
    x = torch.randn(40, 47, dtype=torch.float64) * 1.5
    x[0, :3] = 40.0
    _close(_run(layer, x, mode), _run(layer, x, "reference"), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", LEAN_FFNS)
def test_lean_equals_reference_fp32(name):
    ffn = create_ffn(name, D, H)
    x = _inputs(torch.float32)
    _close(_run(ffn, x, "lean"), _run(ffn, x, "reference"), rtol=1e-4, atol=1e-5)


def _close_under_bf16_autocast(name, mode, adapted=False):
    """Output and every gradient of ``mode`` within 2 % (relative norm) of the reference under bf16 autocast; with
    ``adapted``, on grids fitted to data."""
    ffn = create_ffn(name, D, H)
    if adapted:
        ffn.update_grid(torch.randn(500, D) ** 3)
    x = _inputs(torch.float32)
    fast, ref = _run(ffn, x, mode, autocast=True), _run(ffn, x, "reference", autocast=True)
    for a, b in zip([fast[0], fast[1], *fast[2].values()], [ref[0], ref[1], *ref[2].values()], strict=True):
        assert ((a - b).norm() / b.norm().clamp_min(1e-6)).item() < 2e-2


@pytest.mark.parametrize("name", LEAN_FFNS)
def test_lean_equals_reference_under_bf16_autocast(name):
    _close_under_bf16_autocast(name, "lean")


def test_lean_on_adapted_grids_equals_reference_under_bf16_autocast():
    _close_under_bf16_autocast("bspline", "lean", adapted=True)


def test_adapted_bspline_grid_takes_the_general_lean_path_and_the_knot_form_when_fused(monkeypatch):
    """An adapted (non-uniform) grid: eager lean evaluates each input's k + 1 splines not zero at it, and their slopes,
    from its knot interval's polynomials (``_piece_tables``; the backward's values and slopes from one lookup), neither
    the reference's recursion nor autograd through it; fused, the Cox-de Boor recursion elementwise on the knot tables,
    with analytic slopes, for every spline order (its helpers run as the eager code they compile, exact in fp64;
    compiled: tests/test_lean_ffn.py)."""
    monkeypatch.setattr(lean, "_kernel_fn", lambda fn, x=None, tag="": fn)
    knot_calls, piece_calls, reference_calls = [], [], []
    knot_terms, piece_values, reference = BSplineBasis._knot_terms, BSplineBasis._piece_values, BSplineBasis.forward
    monkeypatch.setattr(BSplineBasis, "_knot_terms", lambda *a: knot_calls.append(1) or knot_terms(*a))
    monkeypatch.setattr(BSplineBasis, "_piece_values",
                        lambda self, x, *a: piece_calls.append(a) or piece_values(self, x, *a))
    monkeypatch.setattr(BSplineBasis, "forward", lambda *a: reference_calls.append(1) or reference(*a))
    # 40 intervals: more knots than the count's compare loop takes (``_count_knots``: a binary search instead)
    for k, g in ((0, 5), (1, 5), (3, 5), (2, 40)):
        layer = KANLinear(D, D, grid_size=g, spline_order=k).double()
        layer.update_grid(torch.randn(500, D, dtype=torch.float64) ** 3)  # quantile knots: non-uniform
        assert layer.basis._uniform() is None
        knots, inv_spans = layer.basis.fused_state()
        m = g + 2 * k + 1
        assert knots.shape == (m, D) and inv_spans.shape == (k * m - k * (k + 1) // 2, D)
        x = torch.cat([_inputs(torch.float64), layer.basis.grid.T[:, :D]])  # the knots themselves too
        ref = _run(layer, x, "reference")
        reference_calls.clear()
        _close(_run(layer, x, "lean"), ref, rtol=1e-9, atol=1e-10)
        assert not knot_calls and not reference_calls
        # (values, slopes) asked for: the forward's values; the backward's values and slopes in one lookup
        assert sorted(piece_calls) == [(True, False), (True, True)]
        piece_calls.clear()
        _close(_run(layer, x, "fused"), ref, rtol=1e-9, atol=1e-10)
        assert knot_calls, "the fused path did not take the knot form"
        knot_calls.clear()


def test_adapted_grid_lean_features_differentiate_to_their_own_slopes():
    """The adapted grid's eager features are differentiable in x (autograd through them, where a caller declines the
    analytic input gradient) and give the slopes ``lean_input_grad`` takes from its own table."""
    layer = KANLinear(D, 5, grid_size=6, spline_order=3).double()
    layer.update_grid(torch.randn(500, D, dtype=torch.float64) ** 3)
    x = (torch.randn(300, D, dtype=torch.float64) * 3).requires_grad_(True)
    g = torch.randn(300, layer.basis.n_basis, D, dtype=torch.float64)
    (layer.basis.lean_features(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, layer.basis.lean_input_grad(x.detach(), g), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["bspline", "bspline adapted", "rbf", "chebyshev", "jacobi", "fourier"])
def test_one_pass_features_and_input_gradient_equal_the_two_forms(name):
    """A basis that makes the lean backward's recomputed features and input gradient in one pass
    (``lean_features_and_input_grad``) gives what its two forms give apart (fp64; inputs far outside the grids and
    natural ranges included). That the lean backward takes it, the lean-against-reference tests above check (a wrong
    gradient planted in it fails them)."""
    basis = name.split()[0]
    layer = KANLinear(D, 5, basis).double()
    if name.endswith("adapted"):
        layer.update_grid(torch.randn(500, D, dtype=torch.float64) ** 3)
    b = layer.basis
    assert type(b).lean_features_and_input_grad is not kan.Basis.lean_features_and_input_grad
    x = _inputs(torch.float64, n=200)
    g = torch.randn(200, b.n_basis, D, dtype=torch.float64)
    feats, g_x = b.lean_features_and_input_grad(x, g)
    torch.testing.assert_close(feats, b.lean_features(x), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_x, b.lean_input_grad(x, g), rtol=1e-12, atol=1e-14)


def test_repeated_knots_make_zero_splines_on_every_path(monkeypatch):
    """Knots fitted to tied data without the uniform blend (``grid_eps=0``: half of the inputs exactly zero, as after a
    ReLU) repeat; the recursion's terms over an empty span are zero (0/0 = 0), not NaN, on the reference, the eager
    lean path and the knot form, with every gradient finite and the paths equal."""
    monkeypatch.setattr(lean, "_kernel_fn", lambda fn, x=None, tag="": fn)
    layer = KANLinear(D, D, grid_size=5, spline_order=3).double()
    data = torch.randn(400, D, dtype=torch.float64).clamp_min(0)  # half zeros: several quantile knots at 0
    layer.update_grid(data, grid_eps=0.0)
    interior = layer.basis.interior_knots()
    assert ((interior[:, 1:] - interior[:, :-1]) == 0).any(), "no knot repeated: the case is not exercised"
    knots, inv_spans = layer.basis.fused_state()
    assert torch.isfinite(inv_spans).all() and (inv_spans == 0).any()
    x = torch.cat([_inputs(torch.float64), data[:16], layer.basis.grid.T[:, :D]])
    ref = _run(layer, x, "reference")
    for part in [ref[0], ref[1], *ref[2].values()]:
        assert torch.isfinite(part).all()
    assert ref[0].abs().sum() > 0
    _close(_run(layer, x, "lean"), ref, rtol=1e-9, atol=1e-10)
    _close(_run(layer, x, "fused"), ref, rtol=1e-9, atol=1e-10)


def test_the_bspline_inverse_step_is_computed_once_per_grid():
    """The fused state's 1/h is divided once per uniform grid check, not on every call, and follows the grid when it is
    rebuilt (a grid extension: a new, coarser step)."""
    layer = KANLinear(4, 3, grid_size=5, grid_range=(-2.0, 2.0))
    t0, inv = layer.basis.fused_state()
    assert layer.basis.fused_state()[1] is inv and layer.basis.triton_params()[1] is inv
    torch.testing.assert_close(inv, torch.full((4,), 1.25))  # step 4 / 5
    layer.extend_grid(10)  # the same range in ten intervals
    t0, inv = layer.basis.fused_state()
    torch.testing.assert_close(inv, torch.full((4,), 2.5))


def test_the_uniform_grid_verdict_is_read_eagerly_without_the_check(monkeypatch):
    """An eager call reads the B-spline's cached uniform-grid verdict directly (behind ``torch.compiler.disable``, every
    call paid its wrapper); the check itself runs again once the grid is written, and only then."""
    basis = KANLinear(4, 3, grid_size=5).basis
    checks = []
    check = basis._check_uniform
    monkeypatch.setattr(basis, "_check_uniform", lambda: checks.append(1) or check())
    assert basis._uniform() is not None and basis.fused_state() is not None and checks == []  # the build's verdict
    with torch.no_grad():
        basis.grid[:, 4:] += 0.25  # written in place: a new version, a non-uniform grid
    assert basis._uniform() is None and basis.fused_state()[0].shape == (12, 4) and checks == [1]  # the knot tables
    assert basis.fused_state()[1] is basis.fused_state()[1]  # made once per grid version


@pytest.mark.parametrize("basis", ["bspline", "rbf", "chebyshev", "jacobi", "fourier", "wavelet"])
@pytest.mark.parametrize("mode", ["reference", "lean"])
def test_gradcheck_float64(basis, mode):
    kw = {"grid_size": 4, "grid_range": (-2.0, 2.0)} if basis == "bspline" else {}
    layer = KANLinear(3, 2, basis, **kw).double()
    x = (torch.randn(6, 3, dtype=torch.float64) * 1.3).requires_grad_(True)
    params = tuple(layer.parameters())

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(layer, dict(zip(
                [n for n, _ in layer.named_parameters()], ps, strict=True))), kernel(mode):
            return layer(x)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", ["reference", "lean"])
def test_gradcheck_rational_float64(mode):
    ffn = create_ffn("rational", 4, 6, groups=2).double()
    x = torch.randn(5, 4, dtype=torch.float64).requires_grad_(True)
    names = [n for n, _ in ffn.named_parameters()]

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(ffn, dict(zip(names, ps, strict=True))), kernel(mode):
            return ffn(x)

    assert torch.autograd.gradcheck(f, (x, *ffn.parameters()), eps=1e-6, atol=1e-5)


def _saved_shapes(module, x):
    """Shapes of the tensors autograd saves for backward, parameters (and buffers) excluded."""
    own = {t.data_ptr() for t in (*module.parameters(), *module.buffers())}
    shapes = []

    def pack(t):
        if t.data_ptr() not in own:
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return shapes


def _saved_numels(module, x):
    """Sizes of the tensors autograd saves for backward, parameters (and buffers) excluded."""
    return [math.prod(shape) for shape in _saved_shapes(module, x)]


@pytest.mark.parametrize("name", ["bspline", "rbf", "chebyshev", "jacobi", "fourier", "wavelet"])
def test_lean_path_saves_no_expanded_basis_tensor(name):
    n, i, o = 256, 16, 4
    layer = KANLinear(i, o, name)
    b = layer.basis.n_basis
    x = torch.randn(n, i, requires_grad=True)
    with kernel("reference"):
        assert max(_saved_numels(layer, x)) >= n * i * b  # the reference does save it: the check can fail
    with kernel("lean"):
        sizes = _saved_numels(layer, x)
    assert max(sizes) < n * i * b and max(sizes) <= max(n * i, o * i * b), sizes


def test_lean_rbf_recomputes_its_layernorm():
    """RBF's LayerNorm runs inside the lean layer (recomputed in the backward): the layer saves its input and the
    per-token statistics (mean, 1 / std) only."""
    n = 256
    layer = KANLinear(16, 4, "rbf")
    x = torch.randn(n, 16, requires_grad=True)
    with kernel("lean"):
        assert sorted(_saved_numels(layer, x)) == [n, n, n * 16]
    with kernel("reference"):
        assert n * 16 * 2 <= sum(_saved_numels(layer, x))  # the reference saves the normalised input as well


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lean", "fused"])
def test_lean_rbf_without_an_analytic_derivative_differentiates_through_the_layernorm(monkeypatch, mode):
    """A basis that declines the analytic input gradient gets it by autograd through the recomputed pre-transform
    and basis, LayerNorm parameters included."""
    monkeypatch.setattr(RBFBasis, "lean_input_grad", lambda self, u, g: None)
    monkeypatch.delattr(RBFBasis, "fused_state")  # the per-function form would give the derivative itself
    # features autograd can differentiate (the eager ones write into slots with out=)
    monkeypatch.setattr(RBFBasis, "lean_features", lambda self, u: torch.stack(lean._terms(self, u, ())[0], dim=1))
    ffn = create_ffn("rbf", D, H).double()
    x = _inputs(torch.float64)
    _close(_run(ffn, x, mode), _run(ffn, x, "reference"), rtol=1e-9, atol=1e-10)


def test_lean_rational_saves_only_the_inputs():
    n = 256
    ffn = create_ffn("rational", 16, 64)
    x = torch.randn(n, 16, requires_grad=True)
    with kernel("lean"):
        acts = _saved_numels(ffn, x)
    # the two activations' inputs, and their per-channel coefficient tables (a few numbers a channel, not a token)
    tables = [act.numerator.shape[1] * c for act, c in ((ffn.act1, 16), (ffn.act2, 64))]
    tables += [act.denominator.shape[1] * c for act, c in ((ffn.act1, 16), (ffn.act2, 64))]
    assert sorted(acts) == sorted([n * 16, n * 64, *tables])
    with kernel("reference"):
        assert sum(_saved_numels(ffn, x)) > 3 * n * 64


def test_kernel_switches_and_errors():
    before = get_kernel()  # the test session runs on "lean" (tests/conftest.py)
    with kernel("reference"):
        assert get_kernel() == "reference"
    assert get_kernel() == before
    with pytest.raises(ValueError, match="Unknown KAN kernel 'fast'. Available: auto, lean, fused, triton, reference"):
        set_kernel("fast")


def test_default_kernel_is_auto():
    env = {k: v for k, v in os.environ.items() if k != "KANFORMER_KERNEL"}
    code = "from kanformer.layers.dispatch import get_kernel; print(get_kernel())"
    out = subprocess.run([sys.executable, "-c", code],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "auto"


# B-spline knots exactly representable (steps 1 and 0.5), so the uniform forms match the reference to fp64 rounding
@pytest.mark.parametrize("name,kw", [("bspline", {"spline_order": k, "grid_size": 4}) for k in range(1, 6)]
                         + [("bspline", {"grid_size": 8, "grid_range": (-1.0, 3.0)}), ("rbf", {"layernorm": False}),
                            ("fourier", {}), ("fourier", {"num_frequencies": 16}),  # its recurrence, 16 steps deep
                            ("jacobi", {}), ("jacobi", {"degree": 7, "alpha": 0.5, "beta": -0.5}),
                            ("jacobi", {"degree": 1}), ("chebyshev", {}), ("chebyshev", {"degree": 9}),
                            ("chebyshev", {"degree": 1})]
                         + [("wavelet", {"wavelet": w}) for w in ("mexican_hat", "morlet", "dog")])
def test_fused_forms_equal_the_lean_forms_in_fp64(name, kw):
    """The compiler-friendly per-function form (``fused_term``: value and slope of basis j), evaluated eagerly, against
    the lean features and autograd through the reference basis; and the fused backward's one pass (features and input
    gradient together) against the same."""
    basis = KANLinear(D, H, name, **kw).double().basis
    x = _inputs(torch.float64, n=200)
    x[3:] = torch.linspace(-5, 5, (len(x) - 3) * D, dtype=torch.float64).view(-1, D)  # every interval and beyond
    state = basis.fused_state()
    assert state is not None
    g = torch.randn(len(x), basis.n_basis, D, dtype=torch.float64)
    values, g_x = lean._terms(basis, x, state, g)
    torch.testing.assert_close(torch.stack(values, dim=1), basis.lean_features(x), rtol=1e-9, atol=1e-12)
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(basis(xr).transpose(1, 2), xr, g)
    rows = slice(3, None) if kw.get("spline_order") == 1 else slice(None)  # the hat has no derivative on a knot (row 2)
    torch.testing.assert_close(g_x[rows], expected[rows], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lean.terms_input_grad(basis, x, g, *state), g_x)
    g_feats = torch.cat([g, torch.randn(len(x), 1, D, dtype=torch.float64)], dim=1)  # with the SiLU branch's slot
    g_u, g_base, kept = lean._input_grads(basis, x, x, g_feats, state, analytic=True)
    torch.testing.assert_close(g_u, g_x)
    (silu_grad,) = torch.autograd.grad(torch.nn.functional.silu(xr), xr, g_feats[:, -1])
    torch.testing.assert_close(g_base, silu_grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.stack(kept, dim=1), basis.lean_features(x), rtol=1e-9, atol=1e-12)
    # folded (no pre-transform: the base branch's gradient first, the basis' terms added to it): the whole dL/dx
    g_all, none, kept = lean._input_grads(basis, x, x, g_feats, state, analytic=True, fold=True)
    assert none is None
    torch.testing.assert_close(g_all, g_x + silu_grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.stack(kept, dim=1), basis.lean_features(x), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bspline", "rbf", "chebyshev", "wavelet"])
def test_fused_mode_pads_an_odd_feature_width_and_drops_the_padding_gradients(name):
    """K = 9 * 47 = 423 (8 functions + SiLU per input; Chebyshev: 5 * 47) is padded to 48 inputs for the BLAS in the
    fused mode (RBF: its LayerNorm still normalises over the 47 real inputs; wavelet: its per-input rows are padded,
    its parameters' own backward sees the real inputs); the output and every gradient (of the real shapes) equal the
    reference's. The wavelet: 4 wavelets (5 * 47), not 8: its terms are independent and each lengthens the compile."""
    from kanformer.layers import lean

    layer = KANLinear(47, 5, name, **({"num_wavelets": 4} if name == "wavelet" else {}))
    basis, state = layer.basis, layer.basis.fused_state()
    per_input = basis.n_basis + (layer.base_weight is not None)
    fp32, bf16 = (torch.float32, torch.device("cpu")), (torch.bfloat16, torch.device("cpu"))
    with kernel("fused"):
        assert lean._input_pad(basis, per_input, 47, state, *fp32) == 1
        assert lean._input_pad(basis, per_input, 48, state, *fp32) == 0  # K a multiple of 4 already
        assert lean._input_pad(basis, per_input, 13, state, *fp32) == 0  # 3 more inputs: > 6.25 % of 13, not worth it
        assert lean._input_pad(basis, per_input, 170, state, *fp32) == 6  # +3.5 %: padded
        assert lean._input_pad(basis, per_input, 137, state, *fp32) == 7  # +5.1 %: padded
        assert lean._input_pad(basis, per_input, 103, state, *fp32) == 0  # +8.7 %: not
        for native, pad in ((True, 0), (False, 1)):  # a native bf16 matmul on CPU: never; one taken in fp32 (a CPU
            with pytest.MonkeyPatch.context() as mp:  # without bf16 products, layers/gemm.py): the fp32 rule
                mp.setattr(lean, "native_low_precision", lambda dtype, _n=native: _n)
                assert lean._input_pad(basis, per_input, 47, state, *bf16) == pad, native
        cuda = torch.device("cuda")  # every width to a multiple of 8 (16-byte rows for bf16), however small
        for width, pad in ((47, 1), (48, 0), (13, 3), (341, 3), (342, 2), (615, 1)):
            assert lean._input_pad(basis, per_input, width, state, torch.bfloat16, cuda) == pad, width
            assert lean.output_pad(width, cuda) == pad, width
    with kernel("lean"):
        assert lean._input_pad(basis, per_input, 47, state, *fp32) == 0  # eager lean: never padded
    with torch.no_grad():  # a LayerNorm away from its identity start
        for p in layer.basis.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(40, 47) * 1.5
    x[0, :3] = 40.0
    fused, ref = _run(layer, x, "fused"), _run(layer, x, "reference")
    for pname, p in layer.named_parameters():
        assert fused[2][pname].shape == p.shape, pname
    _close(fused, ref, rtol=1e-4, atol=1e-4)


def test_a_layer_padded_in_fp32_and_not_in_bf16_gets_a_compiled_copy_for_each(monkeypatch):
    """The input padding depends on the matmul's dtype (none for bf16 on a CPU with native bf16 products), so the
    compiled copies are kept apart by it: one copy meeting both widths would recompile with the width symbolic
    (generic, slower loops)."""
    tags = []
    monkeypatch.setattr(lean, "_kernel_fn", lambda fn, x=None, tag="": tags.append((fn.__name__, tag)) or fn)
    monkeypatch.setattr(lean, "native_low_precision", lambda dtype: True)
    layer = KANLinear(47, 5, "bspline")
    x = torch.randn(16, 47, requires_grad=True)
    with kernel("fused"):
        layer(x).sum().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x).float().sum().backward()
    copy = "BSplineBasis(5, 47, 8)"
    assert sorted(set(tags)) == [(f, f"{copy}+{pad}") for f in ("_lean_backward", "_lean_forward") for pad in (0, 1)]


def test_padding_refuses_a_state_that_is_not_per_input():
    from kanformer.layers import lean

    x, coef = torch.randn(4, 5), torch.randn(2, 5, 3)
    _, _, _, state, _ = lean._pad_inputs(3, x, coef, None, (torch.tensor(1.0), torch.zeros(5), torch.ones(2, 5)), None)
    assert state[0].dim() == 0 and state[1].shape == (8,) and state[2].shape == (2, 8)  # (..., I): the last dim
    assert state[2][:, 5:].eq(0).all() and state[2][:, :5].eq(1).all()
    for bad in ((torch.zeros(3),), (torch.zeros(5, 2),)):  # the inputs must be the last dim
        with pytest.raises(ValueError, match=r"must be 0-d or per-input \(\.\.\., 5\) to be padded, got shapes"):
            lean._pad_inputs(3, x, coef, None, bad, None)


@pytest.mark.slow
def test_gradcheck_float64_fused_padded_rbf():
    """The padded fused path of RBF (47 inputs + 1 zero input; its LayerNorm over the real ones only) against finite
    differences, for the input and the LayerNorm's parameters."""
    from kanformer.layers import lean

    layer = KANLinear(47, 2, "rbf").double()
    with torch.no_grad():
        for p in layer.basis.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    with kernel("fused"):
        assert lean._input_pad(layer.basis, 9, 47, layer.basis.fused_state(), torch.float64, torch.device("cpu")) == 1
    x = (torch.randn(4, 47, dtype=torch.float64) * 1.3).requires_grad_(True)
    norm = layer.basis.norm

    def f(x, weight, bias):
        with torch.nn.utils.stateless._reparametrize_module(norm, {"weight": weight, "bias": bias}), kernel("fused"):
            return layer(x)

    assert torch.autograd.gradcheck(f, (x, norm.weight, norm.bias), eps=1e-6, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bspline", "rational"])
def test_fused_kernels_equal_reference_under_bf16_autocast(name):
    _close_under_bf16_autocast(name, "fused")


@pytest.mark.slow
def test_auto_compiles_the_helpers_for_training_and_falls_back_when_compiling_fails(monkeypatch):
    ffn = create_ffn("chebyshev", D, H)  # its helpers compile in ~12 s on 2 cores, the B-spline's in ~40 s
    x = _inputs(torch.float32)
    dispatch._COMPILED.clear()
    with kernel("auto"):
        auto = _run(ffn, x, "auto")
    assert any("[ChebyshevBasis(" in key for key in dispatch._COMPILED), dispatch._COMPILED.keys()
    _close(auto, _run(ffn, x, "reference"), rtol=1e-4, atol=1e-4)
    with torch.no_grad(), kernel("auto"):  # inference takes the reference path: nothing to recompute
        assert not use_lean(True)

    def broken(fn, **_):
        def run(*args):
            raise RuntimeError("no C++ compiler here")
        return run

    dispatch._COMPILED.clear()
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(dispatch, "_FUSED_FAILED", [])
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here.*continuing on the lean"):
        fallback = _run(ffn, x, "auto")
    _close(fallback, auto, rtol=1e-4, atol=1e-4)
    assert dispatch._FUSED_FAILED and not dispatch._fused()
    _run(ffn, x, "auto")  # no second attempt, no second warning
    assert len(dispatch._FUSED_FAILED) == 1
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):  # the fused mode itself does not hide it
        _run(ffn, x, "fused")
    dispatch._COMPILED.clear()


@pytest.mark.slow
def test_compile_fullgraph_kan_gpt2_matches_eager():
    """A KAN GPT-2 compiles whole with no graph break and equals the eager model. One block: a model's graph compiles
    each block's loops anew (on an empty compiler cache, 3 blocks took 140 - 170 s here, 1 block 62 s)."""
    model = build("gpt2", n_layer=1)
    kanify(model, "bspline", hidden=24)
    ids = torch.randint(0, 97, (2, 16))
    ref = model(input_ids=ids, labels=ids)
    ref.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any graph break is an error
    out = compiled(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-3, atol=1e-5)


def test_ffn_benchmark_interleaves_rounds_and_reports_per_round_ratios(tmp_path, capsys, monkeypatch):
    """Every FFN takes a turn per round, every other round in reverse order; a ratio is the median of the same-round
    ratios, with their range."""
    from benchmarks import bench_ffn

    turns = []
    timed = bench_ffn.Arm.time

    def record(arm, *args):
        turns.append(arm.name)
        return timed(arm, *args)

    monkeypatch.setattr(bench_ffn.Arm, "time", record)
    out = tmp_path / "ffn.json"
    with kernel("lean"):  # restored afterwards (the benchmark sets the process' path)
        bench_ffn.main(["--d-model", "16", "--tokens", "32", "--rounds", "3", "--repeats", "1", "--warmup", "1",
                        "--ffns", "chebyshev", "--kernel", "lean", "--malloc", "system", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["rounds"] == 3 and [r["ffn"] for r in result["rows"]] == ["mlp", "chebyshev"]
    assert turns == ["mlp", "chebyshev", "chebyshev", "mlp", "mlp", "chebyshev"]
    mlp, cheb = result["rows"]
    assert mlp["time_ratio"] == mlp["time_ratio_low"] == mlp["time_ratio_high"] == 1.0
    assert 0 < cheb["time_ratio_low"] <= cheb["time_ratio"] <= cheb["time_ratio_high"]
    assert all(r["first_step_s"] > 0 and r["settled_s"] is None for r in result["rows"])  # pinned: nothing to settle
    assert "3 rounds of 1 steps per FFN, interleaved, every other round in reverse order" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_ffn.main(["--rounds", "0"])
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err


def test_model_benchmark_alternates_its_rounds_and_times_a_control_arm(tmp_path, capsys, monkeypatch):
    """bench_model: every arm takes a turn per round, every other round in reverse order; ``--control`` adds the MLP
    GPT-2 again as the last arm, its row named so, with its same-round ratios to the reference."""
    from benchmarks import bench_model

    turns = []
    taken = bench_model.ModelArm.turn

    def record(arm, first):
        turns.append(arm.label)
        return taken(arm, first)

    monkeypatch.setattr(bench_model.ModelArm, "turn", record)
    counted = iter([0, 2, 0])  # CUDA's sync count, faked: a step of each arm runs under it, the second waits twice

    def syncs(device, fn, warmup=0):
        assert warmup == 1  # the arm's own model's one-off checks fall before the count
        fn()
        n = next(counted)
        return {"syncs": n, "at": {"attention.py:7": n} if n else {}}

    monkeypatch.setattr(bench_model, "count_syncs", syncs)
    out = tmp_path / "model.json"
    with kernel("lean"):  # restored afterwards
        bench_model.main(["--arms", "mlp", "chebyshev", "--n-layer", "1", "--d-model", "16", "--n-head", "2", "--seq",
                          "8", "--batch", "2", "--vocab", "32", "--steps", "1", "--rounds", "3", "--warmup", "1",
                          "--kernel", "lean", "--malloc", "system", "--device", "cpu", "--control", "--json", str(out)])
    result = json.loads(out.read_text())
    order = ["mlp", "chebyshev", "mlp (control)"]
    assert turns == order + order[::-1] + order
    assert [r["ffn"] for r in result["rows"]] == order and result["order"] == "alternating"
    reference, control = result["rows"][0], result["rows"][2]
    assert control["params"] == reference["params"] and control["activation_ratio"] == 1.0
    assert 0 < control["throughput_ratio_low"] <= control["throughput_ratio"] <= control["throughput_ratio_high"]
    assert [r["syncs"]["syncs"] for r in result["rows"]] == [0, 2, 0]
    printed = capsys.readouterr().out
    assert "| mlp (control) | " in printed
    assert ("synchronising CUDA operations in a training step's forward and backward: chebyshev 2 (at "
            "{'attention.py:7': 2})") in printed
    with pytest.raises(SystemExit):
        bench_model.main(["--rounds", "0"])
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err


def test_the_model_benchmark_times_generation_and_its_ranges_carry_no_training_target(tmp_path, capsys):
    """``--generate N``: each arm's GPT-2 generates N tokens after a prompt of --seq - N, in interleaved rounds,
    tokens/s against the MLP GPT-2's; bench_ranges summarises such runs without the training target, and keeps them
    apart from training runs; a count that leaves no prompt, or a compiled model, is refused."""
    from benchmarks import bench_model, bench_ranges

    out = tmp_path / "generate.json"
    tiny = ["--arms", "mlp", "chebyshev", "--n-layer", "1", "--d-model", "16", "--n-head", "2", "--seq", "8",
            "--batch", "2", "--vocab", "32", "--steps", "1", "--rounds", "2", "--warmup", "1", "--kernel", "lean",
            "--malloc", "system", "--device", "cpu"]
    with kernel("lean"):
        bench_model.main([*tiny, "--generate", "3", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["generate"] == 3 and [r["ffn"] for r in result["rows"]] == ["mlp", "chebyshev"]
    for row in result["rows"]:
        assert row["generate_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0 and "activation_ratio" not in row
        assert row["throughput_ratio_low"] <= row["throughput_ratio"] <= row["throughput_ratio_high"]
    assert "3 tokens each greedily with the KV cache after a prompt of 5" in capsys.readouterr().out
    summary = bench_ranges.summarize(bench_ranges.load([str(out), str(out)]))
    assert [r["target"] for r in summary["rows"]] == [None, None]
    assert "generation, 3 new tokens a sequence" in bench_ranges.format_table(summary)
    training = {**result, "generate": 0}
    (tmp_path / "train.json").write_text(json.dumps(training))
    with pytest.raises(SystemExit, match="settings differ"):
        bench_ranges.load([str(out), str(tmp_path / "train.json")])
    for bad, message in ((["--generate", "8"], "--generate takes 1 - 7 new tokens"),
                         (["--generate", "3", "--compile"], "not with --compile or --gpu")):
        with pytest.raises(SystemExit):
            bench_model.main([*tiny, *bad])
        assert message in capsys.readouterr().err


def test_the_model_benchmark_compiles_each_arm_in_the_mode_asked_for(tmp_path, capsys, monkeypatch):
    """``--compile --compile-mode reduce-overhead`` compiles every arm's model, the MLP's too, with CUDA graphs (on a
    CPU its graphs run as in the default mode); the mode is in the result and its table's heading; the mode without
    ``--compile`` is refused. The fp32 CPU products' library is chosen before the first model is compiled, as
    ``train.compile`` chooses it (traced before a choice, the graphs took PyTorch's products)."""
    from benchmarks import bench_model
    from kanformer.layers import gemm

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: compiled.append((mode, gemm.chosen())) or model)
    gemm.set_library(gemm.setting())  # no library chosen, as in a new process
    out = tmp_path / "model.json"
    bench_model.main(["--arms", "mlp", "chebyshev", "--n-layer", "1", "--d-model", "16", "--n-head", "2", "--seq",
                      "8", "--batch", "2", "--vocab", "32", "--steps", "1", "--rounds", "1", "--warmup", "1",
                      "--kernel", "lean", "--malloc", "system", "--device", "cpu", "--compile", "--compile-mode",
                      "reduce-overhead", "--json", str(out)])
    assert [mode for mode, _ in compiled] == ["reduce-overhead", "reduce-overhead"]
    assert all(library for _, library in compiled), compiled
    result = json.loads(out.read_text())
    assert result["compiled"] and result["compile_mode"] == "reduce-overhead"
    assert "torch.compile of each model (mode reduce-overhead)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_model.main(["--compile-mode", "reduce-overhead"])
    assert "--compile-mode reduce-overhead compiles each model: add --compile" in capsys.readouterr().err


def test_benchmark_ranges_span_the_runs_and_refuse_runs_of_other_settings(tmp_path, capsys):
    """``benchmarks.bench_ranges``: per FFN the range of the runs' ratios, bold only where every run met its target
    (1.15x; the wavelet 1.5x; baselines none); runs of different settings, or files that are no FFN benchmark result,
    are refused naming them."""
    from benchmarks import bench_ranges

    def run(i: int, **settings: str) -> str:
        rows = [{"ffn": "mlp", "fwd_bwd_s": 0.1 + i / 100, "time_ratio": 1.0, "fwd_time_ratio": 1.0,
                 "memory_ratio": 1.0, "path": "-"}]
        for name, ratios in (("bspline", (1.10, 1.14, 1.12)), ("rbf", (1.10, 1.20, 1.12)),
                             ("wavelet", (1.45, 1.40, 1.49)), ("swiglu", (0.98, 1.02, 1.00))):
            r = ratios[i % 3]
            rows.append({"ffn": name, "fwd_bwd_s": 0.1, "time_ratio": r, "time_ratio_low": r - 0.1,
                         "time_ratio_high": r + 0.1, "fwd_time_ratio": 0.9, "memory_ratio": 0.16,
                         "path": "fused", "compiled_reference_ratio": 1.3 + i % 3 / 10})
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps({"benchmark": "ffn", "d_model": 384, "tokens": 2048, "dtype": "fp32",
                                    "autocast": False, "device": "cpu", "match": "params", "machine": "m",
                                    "rows": rows, **settings}))
        return str(path)

    paths = [run(i) for i in range(3)]
    bench_ranges.main([*paths, "--json", str(tmp_path / "summary.json")])
    out = capsys.readouterr().out
    assert "the GELU MLP's fwd+bwd step 100.0 / 110.0 / 120.0 ms" in out
    assert "| bspline | fused | **1.10 - 1.14** | 1.10 / 1.14 / 1.12 | 1.00 - 1.24 | 1.30 - 1.50 | 0.90 | 0.16 |" in out
    assert "| rbf | fused | 1.10 - 1.20 |" in out and "| wavelet | fused | **1.40 - 1.49** |" in out
    assert "| swiglu | fused | 0.98 - 1.02 |" in out  # a baseline has no target
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["ffn"], r["within_target"]) for r in summary["rows"]] == [
        ("mlp", False), ("bspline", True), ("rbf", False), ("wavelet", True), ("swiglu", False)]
    with pytest.raises(SystemExit, match=r"settings differ \(dtype 'fp32' in .*run0.json, 'bf16' here"):
        bench_ranges.main([paths[0], run(3, dtype="bf16")])
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "model"}))
    with pytest.raises(SystemExit, match="other.json: not a result of benchmarks.bench_ffn or benchmarks.bench_model"):
        bench_ranges.main([paths[0], str(tmp_path / "other.json")])


def test_benchmark_ranges_over_gpt2_runs_count_the_runs_under_the_target_per_arm(tmp_path, capsys):
    """``benchmarks.bench_ranges`` on ``bench_model`` results: per arm, over the runs that had it, the range of its
    ratios, their number and how many fell under 0.85x (bold where none did; baselines and the control arm have no
    target); a GPT-2 run among FFN runs, or one of another setting, is refused."""
    from benchmarks import bench_ranges

    def run(i: int, arms: dict[str, float], **settings: object) -> str:
        rows = [{"ffn": "mlp", "train_tokens_per_s": 10000.0 + i, "throughput_ratio": 1.0, "activation_ratio": 1.0}]
        rows += [{"ffn": name, "train_tokens_per_s": 9000.0, "throughput_ratio": r, "throughput_ratio_low": r - 0.1,
                  "throughput_ratio_high": r + 0.1, "activation_ratio": 0.64} for name, r in arms.items()]
        path = tmp_path / f"model{i}.json"
        path.write_text(json.dumps({"benchmark": "model", "n_layer": 4, "d_model": 128, "seq": 64, "batch": 16,
                                    "bf16": False, "compiled": False, "device": "cpu", "machine": "m", "rows": rows,
                                    **settings}))
        return str(path)

    paths = [run(0, {"bspline": 0.90, "rbf": 0.84, "wavelet": 0.80}),
             run(1, {"bspline": 0.86, "rbf": 0.91, "mlp (control)": 0.97}),
             run(2, {"bspline": 0.95, "rbf": 0.83, "swiglu": 1.05, "mlp (control)": 1.04})]
    bench_ranges.main([*paths, "--json", str(tmp_path / "summary.json")])
    out = capsys.readouterr().out
    assert "GPT-2 benchmark over 3 runs: 4 x 128, 16 x 64 tokens" in out
    assert "the MLP GPT-2's tokens/s 10,000 / 10,001 / 10,002" in out
    assert "| bspline | **0.86 - 0.95** | 3 | 0 | 0.90 / 0.86 / 0.95 | 0.76 - 1.05 | 0.64 |" in out
    assert "| rbf | 0.83 - 0.91 | 3 | 2 | 0.84 / 0.91 / 0.83 |" in out
    assert "| wavelet | 0.80 | 1 | 1 | 0.80 |" in out
    assert "| mlp (control) | 0.97 - 1.04 | 2 | - |" in out and "| swiglu | 1.05 | 1 | - |" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["ffn"], r["within_target"], r["under_target"]) for r in summary["rows"]] == [
        ("mlp", False, 0), ("bspline", True, 0), ("rbf", False, 2), ("wavelet", False, 1), ("mlp (control)", False, 0),
        ("swiglu", False, 0)]
    with pytest.raises(SystemExit, match=r"settings differ \(bf16 False in .*model0.json, True here"):
        bench_ranges.main([paths[0], run(3, {"rbf": 0.9}, bf16=True)])
    ffn = tmp_path / "ffn.json"
    ffn.write_text(json.dumps({"benchmark": "ffn", "rows": [{"ffn": "mlp"}]}))
    with pytest.raises(SystemExit, match=r"ffn.json: a 'ffn' benchmark's result among 'model' ones"):
        bench_ranges.main([paths[0], str(ffn)])


def test_ffn_benchmarks_cold_start_runs_on_fresh_caches_and_puts_the_old_ones_back(monkeypatch):
    """``--cold``: the compiler's and the autotuner's caches point into a fresh temporary directory for the run (the
    background compiles inherit the environment), which is removed after; the environment is restored."""
    from benchmarks.bench_ffn import cold_caches
    from kanformer.layers import machine

    monkeypatch.setenv("KANFORMER_CACHE", "/kept/kanformer")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with cold_caches(True):
        fresh = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).parent
        assert fresh.is_dir() and not any(fresh.iterdir())
        assert machine.cache_path("autotune.json") == fresh / "kanformer" / "autotune.json"
    assert not fresh.exists() and os.environ["KANFORMER_CACHE"] == "/kept/kanformer"
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    with cold_caches(False):
        assert os.environ["KANFORMER_CACHE"] == "/kept/kanformer"


@pytest.mark.slow
def test_ffn_benchmark_times_torch_compile_of_the_reference_beside_the_rest(tmp_path, capsys, monkeypatch):
    """torch.compile of each FFN, its reference path and as a compiled model runs it (the lean Function traced)."""
    from benchmarks import bench_ffn

    traced = []
    monkeypatch.setattr(kan, "lean_kan_ffn", lambda *a, _f=kan.lean_kan_ffn: traced.append(1) or _f(*a))
    out = tmp_path / "ffn.json"
    with kernel("lean"):
        bench_ffn.main(["--d-model", "8", "--tokens", "16", "--rounds", "2", "--repeats", "1", "--warmup", "1",
                        "--ffns", "chebyshev", "--kernel", "lean", "--compiled-reference", "--compiled-kit", "--json",
                        str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["path"] for r in rows] == ["-", "lean"]
    for kind in ("reference", "kit"):
        assert all(r[f"compiled_{kind}_ratio"] > 0 and r[f"compiled_{kind}_first_step_s"] > 0 for r in rows)
        assert all(r[f"compiled_{kind}_saved_activation_bytes"] > 0 for r in rows)
    # under the lean memory rule (the default) the compiled kit saves no more than the eager lean path plus the
    # weights' matmul layouts; the compiled reference keeps the basis values
    assert rows[1]["compiled_kit_memory_ratio"] < rows[1]["compiled_reference_memory_ratio"]
    assert traced  # the kit's compiled arm traced the two-layer Function (eager lean never takes it)
    out = capsys.readouterr().out
    assert "compiled reference x MLP | its saved act. x MLP | its first step s | compiled kit x MLP |" in out
    assert "(memory rule lean)" in out


@pytest.mark.slow
def test_the_gpu_check_script_runs_end_to_end_on_tiny_cpu_shapes():
    """`python -m benchmarks.bench_model --gpu` runs on CUDA only; its every step is exercised here, small, on CPU."""
    import argparse

    from benchmarks import bench_model
    from benchmarks.bench_model import all_checks

    args = argparse.Namespace(warmup=1, arms=None)
    # the lean path only: compiling the fused graphs of every FFN would take minutes here (tested on their own above)
    out = all_checks(args, torch.device("cpu"), {"d_model": 16, "tokens": 64},
                     {"n_layer": 1, "d_model": 32, "n_head": 2, "seq": 16, "batch": 2, "vocab": 64},
                     repeats=1, steps=1, modes=("lean",), compiled=("chebyshev",))
    assert all(r["ok"] for r in out["correctness"]), [r for r in out["correctness"] if not r["ok"]]
    assert [(r["ffn"], r["bf16"]) for r in out["correctness"] if r["mode"] == "compiled"] == [("chebyshev", False),
                                                                                              ("chebyshev", True)]
    assert all(r["eval_rel_err"] <= r["max_rel_err"] for r in out["correctness"])  # evaluation's forward checked too
    assert ("bspline (adapted grid)", "lean", False) in [(r["ffn"], r["mode"], r["bf16"]) for r in out["correctness"]]
    assert set(out["ffn"]) == {"reference", "lean"} and set(out["model"]) == {"lean"}
    assert len(out["targets"]) == 4 and all(isinstance(t["met"], bool) for t in out["targets"].values())
    assert out["model"]["lean"]["rows"][0]["ffn"] == "mlp" and out["model"]["lean"]["rows"][0]["throughput_ratio"] == 1
    # a generation step's few tokens checked against the reference too, and the models' generation timed
    assert all(0 <= r["few_tokens_rel_err"] <= r["max_rel_err"] for r in out["correctness"])
    assert all(r["syncs"] is None for r in out["correctness"])  # counted on CUDA only
    # the trainer trained, resumed exactly; its synchronisations are counted on CUDA only
    assert out["train"]["ok"] and out["train"]["resume_max_abs_diff"] == 0 and "syncs_per_step" not in out["train"]
    # compare's time-matched MLP planned on the device: a width, both steps timed on it (the debug GPT-2's steps are
    # mostly fixed costs, so the width may be capped, and the log says so)
    tm = out["time_match"]
    assert tm["device"] == "cpu" and tm["kernel"] == "lean" and tm["width"] >= 1
    assert tm["kan_step_ms"] > 0 and tm["baseline_step_ms"] > 0
    assert tm["widths_timed"] >= 2 and len(tm["log"]) == 1
    assert tm["log"][0].startswith(f"mlp@time=bspline: width {tm['width']},")
    assert tm["capped"] == ("not time-matched" in tm["log"][0])
    # CUDA graphs need CUDA: each FFN's row says so, and the stage is no error
    graphed = out["ffn_graphed"]["rows"]
    assert [r["ffn"] for r in graphed] == ["mlp", *bench_model.GPU_TARGETS] and "ffn_graphed" not in out["errors"]
    assert all("graphed_error" in r and "graphed_s" not in r for r in graphed)
    gen = out["generate"]
    assert gen["generate"] == 8 and gen["kernel"] == "lean" and [r["ffn"] for r in gen["rows"]][:2] == ["mlp", "swiglu"]
    assert all(r["generate_tokens_per_s"] > 0 for r in gen["rows"]) and gen["rows"][0]["throughput_ratio"] == 1



def test_the_ffn_benchmark_times_each_step_replayed_as_cuda_graphs(monkeypatch, capsys):
    """``bench_ffn --cuda-graphs``: each FFN's step (the MLP's too) through ``torch.cuda.make_graphed_callables``,
    timed in turns beside the plain step, its outputs and gradients checked against it, its ratios graphed against
    graphed and against its own plain step; one that fails to graph is reported in its row. CUDA itself is faked
    here (the graphed module runs the FFN as it is); the flag refuses a CPU device."""
    import argparse

    from benchmarks import bench_ffn

    captured, built = [], []

    def graphed(module, sample_args, allow_unused_input=False):
        assert allow_unused_input and sample_args[0].requires_grad
        if module.name == "rbf":
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        captured.append((module.name, torch.is_autocast_enabled("cpu"), torch.is_autocast_cache_enabled()))
        plain = module.forward
        module.forward = lambda x: plain(x) * 1.0  # as torch's: the forward replaced in place, the module returned
        return module

    def create(*args, **kwargs):
        built.append(bench_ffn_create(*args, **kwargs))
        return built[-1]

    bench_ffn_create = bench_ffn.create_ffn
    monkeypatch.setattr(bench_ffn, "create_ffn", create)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", graphed)
    ns = argparse.Namespace(device="cpu", dtype="bf16", no_autocast=False, match="params", ffns=["chebyshev", "rbf"],
                            warmup=1, repeats=1, rounds=2, compile_options=[], cuda_graphs=True, d_model=16,
                            tokens=32)
    with kernel("lean"):
        res = bench_ffn.run(ns)
    # captured under autocast without its cast cache (make_graphed_callables refuses the cache)
    assert captured == [("mlp", True, False), ("chebyshev", True, False)]
    mlp, cheb, rbf = res["rows"]
    # the graphs replace a copy's forward: the FFNs the plain steps and the saved-activation count run are untouched
    assert len(built) == 3 and not any("forward" in vars(ffn) for ffn in built) and mlp["memory_ratio"] == 1
    assert res["cuda_graphs"] and mlp["graphed_ratio"] == 1 and mlp["graphed_max_rel_err"] == 0
    assert cheb["graphed_ratio"] > 0 and cheb["graphed_vs_plain"] > 0 and cheb["graphed_max_rel_err"] == 0
    assert cheb["graphed_first_step_s"] > 0 and "graphed_s" not in rbf
    assert rbf["graphed_error"] == "RuntimeError: operation not permitted when stream is capturing"
    table = bench_ffn.format_table(res)
    assert "| FFN | graphed ms | x MLP graphed | x its plain step | max rel. err | capture s |" in table
    assert "| rbf | failed: RuntimeError: operation not permitted when stream is capturing |" in table
    with pytest.raises(SystemExit):
        bench_ffn.main(["--cuda-graphs", "--device", "cpu"])
    assert "--cuda-graphs replays CUDA graphs: it needs --device cuda (got cpu)" in capsys.readouterr().err


@pytest.mark.slow
def test_the_gpu_checks_training_stage_trains_resumes_and_works_the_grids_on_cpu(monkeypatch):
    """The GPU check's ``train`` stage (benchmarks/check_training.py) as it runs on a device, here on the CPU: the
    B-spline GPT-2 trained with its grid schedule (fitted, extended, fitted again), resumed after the extension to
    the same losses, the loss falling."""
    from benchmarks.check_training import GRID_EVENTS, check_training

    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = check_training(torch.device("cpu"))
    assert out["ok"] and out["grid_events"] == GRID_EVENTS == [[4, "update"], [5, "extend"], [8, "update"]]
    assert out["resume_max_abs_diff"] == 0.0 and out["losses"][-1] < out["losses"][0]


def test_the_gpu_check_counts_each_pinned_paths_synchronising_operations(monkeypatch):
    """On CUDA every pinned path's correctness row counts the synchronising operations of a training step and a
    generation call (torch.cuda's sync debug mode, faked here: it warns from the line that synchronised), the mode
    put back after, even when the step raises; off CUDA nothing is counted."""
    import warnings

    from benchmarks import bench_model

    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def step():
        warnings.warn("an unrelated warning", stacklevel=1)
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", stacklevel=1)  # one line thrice: each counted

    found = bench_model.count_syncs(torch.device("cuda"), step)
    [(where, count)] = found["at"].items()
    assert found["syncs"] == count == 3 and where.endswith(f"test_kernels.py:{_line(step)}")
    assert modes == ["warn", 0]
    calls = []

    def warm_then_step():  # each call synchronises thrice (step) and once more in the warm-up
        calls.append(1)
        if len(calls) <= 2:
            warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
        step()

    with warnings.catch_warnings(record=True) as outside:  # the warm-up's, not counted
        warnings.simplefilter("always")
        assert bench_model.count_syncs(torch.device("cuda"), warm_then_step, warmup=2)["syncs"] == 3
    assert len(calls) == 3 and sum("synchronizing" in str(w.message) for w in outside) == 8
    with pytest.raises(ZeroDivisionError):
        bench_model.count_syncs(torch.device("cuda"), lambda: 1 / 0)
    assert modes[-1] == 0
    assert bench_model.count_syncs(torch.device("cpu"), warm_then_step, warmup=2) is None and len(calls) == 3

    steps = []
    monkeypatch.setattr(bench_model, "count_syncs", lambda device, fn: fn() or steps.append(1) or {"syncs": 0})
    monkeypatch.setattr(bench_model, "LEAN_FFNS", ["bspline"])
    monkeypatch.setattr(bench_model, "GRID_ADAPTED", [])
    monkeypatch.setattr(dispatch, "resolve", lambda ffn, x: "lean")  # auto's row, not its timing, is the point
    # the compiled helpers as the eager code they compile: nothing compiles
    for module in (lean, lean_ffn, lean_rational, few_tokens):
        monkeypatch.setattr(module, "_kernel_fn", lambda fn, x=None, tag="": fn)
    rows = bench_model.check_fast_paths(torch.device("cpu"), ("auto", "lean"))
    assert [(r["mode"], r["bf16"], r["syncs"]) for r in rows] == [
        ("auto", False, None), ("lean", False, {"syncs": 0}), ("auto", True, None), ("lean", True, {"syncs": 0})]
    assert len(steps) == 2 and all(r["ok"] for r in rows)


def _line(fn):
    """The line of ``fn``'s first ``warnings.warn("called a synchronizing ...")``."""
    import inspect

    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if "synchronizing" in line)


def test_the_gpu_checks_record_a_failing_stage_run_the_rest_and_save_after_each(monkeypatch, tmp_path):
    """A check that breaks on a machine nothing has run on leaves its traceback in the result, the later stages still
    run, the JSON is rewritten after every stage (a run cut short keeps what it measured), and main exits non-zero."""
    import argparse
    import json

    from benchmarks import bench_ffn, bench_model, check_training, profile_ffn

    timed = []

    def fake_ffn(ns):
        if ns.dtype != "bf16" or ns.rounds != 3:
            raise AssertionError(ns)
        timed.append((ns.ffns, ns.compile_options, ns.cuda_graphs))
        return {"rows": [{"ffn": n, "time_ratio": 1.1, "memory_ratio": 0.5} for n in ["mlp", *bench_model.GPU_TARGETS]]}

    def broken_model(ns):
        raise RuntimeError(f"no kernel image for {ns.kernel}")

    saved = []
    monkeypatch.setattr(bench_model, "check_fast_paths", lambda device, modes, compiled, rows: [
        {"ffn": "rbf", "mode": "compiled" if compiled else modes[0], "ok": True}])
    monkeypatch.setattr(check_training, "check_training", lambda device: {"ok": True, "losses": [2.0, 1.0]})
    matched = []
    monkeypatch.setattr(check_training, "check_time_matching",
                        lambda device, **kw: matched.append(kw) or {"width": 512, "log": []})
    monkeypatch.setattr(bench_ffn, "run", fake_ffn)
    monkeypatch.setattr(bench_ffn, "format_table", lambda res: "")
    monkeypatch.setattr(bench_model, "run_model_bench", broken_model)
    out = bench_model.all_checks(argparse.Namespace(), torch.device("cpu"), {"d_model": 8, "tokens": 8}, {},
                                 modes=("lean", "fused"), compiled=("rbf",),
                                 save=lambda r: saved.append(json.loads(json.dumps(r))))
    # eager paths first, then the ones that compile; every stage saved once, in that order
    assert list(out["stage_seconds"]) == ["correctness/paths", "train", "ffn/reference", "ffn/lean", "ffn/fused",
                                          "model/lean", "model/fused", "generate", "time_match", "ffn_options",
                                          "ffn_graphed", "correctness/compiled"]
    assert len(saved) == 12 and set(saved[2]["ffn"]) == {"reference"} and saved[-1]["errors"] == out["errors"]
    assert out["train"] == {"ok": True, "losses": [2.0, 1.0]}  # the trainer's check, early: it compiles nothing
    # compare's time matching on the first path checked where auto is not (a pinned lean compiles nothing)
    assert out["time_match"]["width"] == 512 and matched == [{"model": None, "batch_size": 8, "kernel": "lean"}]
    # the fused step under each set of compiler options the GPU's host may want, of the FFNs named for it, apart
    assert timed[-2] == (bench_model.GPU_OPTION_FFNS, list(bench_model.GPU_COMPILE_OPTIONS), False)
    assert timed[:-2] == [(None, [], False)] * 3 and "rows" in out["ffn_options"]
    # and each FFN with a GPU target, the MLP beside it, replayed as CUDA graphs, on the first path checked
    assert timed[-1] == (bench_model.GPU_TARGETS, [], True) and out["ffn_graphed"]["kernel"] == "lean"
    assert set(out["errors"]) == {"model/lean", "model/fused", "generate"}
    assert "RuntimeError: no kernel image for lean" in out["errors"]["generate"]  # no auto: the first path checked
    assert "RuntimeError: no kernel image for fused" in out["errors"]["model/fused"]
    assert [r["mode"] for r in out["correctness"]] == ["lean", "compiled"]
    assert set(out["ffn"]) == {"reference", "lean", "fused"} and out["targets"] == {}  # no model figures, no targets

    # a short lease straight to the figures it lacks: the model stages alone, of the paths asked for
    only = bench_model.all_checks(argparse.Namespace(), torch.device("cpu"), {"d_model": 8, "tokens": 8}, {},
                                  modes=("lean", "fused"), compiled=("rbf",), stages=("model",))
    assert list(only["stage_seconds"]) == ["model/lean", "model/fused"] and not only["correctness"]

    # auto's model also compiled whole (the configuration a GPU wants), and with CUDA graphs; its targets count the
    # best of the three
    def model_bench(ns):
        ratio = (0.95 if ns.compile_mode == "reduce-overhead" else 0.9) if ns.compile else 0.7
        return {"rows": [{"ffn": n, "throughput_ratio": 1.0 if n == "mlp" else ratio}
                         for n in ["mlp", "swiglu", *bench_model.GPU_TARGETS]]}

    monkeypatch.setattr(bench_model, "run_model_bench", model_bench)
    monkeypatch.setattr(bench_model, "format_table", lambda res: "")
    profiled = []
    monkeypatch.setattr(profile_ffn, "profile_arm", lambda name, mode, ns, device: profiled.append(
        (name, mode, ns.compile, ns.dtype)) or {"ffn": name})
    monkeypatch.setattr(profile_ffn, "format_arm", lambda row, mlp: "")
    both = bench_model.all_checks(argparse.Namespace(), torch.device("cpu"), {"d_model": 8, "tokens": 8}, {},
                                  modes=("auto",), stages=("ffn", "model", "model_compiled", "profile"))
    assert list(both["stage_seconds"]) == ["ffn/reference", "ffn/auto", "model/auto", "model_compiled",
                                           "profile/eager", "profile/compiled"]
    assert "model_cudagraphs" not in both
    names = ["mlp", *bench_model.GPU_TARGETS]
    assert profiled == [(n, "auto", c, "bf16") for c in (False, True) for n in names]
    assert [r["ffn"] for r in both["profile"]["compiled"]] == names
    assert not both["errors"] and both["model_compiled"]["rows"][1]["throughput_ratio"] == 0.9
    t = both["targets"]["auto/bspline"]
    assert (t["model_throughput_ratio"], t["compiled_model_throughput_ratio"], t["model_throughput_from"]) == (
        0.7, 0.9, "compiled") and t["met"] and t["cudagraphs_model_throughput_ratio"] is None
    graphed = bench_model.all_checks(argparse.Namespace(), torch.device("cpu"), {"d_model": 8, "tokens": 8}, {},
                                     modes=("auto",), stages=("ffn", "model", "model_cudagraphs"))
    assert list(graphed["stage_seconds"]) == ["ffn/reference", "ffn/auto", "model/auto", "model_cudagraphs"]
    t = graphed["targets"]["auto/rbf"]
    assert (t["compiled_model_throughput_ratio"], t["cudagraphs_model_throughput_ratio"],
            t["model_throughput_from"]) == (None, 0.95, "cudagraphs")

    seen = {}
    monkeypatch.setattr(bench_model, "all_checks", lambda *a, **kw: seen.update(kw) or out)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    bench_model.gpu_checks(argparse.Namespace(gpu_kernels=["fused"], gpu_stages=["ffn", "model"]))
    assert seen["modes"] == ("fused",) and seen["stages"] == ("ffn", "model")

    monkeypatch.setattr(bench_model, "gpu_checks", lambda args, save: out)
    with pytest.raises(SystemExit, match="3 check\\(s\\) failed: model/lean, model/fused, generate"):
        bench_model.main(["--gpu", "--json", str(tmp_path / "gpu.json")])
    assert json.loads((tmp_path / "gpu.json").read_text())["errors"] == out["errors"]


def test_the_gpu_checks_keep_their_time_budget_and_still_write_the_targets(monkeypatch, capsys):
    """``--gpu-budget-s``: the stage in flight when the budget runs out is cut wherever it runs (here in a sleep, as a
    wait on a background compile would be), the later stages are skipped, nothing is recorded as an error, and the
    targets of what ran and auto's choices are still written."""
    import argparse
    import time

    from benchmarks import bench_ffn, bench_model, check_training

    def ffn(ns):
        return {"rows": [{"ffn": n, "time_ratio": 1.1, "memory_ratio": 0.5} for n in ["mlp", *bench_model.GPU_TARGETS]]}

    def model(ns):
        if ns.kernel == "fused":
            time.sleep(30)  # cut by the budget long before it ends
        return {"rows": [{"ffn": n, "throughput_ratio": 1.0 if n == "mlp" else 0.9}
                         for n in ["mlp", "swiglu", *bench_model.GPU_TARGETS]]}

    monkeypatch.setattr(bench_model, "check_fast_paths", lambda device, modes, compiled, rows: [])
    monkeypatch.setattr(check_training, "check_training", lambda device: {"ok": True})
    monkeypatch.setattr(check_training, "check_time_matching", lambda device, **kw: {"width": 512})
    monkeypatch.setattr(bench_ffn, "run", ffn)
    monkeypatch.setattr(bench_ffn, "format_table", lambda res: "")
    monkeypatch.setattr(bench_model, "run_model_bench", model)
    monkeypatch.setattr(bench_model, "format_table", lambda res: "")
    began = time.perf_counter()
    out = bench_model.all_checks(argparse.Namespace(), torch.device("cpu"), {"d_model": 8, "tokens": 8}, {},
                                 modes=("lean", "fused"), compiled=("rbf",), budget_s=1.5)
    assert time.perf_counter() - began < 10
    assert out["cut"] == "model/fused" and out["skipped"] == ["generate", "time_match", "ffn_options", "ffn_graphed",
                                                              "correctness/compiled"]
    assert not out["errors"] and set(out["model"]) == {"lean"} and list(out["stage_seconds"])[-1] == "model/fused"
    assert set(out["targets"]) == {f"lean/{n}" for n in bench_model.GPU_TARGETS} and "autotune" in out
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left behind

    def checks(device, modes, compiled, rows):  # one FFN checked, the next one's compile cut
        rows.append({"ffn": "bspline", "mode": modes[0], "ok": True})
        time.sleep(30)

    monkeypatch.setattr(bench_model, "check_fast_paths", checks)
    out = bench_model.all_checks(argparse.Namespace(), torch.device("cpu"), {"d_model": 8, "tokens": 8}, {},
                                 modes=("lean",), stages=("correctness",), budget_s=0.5)
    assert out["cut"] == "correctness/paths" and out["correctness"] == [{"ffn": "bspline", "mode": "lean", "ok": True}]

    for argv, why in ((["--gpu", "--gpu-budget-s", "0"], "got 0)"),
                      (["--gpu-budget-s", "60"], "got 60, without --gpu")):
        with pytest.raises(SystemExit) as exited:
            bench_model.main(argv)
        assert exited.value.code == 2 and f"--gpu-budget-s takes a positive number of seconds, with --gpu ({why}" in (
            capsys.readouterr().err)


_TRITON_SCRIPT = r"""
import torch
from kanformer import create_ffn, KANLinear
from kanformer.layers import triton_kan
from kanformer.layers.dispatch import kernel
assert triton_kan.triton_available(torch.zeros(1))
torch.manual_seed(0)
x = torch.randn(70, 20) * 1.5
x[0, :4] = 40.0; x[1, 4:8] = -40.0; x[2, 8:10] = 2.0
def run(mode, autocast=False):
    xr = x.clone().requires_grad_(True); ffn.zero_grad()
    with kernel(mode), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = ffn(xr)
    (y.float() * torch.linspace(-1, 1, 20)).sum().backward()
    return [y.detach().float(), xr.grad.float(), *(p.grad.float().clone() for p in ffn.parameters())]
for name, kw in (("bspline", {"grid_size": 5}), ("rational", {"groups": 3})):
    ffn = create_ffn(name, 20, 12, **kw)
    for autocast, tol in ((False, 1e-4), (True, 2e-2)):
        t, r = run("triton", autocast), run("reference", autocast)
        err = max(((a - b).norm() / b.norm().clamp_min(1e-12)).item() for a, b in zip(t, r))
        assert err < tol, (name, autocast, err)
        print("ok", name, autocast, err)
# nothing of size tokens x in x n_basis is saved for backward
layer = KANLinear(16, 4, grid_size=5)
xx = torch.randn(256, 16, requires_grad=True)
own = {t.data_ptr() for t in layer.parameters()}
sizes = []
def pack(t):
    if t.data_ptr() not in own:
        sizes.append(t.numel())
    return t
with kernel("triton"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    layer(xx)
assert max(sizes) < 256 * 16 * layer.basis.n_basis, sizes
# the op is a torch.library op: torch.compile traces through it without a graph break
t0, inv_h, k = layer.basis.triton_params()
coef_t = layer.coef.detach().permute(2, 1, 0).contiguous()
f = torch.compile(lambda a: triton_kan.bspline_kan(a, coef_t, t0, inv_h, k) * 2, fullgraph=True)
torch.testing.assert_close(f(xx.detach()), 2 * triton_kan.bspline_kan(xx.detach(), coef_t, t0, inv_h, k))
print("compiled ok")
"""


@pytest.mark.slow
def test_triton_kernels_equal_reference_in_the_interpreter():
    """The fused Triton kernels (B-spline KAN, GR-KAN rational), run by Triton's CPU interpreter (TRITON_INTERPRET=1)
    on small shapes: outputs and every gradient against the reference, saved tensors, compile-through."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton", reason="Triton is not installed (pip install triton); the kernels are optional")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("ok") == 5, proc.stdout


def test_forcing_triton_without_it_is_a_clear_error(monkeypatch):
    from kanformer.layers import lean

    monkeypatch.setattr(lean, "triton_available", lambda x: False)
    with kernel("triton"), pytest.raises(ValueError, match="kernel 'triton' needs Triton and a CUDA tensor"):
        create_ffn("bspline", 8, 4)(torch.randn(3, 8))


def test_rbf_tail_is_cut_to_zero_before_subnormals():
    """The Gaussians are exact inside sqrt(50) widths of their centre and exactly zero beyond (no value under e^-50,
    so none, nor its product with a gradient, is an fp32 subnormal: each costs CPUs a microcode assist), on the
    reference, lean and per-function forms alike."""
    basis = KANLinear(D, H, "rbf", layernorm=False).basis
    x = torch.linspace(-30, 30, 600 * D).view(-1, D)
    d = ((x - basis.lo) * basis.inv_width).unsqueeze(-1) - torch.arange(basis.num_grids)  # (N, I, G), in widths
    expected = torch.where(d * d <= 50, torch.exp(-(d.double() ** 2)), 0.0).float()
    def per_function(x):
        return torch.stack(lean._terms(basis, x, basis.fused_state())[0], dim=-1)

    forms = {"reference": basis(x), "lean": basis.lean_features(x).transpose(1, 2), "per-function": per_function(x),
             "compiled per-function": torch.compile(per_function)(x)}  # the fused loops' form, inline exp
    tiny = torch.finfo(torch.float32).tiny
    # the per-function form's recurrence (a product of up to G factors) measured 3.8e-6 relative at 6.9 widths
    rtol = {"reference": 1e-5, "lean": 1e-5, "per-function": 3e-5, "compiled per-function": 3e-5}
    for name, values in forms.items():
        torch.testing.assert_close(values, expected, rtol=rtol[name], atol=0, msg=name)
        assert not ((values != 0) & (values.abs() < tiny)).any(), name
    assert (expected == 0).any() and (expected > 0).any()
    # nor inside the recurrence: every operation's result, checked as it is made (a product cut only after it was
    # made ran into the subnormal range for inputs ~2.3 - 9 widths outside the outer centres)
    made = _SubnormalResults()
    with made:
        per_function(x)
    assert made.ops > 20 and not made.found, made.found



def test_wavelet_tail_is_cut_to_zero_before_subnormals():
    """The wavelet's Gaussian factor is exact inside 10 scales of its translation and exactly zero beyond, on the
    reference, lean and compiled per-function forms alike: no value or slope, nor its product with a gradient of
    1e-10, is an fp32 subnormal (the compiled loops' clamped exponential left ~1e-38 there, and such products took
    microcode assists). There the exponential is unclamped: its argument out of range only where the cut drops it."""
    from torch._inductor.utils import run_and_get_code

    basis = KANLinear(D, H, "wavelet").basis
    x = torch.linspace(-12, 12, 2000 * D).view(-1, D)  # with the initial scales (4/7), beyond 20 scales out
    state = basis.fused_state()
    def per_function(x):
        terms = [basis.fused_term(x, j, *state) for j in range(basis.num_wavelets)]
        return torch.stack([v for v, _ in terms], dim=-1), torch.stack([s for _, s in terms], dim=-1)

    u = (x.double().unsqueeze(-1) - basis.translation.double()) * torch.exp(-basis.log_scale.double())  # (N, I, W)
    expected = torch.where(u * u > 100, 0.0, (1 - u * u) * torch.exp(-0.5 * u * u))
    (values, slopes), code = run_and_get_code(torch.compile(per_function), x)  # the fused loops' form, inline exp
    source = "".join(code)  # its exponential unclamped: the cut drops every value whose argument is out of range
    assert "<<" in source and "maximum" not in source and "minimum" not in source
    forms = {"reference": basis(x), "lean": basis.lean_features(x).transpose(1, 2), "per-function": per_function(x)[0],
             "compiled per-function": values}
    tiny = torch.finfo(torch.float32).tiny
    for name, got in forms.items():
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6, msg=name)
        assert torch.equal(got == 0, expected == 0), name  # zero exactly where cut (and at u^2 = 1 alone besides)
    for t in (values, slopes, values * 1e-10, slopes * 1e-10):
        assert not ((t != 0) & (t.abs() < tiny)).any()
    assert (expected == 0).any() and ((u * u > 90) & (expected != 0)).any()

class _SubnormalResults(TorchDispatchMode):
    """Counts the operations run under it, and keeps those whose fp32 result holds subnormal values."""

    def __init__(self) -> None:
        super().__init__()
        self.ops, self.found = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
            n = int(((out != 0) & (out.abs() < torch.finfo(torch.float32).tiny)).sum())
            if n:
                self.found.append((str(func), n))
        return out


def test_compiled_cpu_loops_take_exp_and_sigmoid_inline_within_an_ulp():
    """vecmath's exp is arithmetic in a compiled CPU fp32 graph (no call into the vector math library, which saves
    and reloads every vector register of a fused loop around it), within an ulp of the exact exponential on [-87.3,
    88], clamped beyond; everywhere else it is torch.exp itself."""
    from torch._inductor.utils import run_and_get_code

    spread = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 175.3 - 87.3
    x = torch.cat([torch.linspace(-87.3, 88.0, 200_001), spread, torch.tensor([-1000.0, 1000.0, float("nan")])])
    y, code = run_and_get_code(torch.compile(vecmath.loop_exp), x)
    assert "<<" in "".join(code) and ".exp()" not in "".join(code)  # 2^k made in the exponent bits
    ref = torch.exp(x[:-3].double())
    ulp = torch.nextafter(ref.float(), torch.tensor(float("inf"))).double() - ref.float().double()
    assert ((y[:-3].double() - ref).abs() / ulp).max() <= 1.0  # 0.993 measured over 5 million points
    assert 1e-38 < y[-3] < 2e-38 and 1e38 < y[-2] < 2e38 and y[-1].isnan()  # clamped to normal numbers; NaN stays
    s = torch.compile(vecmath.loop_sigmoid)(x[:-3])
    torch.testing.assert_close(s, torch.sigmoid(x[:-3]), rtol=3e-7, atol=1e-7)
    xd = x.double()
    eager = [(vecmath.loop_exp(x), torch.exp(x)), (vecmath.loop_sigmoid(x), torch.sigmoid(x))]  # torch's own
    for got, want in eager:
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    # fp64: torch.exp in the graph too (the compiled library's, within 1e-15 of the eager one; inline fp32 ~1e-7)
    torch.testing.assert_close(torch.compile(vecmath.loop_exp)(xd), torch.exp(xd), rtol=1e-14, atol=0, equal_nan=True)


def test_bounded_inline_exp_leaves_the_clamp_out_and_keeps_the_bits():
    """``loop_exp(x, bounded=True)`` (the caller keeps x in range: RBF's recurrence) compiles without the clamp's
    max / min and gives the clamped form's bits inside the range; NaN stays NaN. Eager, it is torch.exp."""
    from torch._inductor.utils import run_and_get_code

    x = torch.cat([torch.linspace(-87.3, 88.0, 100_001), torch.tensor([float("nan")])])
    clamped, code = run_and_get_code(torch.compile(vecmath.loop_exp), x)
    assert "maximum" in "".join(code) and "minimum" in "".join(code)
    bounded, code = run_and_get_code(torch.compile(lambda t: vecmath.loop_exp(t, bounded=True)), x)
    source = "".join(code)
    assert "<<" in source and "maximum" not in source and "minimum" not in source
    torch.testing.assert_close(bounded, clamped, rtol=0, atol=0, equal_nan=True)
    assert bounded[-1].isnan()
    torch.testing.assert_close(vecmath.loop_exp(x, bounded=True), torch.exp(x), rtol=0, atol=0, equal_nan=True)


def test_compiled_cpu_loops_take_tanh_inline_within_two_ulps():
    """vecmath's tanh (the Chebyshev and Jacobi layers' fused forms) is arithmetic in a compiled CPU fp32 graph, with
    no call of the library's tanh, within 1e-7 of the exact value and 2e-7 relative; +-1 at the infinities, NaN stays
    NaN, tiny inputs pass through; everywhere else (eager, fp64) it is torch.tanh itself."""
    from torch._inductor.utils import run_and_get_code

    spread = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 3
    specials = torch.tensor([1e-30, -1e-30, 0.625, -0.625, 100.0, float("inf"), float("-inf"), float("nan")])
    x = torch.cat([torch.linspace(-12, 12, 400_001), spread, specials])
    y, code = run_and_get_code(torch.compile(vecmath.loop_tanh), x)
    source = "".join(code).replace("loop_tanh", "")
    assert "tanh" not in source  # no library call in the loop
    assert "maximum" not in source and "minimum" not in source  # |x| capped, so the exponential needs no clamp
    ref = torch.tanh(x[:-1].double())
    err = (y[:-1].double() - ref).abs()
    assert err.max() <= 1e-7  # 8.9e-8 measured
    assert (err / ref.abs().clamp_min(1e-38)).max() <= 2e-7  # 1.5e-7 measured
    assert y[-8] == x[-8] and y[-7] == x[-7] and y[-3] == 1.0 and y[-2] == -1.0
    assert y[-1].isnan()
    torch.testing.assert_close(vecmath.loop_tanh(x), torch.tanh(x), rtol=0, atol=0, equal_nan=True)  # eager
    xd = x.double()
    torch.testing.assert_close(torch.compile(vecmath.loop_tanh)(xd), torch.tanh(xd), rtol=1e-14, atol=1e-300,
                               equal_nan=True)


def test_two_models_with_different_paths_in_one_process(monkeypatch, tmp_path):
    """set_kernel(model, mode) is the model's own state: another model keeps the process's path, a kernel(...)
    block still forces one on both, and a trainer with train.kernel leaves the process default alone."""
    from kanformer import set_kernel as set_path
    from kanformer.config import load_config
    from kanformer.layers import lean as lean_module
    from kanformer.layers.dispatch import get_kernel
    from kanformer.train import Trainer

    calls = {"n": 0}
    real = lean_module.LeanKANFunction.apply

    def counting(*args):
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(lean_module.LeanKANFunction, "apply", counting)
    torch.manual_seed(0)
    a, b = create_ffn("chebyshev", 16, 12), create_ffn("chebyshev", 16, 12)
    b.load_state_dict(a.state_dict())
    set_path(a, "reference")
    x = torch.randn(32, 16, requires_grad=True)
    monkeypatch.setattr(dispatch, "_mode", ["lean"])  # the process's path for this test (restored after it)
    set_path(b, None)
    ya = a(x)
    assert calls["n"] == 0  # a: its own path, the reference
    yb = b(x)
    assert calls["n"] == 2  # b: the process's, lean (two KAN layers)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    (ga,) = torch.autograd.grad(ya.square().sum(), x)
    (gb,) = torch.autograd.grad(yb.square().sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-5)  # analytic vs autograd derivatives, fp32
    n = calls["n"]  # (the backward of b's lean layers ran on the lean path too)
    with kernel("lean"):  # a kernel(...) block wins over the model's own choice
        a(x)
    assert calls["n"] == n + 2
    before = get_kernel()
    cfg = load_config(preset="debug", overrides=[f"out_dir={tmp_path}", "ffn.name=chebyshev", "train.kernel=reference",
                                                 "log.wandb=disabled"])
    trainer = Trainer(cfg)
    trainer.lock.release()
    assert get_kernel() == before  # the process default is untouched
    kan_layers = [m for m in trainer.model.modules() if hasattr(m, "kernel_mode")]
    assert kan_layers and all(m.kernel_mode == "reference" for m in kan_layers)


def test_loop_widths_flag_a_bf16_loop_that_a_fp32_only_computation_narrows():
    """The profiler's ``--loop-widths`` observer: a compiled CPU loop writing bf16 values, with a reused tanh that the
    compiler stores apart in fp32 (a body touching no bf16 value), runs at fp32's width and is listed as mixed; the
    same loop without it is not. Caches are off while it watches, and back as they were after."""
    import torch._inductor.config as inductor_config

    from benchmarks.profile_ffn import LoopWidths, format_widths

    x, g = torch.randn(64, 64), torch.randn(64, 64).bfloat16()

    def with_tanh(x, g):
        s = torch.tanh(x)  # reused: stored apart
        return (g.float() * s).bfloat16(), (g.float() + s).bfloat16()

    def without(x, g):
        s = x * 2
        return (g.float() * s).bfloat16(), (g.float() + s).bfloat16()

    caches = inductor_config.force_disable_caches
    found = {}
    for fn in (with_tanh, without):
        torch._dynamo.reset()
        with LoopWidths() as widths:
            assert inductor_config.force_disable_caches
            torch.compile(fn)(x, g)
        assert inductor_config.force_disable_caches == caches
        found[fn.__name__] = widths.summary()
    if not found["without"]["available"]:
        pytest.skip("this PyTorch's C++ code generator has no readable tiling choice")
    if not found["without"]["bf16_lanes"]:
        pytest.skip("no vector instructions for bf16 on this CPU")
    assert found["without"]["loops"] and not found["without"]["mixed"]
    (mixed,) = found["with_tanh"]["mixed"]
    assert mixed["low_precision_bodies"] < mixed["bodies"] and max(mixed["lanes"]) < found["with_tanh"]["bf16_lanes"]
    assert "1 mixed" in format_widths(found["with_tanh"]) and "0 mixed" in format_widths(found["without"])
    from benchmarks import profile_ffn

    for flag in ("--loop-widths", "--cpu-kernels"):  # they read the C++ loops: refused elsewhere, naming why
        with pytest.raises(SystemExit):
            profile_ffn.main(["--device", "cuda", flag])


def test_the_ffn_profile_lists_each_arms_top_operators_and_refuses_unknown_arms(tmp_path, capsys, request):
    """`python -m benchmarks.profile_ffn`: the MLP first, then each ffn:kernel arm on its path, with the operators that
    took the most time (their shares adding up to at most the whole), written as JSON; bad arms named."""
    import json

    from benchmarks import profile_ffn
    from kanformer.layers import gemm

    # the MLP's products as ATen's linear and mm, whatever this machine's library (oneDNN's are the kit's operator)
    before = gemm.setting()
    request.addfinalizer(lambda: gemm.set_library(before))
    gemm.set_library("torch")

    out = tmp_path / "prof.json"
    profile_ffn.main(["--arms", "rbf:lean", "--device", "cpu", "--d-model", "16", "--tokens", "64", "--warmup", "1",
                      "--steps", "2", "--top", "5", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["ffn"], r["path"]) for r in rows] == [("mlp", "-"), ("rbf", "lean")]
    for r in rows:
        assert 0 < len(r["top"]) <= 5 and r["wall_ms"] > 0 and r["busy_ms"] > 0
        assert sum(t["share"] for t in r["top"]) <= 1 + 1e-9
        assert r["top"] == sorted(r["top"], key=lambda t: -t["ms_per_step"])
    assert any(t["name"].startswith("LeanKANFunction") for t in rows[1]["top"])  # the lean path ran, not the reference
    assert "rbf (path lean, hidden" in capsys.readouterr().out
    eager_mlp, mlp_ops = rows[0]["eager_ops"], {"aten::linear", "aten::mm", "aten::gelu", "aten::gelu_backward"}
    assert mlp_ops <= set(eager_mlp), eager_mlp
    # --compile: torch.compile of the FFN, as a compiled model runs it (the MLP alone: compiling a KAN FFN here is slow)
    profile_ffn.main(["--arms", "mlp", "--compile", "--device", "cpu", "--d-model", "16", "--tokens", "64", "--warmup",
                      "1", "--steps", "2", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["compiled"] and any("Compiled" in t["name"] for t in row["top"]), [t["name"] for t in row["top"]]
    assert "mlp (path -, torch.compile of it, hidden" in capsys.readouterr().out
    # compiled, the products and the GELU run inside the graph: not among the eager operators
    assert not mlp_ops & set(row["eager_ops"]), row["eager_ops"]
    assert row["eager_ops_per_step"] < sum(eager_mlp.values())
    # --compile-options: every arm profiled under them, the process's own put back after, the JSON naming them
    from kanformer.layers.compile_options import get_compile_options

    seen = []
    real = profile_ffn.profile_arm
    request.addfinalizer(lambda: setattr(profile_ffn, "profile_arm", real))
    profile_ffn.profile_arm = lambda *a: seen.append(dict(get_compile_options())) or real(*a)
    profile_ffn.main(["--arms", "rbf:lean", "--device", "cpu", "--d-model", "16", "--tokens", "64", "--warmup", "1",
                      "--steps", "1", "--compile-options", '{"cpp_wrapper": true}', "--json", str(out)])
    assert seen == [{"cpp_wrapper": True}] * 2 and get_compile_options() == {}
    assert json.loads(out.read_text())["compile_options"] == {"cpp_wrapper": True}
    assert 'compile options {"cpp_wrapper":true}' in capsys.readouterr().out
    with pytest.raises(SystemExit, match="Unknown FFN 'rfb'.*Available: .*rbf"):
        profile_ffn.main(["--arms", "rfb:lean"])
    with pytest.raises(SystemExit):
        profile_ffn.main(["--compile-options", "{cpp_wrapper}"])
    assert "--compile-options is not JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="Unknown KAN kernel 'fast'.*Available: auto, lean"):
        profile_ffn.main(["--arms", "rbf:fast"])


def test_the_ffn_profile_sums_the_hosts_launches_and_events():
    """On a GPU the profile adds the host's side of a step: launch calls a step (runtime and driver, Triton's too)
    and the host events by self CPU time, device-side events left out; here on hand-made profiler averages."""
    from types import SimpleNamespace

    from benchmarks import profile_ffn

    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA

    def event(key, self_us, count, device=cpu):
        return SimpleNamespace(key=key, self_cpu_time_total=self_us, count=count, device_type=device)

    averages = [event("aten::mm", 400.0, 12), event("cudaLaunchKernel", 300.0, 40), event("cuLaunchKernelEx", 60.0, 8),
                event("TorchDynamo Cache Lookup", 100.0, 4), event("nvjet_sm90_tst_kernel", 0.0, 12, cuda),
                event("aten::empty", 0.0, 6)]
    host = profile_ffn.host_summary(averages, steps=4, top=2)
    assert host["launches_per_step"] == 12  # (40 + 8) / 4
    assert host["self_ms_per_step"] == pytest.approx(0.86 / 4)  # 400 + 300 + 60 + 100 us over 4 steps
    assert [t["name"] for t in host["top"]] == ["aten::mm", "cudaLaunchKernel"]
    assert host["top"][0] == {"name": "aten::mm", "ms_per_step": 0.1, "calls_per_step": 3}
    row = {"ffn": "bspline", "path": "fused", "hidden": 342, "wall_ms": 3.0, "busy_ms": 1.2, "busy_kind": "device",
           "top": [], "host": host}
    assert "host: 12 kernel launches a step; 0.21 ms" in profile_ffn.format_arm(row, None)


def test_the_ffn_profile_counts_the_operators_made_outside_compiled_graphs():
    """Eager operators a step: ATen calls under no other ATen call and no compiled graph (hand-made profiler events
    with their parents), per name, most first."""
    from types import SimpleNamespace

    from benchmarks import profile_ffn

    def event(name, parent=None):
        return SimpleNamespace(name=name, cpu_parent=parent)

    fn = event("LeanKANFFNFunction")
    region = event("Torch-Compiled Region: 0/0", fn)
    graph = event("## Call CompiledFxGraph abc ##", region)
    pad = event("aten::pad", fn)
    events = [fn, region, graph, pad, event("aten::constant_pad_nd", pad), event("aten::mm", graph),
              event("aten::pad", fn), event("aten::to"), event("aten::empty", event("LeanKANFFNFunctionBackward"))]
    total, per_name = profile_ffn.eager_operators(events, steps=2)
    assert total == 2.0 and per_name == {"aten::pad": 1.0, "aten::to": 0.5, "aten::empty": 0.5}
    assert list(per_name)[0] == "aten::pad"
    row = {"ffn": "bspline", "path": "fused", "hidden": 61, "wall_ms": 3.0, "busy_ms": 1.2, "busy_kind": "cpu",
           "top": [], "eager_ops_per_step": total, "eager_ops": per_name}
    assert "eager operators (outside compiled graphs): 2 a step (pad 1, to 0.5, empty 0.5)" in profile_ffn.format_arm(
        row, None)
