"""Both layers of a KAN FFN (and both rational + linear pairs of GR-KAN) in one autograd Function
(layers/lean_ffn.py): equal to the reference and to the per-layer path, taken where it can serve and only there."""

import pytest
import torch

from kanformer import create_ffn
from kanformer.layers import dispatch, few_tokens, gemm, kan, lean, lean_ffn, lean_rational, multkan, rational, rbf
from kanformer.layers.dispatch import kernel
from tests.device_reads import DeviceReads
from tests.test_kernels import _close, _run, _saved_shapes

CHAINABLE = ["bspline", "rbf", "chebyshev", "jacobi", "fourier", "multkan", "wavelet"]
# widths where every input pad applies: 9 * 31 and 9 * 63 features (8 B-splines + SiLU) are padded to 32 and 64
# inputs, so layer 2 reads layer 1's padded output as it is
D, H = 31, 63


def _inputs(dtype, n=40):
    x = torch.randn(n, D, dtype=dtype) * 1.5
    x[0, :3] = 40.0  # far outside every grid / natural range
    x[1, 3:6] = -40.0
    return x


@pytest.fixture
def counted(monkeypatch):
    """Calls of the two Functions; the compiled helpers, theirs and the per-layer path's, run as the eager code they
    compile (no compiler: fast, and exact enough for fp64)."""
    calls = []
    for fn in (lean_ffn.LeanKANFFNFunction, lean_rational.LeanRationalFFNFunction):
        apply = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, _apply=apply: calls.append(1) or _apply(*a))
    for module in (lean_ffn, lean_rational, few_tokens, lean):
        monkeypatch.setattr(module, "_kernel_fn", lambda fn, x=None, tag="": fn)
    return calls


def _ffn(name, dtype, d=D, h=H, **kw):
    # B-spline knots exactly representable (grid step 1), so the uniform fast path is exact to fp64 rounding
    kw = {"grid_size": 5, "grid_range": (-2.5, 2.5), **kw} if name in ("bspline", "multkan") else kw
    torch.manual_seed(0)
    ffn = create_ffn(name, d, h, **kw).to(dtype)
    with torch.no_grad():  # away from the identity / zero starts, so every parameter's gradient matters
        for p in ffn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ffn


@pytest.mark.parametrize("name", [*CHAINABLE, "rational"])
def test_chained_ffn_equals_the_reference_in_fp64(name, counted):
    ffn = _ffn(name, torch.float64)
    x = _inputs(torch.float64)
    chained = _run(ffn, x, "fused")
    assert counted, "the two-layer Function did not run"
    _close(chained, _run(ffn, x, "reference"), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["bspline", "multkan"])
def test_adapted_grids_chain_on_their_knot_tables(name, counted):
    """Both layers' grids fitted to data (non-uniform knots): the two-layer Function runs the knot form, equal to the
    reference in fp64, compiled within fp32 rounding and under bf16 autocast within 2 %; a call of few tokens without
    autograd too."""
    ffn = _ffn(name, torch.float64)
    x = _inputs(torch.float64)
    ffn.fc1.update_grid(x)
    ffn.fc2.update_grid(torch.randn(200, ffn.fc2.in_features, dtype=torch.float64) ** 3)  # MultKAN's: its nodes'
    assert ffn.fc1.basis._uniform() is None and ffn.fc2.basis._uniform() is None
    chained = _run(ffn, x, "fused")
    assert counted, "the two-layer Function did not run"
    _close(chained, _run(ffn, x, "reference"), rtol=1e-9, atol=1e-10)
    with torch.no_grad(), kernel("fused"):
        few = ffn(x[:3])
    with torch.no_grad(), kernel("reference"):
        torch.testing.assert_close(few, ffn(x[:3]), rtol=1e-9, atol=1e-10)


def test_the_knot_form_compiles_in_a_copy_of_its_own():
    """An adapted grid's graphs are tagged with the form (``lean.basis_tag``): met second by the uniform grid's
    compiled copy, the knot tables compiled with their sizes symbolic, graphs no background compile had made."""
    ffn = _ffn("bspline", torch.float32)
    x = _inputs(torch.float32)
    with kernel("fused"):
        uniform = lean_ffn.plan(ffn, x).tag
        ffn.fc2.update_grid(torch.randn(200, ffn.fc2.in_features) ** 3)
        adapted = lean_ffn.plan(ffn, x).tag
    assert "[" not in uniform and adapted == uniform.replace("/BSplineBasis(", "/BSplineBasis[knots]("), adapted


@pytest.mark.slow
def test_adapted_grids_compiled_equal_the_reference():
    """The knot form compiled (the fused mode's C++ loops), both layers adapted: fp32 within rounding; under bf16
    autocast no farther from the fp32 reference than the reference under autocast is. (Adapted knots lie closer than
    the bf16 hidden's resolution where the data are dense, so bf16 parts from fp32 by several percent on either path:
    here ~8 % for the reference, whose layer 2 also rounds its knots and runs its recursion in bf16.)"""
    ffn = _ffn("bspline", torch.float32)
    x = _inputs(torch.float32)
    ffn.fc1.update_grid(x)
    ffn.fc2.update_grid(torch.randn(200, ffn.fc2.in_features) * 2)
    ref = _run(ffn, x, "reference")
    _close(_run(ffn, x, "fused"), ref, rtol=1e-4, atol=1e-4)

    def error(run):  # the largest relative (norm) distance of any output or gradient from the fp32 reference
        return max(((a - b).norm() / b.norm().clamp_min(1e-6)).item()
                   for a, b in zip([run[0], run[1], *run[2].values()], [ref[0], ref[1], *ref[2].values()], strict=True))

    fused, reference = error(_run(ffn, x, "fused", autocast=True)), error(_run(ffn, x, "reference", autocast=True))
    assert fused <= 1.1 * reference + 5e-3, (fused, reference)


@pytest.mark.parametrize("mode", ["lean", "fused"])
@pytest.mark.parametrize("name", [*CHAINABLE, "rational"])
def test_a_training_step_reads_no_value_back_to_the_host(name, mode, counted, monkeypatch):
    """The eager paths' forward and backward read no tensor's value on the host and copy no host data to the device
    (the Fourier basis' lean features read their frequencies with ``tolist`` until 2026-12-04; the B-spline's lean
    path made its local polynomials' matrix from a list in each layer's forward and backward until 2026-12-05): the
    GPU's queue never drains between the kernels."""
    ffn = _ffn(name, torch.float32)
    x = _inputs(torch.float32)
    _run(ffn, x, mode)  # first calls: a basis' one-off checks (the B-spline's uniform grid) fall here
    probe = DeviceReads().watch(monkeypatch)
    with probe, kernel(mode):
        ffn(x.requires_grad_(True)).sum().backward()
    assert probe.reads == 0, f"{name} on {mode}: {probe.reads} host reads a training step"
    with probe, kernel(mode), torch.no_grad():  # a generation step's call: few tokens, no autograd
        ffn(x[:3].detach())
    assert probe.reads == 0, f"{name} on {mode}: {probe.reads} host reads in a call of few tokens without autograd"


class _FewCalls(list):
    """The token counts of the calls of the graph of few tokens; while ``forbid_copy`` is set, any path's
    basis-major copy of the weights fails the test."""

    forbid_copy = False


@pytest.fixture
def few(monkeypatch):
    calls = _FewCalls()
    forward, basis_major = few_tokens._few_tokens_forward, lean._basis_major
    monkeypatch.setattr(few_tokens, "_few_tokens_forward", lambda *a: calls.append(a[2].shape[0]) or forward(*a))

    def copy(*a):
        assert not calls.forbid_copy, "the weights were laid out basis-major for a call of few tokens"
        return basis_major(*a)

    monkeypatch.setattr(lean, "_basis_major", copy)
    return calls


@pytest.mark.parametrize("tiny", [True, False])
@pytest.mark.parametrize("name", CHAINABLE)
def test_a_call_of_few_tokens_without_autograd_equals_the_reference_without_copying_the_weights(name, tiny, counted,
                                                                                                 few, monkeypatch):
    """Generation's steps (a few tokens, no autograd) take a graph that multiplies the coefficients as they are stored
    (``tiny``: its products as sums in its own loops; else the matmul library's): equal to the reference in fp64,
    out-of-range inputs included; the two-layer Function does not run."""
    if not tiny:
        monkeypatch.setattr(few_tokens, "_TINY_MACS", 0)
        monkeypatch.setattr(few_tokens, "_TINY_TOKENS", {})
    ffn = _ffn(name, torch.float64)
    assert (few_tokens.tiny_tokens(ffn, torch.float64) >= 5) == tiny
    x = _inputs(torch.float64, n=5)
    with torch.no_grad():
        few.forbid_copy = True
        with kernel("fused"):
            y = ffn(x)
        few.forbid_copy = False
        with kernel("reference"):
            ref = ffn(x)
    assert few == [5] and not counted
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("tiny", [True, False])
@pytest.mark.parametrize("name", ["bspline", "rbf", "multkan", "wavelet"])
def test_under_bf16_autocast_few_tokens_compute_what_the_training_forward_does(name, tiny, counted, few, monkeypatch):
    if not tiny:
        monkeypatch.setattr(few_tokens, "_TINY_MACS", 0)
    ffn = _ffn(name, torch.float32)
    x = _inputs(torch.float32, n=3)
    with torch.no_grad(), kernel("fused"), torch.autocast("cpu", dtype=torch.bfloat16):
        y = ffn(x)
        monkeypatch.setattr(few_tokens, "_FEW_TOKENS", 0)  # the training forward's graph
        train = ffn(x)
    assert few == [3] and counted and y.dtype == train.dtype == torch.bfloat16
    assert ((y.float() - train.float()).norm() / train.float().norm()).item() < 1e-2


def test_few_tokens_under_autocast_keep_low_precision_weights_while_they_are_unchanged(counted, few, monkeypatch):
    """Under bf16 autocast, calls of few tokens multiply bf16 copies of the weights made once (as autocast keeps its
    casts of the MLP's weights), made afresh once a weight is written in place, and dropped by a training call."""
    ffn = _ffn("bspline", torch.float32)
    x = _inputs(torch.float32, n=3)
    with torch.no_grad(), kernel("fused"), torch.autocast("cpu", dtype=torch.bfloat16):
        first = ffn(x)
        kept = few_tokens._LOW_WEIGHTS[ffn.fc1.coef][1]
        assert kept.dtype == torch.bfloat16 and torch.equal(kept, ffn.fc1.coef.to(torch.bfloat16))
        assert torch.equal(ffn(x), first) and few_tokens._LOW_WEIGHTS[ffn.fc1.coef][1] is kept  # not cast again
        ffn.fc1.coef.mul_(2.0)  # written in place (an optimizer step, a load): a new copy, new outputs
        y = ffn(x)
        assert torch.equal(few_tokens._LOW_WEIGHTS[ffn.fc1.coef][1], ffn.fc1.coef.to(torch.bfloat16))
        monkeypatch.setattr(few_tokens, "_FEW_TOKENS", 0)  # the training forward's graph, on the written weights
        train = ffn(x)
    assert few == [3, 3, 3] and not torch.equal(y, first)
    assert ((y.float() - train.float()).norm() / train.float().norm()).item() < 1e-2
    with kernel("fused"), torch.autocast("cpu", dtype=torch.bfloat16):
        ffn(x).float().sum().backward()
    assert len(few_tokens._LOW_WEIGHTS) == 0  # training drops them


def test_a_call_of_few_tokens_like_the_last_runs_on_its_kept_arguments_until_anything_it_read_changes(
        counted, few, monkeypatch):
    """A generation step's call in the state of the FFN's last (settings, modules, tensors) calls the graph of few
    tokens on that call's arguments, the path's Python skipped; a weight written in place or replaced, a grid moved,
    another path, token count or autocast takes the whole path again, and each result equals the reference; a call
    with autograd drops what is kept, which does not keep the FFN alive."""
    import gc
    import weakref

    ffn = _ffn("bspline", torch.float64)
    whole = []
    path = ffn._call
    monkeypatch.setattr(ffn, "_call", lambda x: whole.append(x.shape[0]) or path(x))
    x = _inputs(torch.float64, n=3)

    def check(x, whole_path):
        before, calls = len(whole), len(few)
        with kernel("fused"):
            y = ffn(x)
        assert len(few) == calls + 1 and (len(whole) > before) == whole_path
        before = len(whole)
        with kernel("reference"):  # another path: the whole of it, not the kept graph
            torch.testing.assert_close(y, ffn(x), rtol=1e-9, atol=1e-10)
        assert len(few) == calls + 1 and len(whole) == before + 1
        return y

    with torch.no_grad():
        first = check(x, True)
        assert torch.equal(check(x, False), first)  # kept
        ffn.fc1.coef.mul_(2.0)  # written in place (a load, an optimizer step)
        check(x, True)
        check(x, False)
        ffn.fc1.basis.grid.mul_(1.25)  # the grid moved (uniform still): the basis' state with it
        check(x, True)
        ffn.fc2.bias = torch.nn.Parameter(ffn.fc2.bias + 1.0)  # replaced
        check(x, True)
        check(x[:2], True)  # another token count
        check(x[:2], False)
        before = len(whole)
        with kernel("fused"), torch.autocast("cpu", dtype=torch.bfloat16):
            assert ffn(x[:2]).dtype == torch.bfloat16 and len(whole) == before + 1  # another autocast state
        assert len(few_tokens._RECALLED) == 1
    assert not counted  # the two-layer Function never ran
    with kernel("fused"):
        ffn(x).sum().backward()
    assert len(few_tokens._RECALLED) == 0  # a call with autograd drops it
    other = _ffn("rbf", torch.float64)
    with torch.no_grad(), kernel("fused"):
        other(x)
    assert len(few_tokens._RECALLED) == 1
    ref = weakref.ref(other)
    del other
    gc.collect()
    assert ref() is None and len(few_tokens._RECALLED) == 0


def test_gr_kan_s_call_without_autograd_like_the_last_runs_on_its_kept_arguments(counted, monkeypatch):
    """GR-KAN's call without autograd (its forward's graph, no Function) keeps its arguments as the KAN FFNs' graph of
    few tokens does: the path's Python skipped while nothing changed, the whole path once a rational's coefficients
    are written, each result equal to the reference."""
    ffn = _ffn("rational", torch.float64)
    whole = []
    path = ffn._call
    monkeypatch.setattr(ffn, "_call", lambda x: whole.append(1) or path(x))
    x = _inputs(torch.float64, n=3)
    with torch.no_grad():
        for written, whole_path in ((False, True), (False, False), (True, True), (False, False)):
            if written:
                ffn.act2.numerator.mul_(1.5)
            before = len(whole)
            with kernel("fused"):
                y = ffn(x)
            assert (len(whole) > before) == whole_path
            with kernel("reference"):  # another path: the whole of it
                torch.testing.assert_close(y, ffn(x), rtol=1e-9, atol=1e-10)
            assert len(whole) == before + 1 + whole_path
    assert not counted and len(few_tokens._RECALLED) == 1  # the Function never ran


def test_the_wavelets_kept_call_takes_the_whole_path_once_a_scale_is_written(counted, few, monkeypatch):
    """The wavelet's wavelet-major translations and inverse scales, made from its parameters by the whole path, are
    among the kept call's arguments: a log-scale written in place takes the whole path, which makes them afresh; each
    result equals the reference's; a model after a kept call pickles (nothing it keeps is the module's)."""
    import io

    ffn = _ffn("wavelet", torch.float64)
    whole = []
    path = ffn._call
    monkeypatch.setattr(ffn, "_call", lambda x: whole.append(1) or path(x))
    x = _inputs(torch.float64, n=3)
    outputs = []
    with torch.no_grad():
        for written, whole_path in ((False, True), (False, False), (True, True), (False, False)):
            if written:
                ffn.fc1.basis.log_scale.add_(0.1)  # an optimizer step, a load
            before = len(whole)
            with kernel("fused"):
                outputs.append(ffn(x))
            assert (len(whole) > before) == whole_path
            with kernel("reference"):  # another path: the whole of it
                torch.testing.assert_close(outputs[-1], ffn(x), rtol=1e-9, atol=1e-12)
            assert len(whole) == before + 1 + whole_path
        monkeypatch.setattr(ffn, "_call", path)  # the counting wrapper does not pickle
        torch.save(ffn, io.BytesIO())
    assert few == [3] * 4 and not counted and not torch.equal(outputs[1], outputs[2])


def test_gr_kan_without_autograd_keeps_its_channel_tables_while_they_are_unchanged(counted):
    """A GR-KAN call without autograd runs its forward's graph without the Function, on per-channel coefficient tables
    made once (the Function makes them in every call), made afresh once a parameter is written in place; it computes
    what the Function computes, which a call with autograd takes (and drops the kept tables)."""
    ffn = _ffn("rational", torch.float64)
    x = _inputs(torch.float64)
    act = ffn.act1
    with kernel("fused"):
        with torch.no_grad():
            first = ffn(x)
            kept = few_tokens._TABLES[act.numerator][1]
            assert torch.equal(ffn(x), first) and few_tokens._TABLES[act.numerator][1] is kept  # not gathered again
            act.denominator.mul_(1.5)  # written in place (an optimizer step, a load): new tables, new outputs
            y = ffn(x)
            tables = few_tokens._TABLES[act.numerator][1]
            assert all(torch.equal(a, b) for a, b in zip(tables, lean._channel_tables(
                act.numerator, act.denominator, act.group_index, torch.float64), strict=True))
        assert not counted and not torch.equal(y, first)  # no Function ran
        train = ffn(x)
    assert counted == [1] and torch.equal(y, train.detach()) and len(few_tokens._TABLES) == 0


def test_more_tokens_or_autograd_take_the_two_layer_function(counted, few):
    """Beyond the hidden width, or with autograd, the call takes the Function (its forward copies the weights,
    amortised over many tokens); so does ``auto`` until the background compile holds the graph of few tokens."""
    ffn = _ffn("bspline", torch.float32)
    limit = few_tokens._FEW_TOKENS * ffn.fc1.out_features
    with kernel("fused"):
        with torch.no_grad():
            ffn(_inputs(torch.float32, n=limit + 1))
        ffn(_inputs(torch.float32, n=5))
    assert few == [] and len(counted) == 2


def test_under_auto_few_tokens_wait_for_the_background_compile(monkeypatch):
    ffn, x = _ffn("bspline", torch.float32), _inputs(torch.float32, n=3)
    monkeypatch.setenv("KANFORMER_AUTOTUNE", "1")
    ready = []
    monkeypatch.setattr(dispatch, "autotune_compiled_ready", lambda f, t: bool(ready))
    with dispatch.default_kernel("auto"):
        assert not dispatch.few_tokens_compiled(ffn, x)
        with kernel("fused"):
            assert dispatch.few_tokens_compiled(ffn, x)  # pinned: compiled on its first call
        ready.append(1)
        assert dispatch.few_tokens_compiled(ffn, x)
    monkeypatch.setenv("KANFORMER_AUTOTUNE", "0")  # auto's fixed rule compiles as it goes
    ready.clear()
    with dispatch.default_kernel("auto"):
        assert dispatch.few_tokens_compiled(ffn, x)


def test_the_padded_hidden_is_layer_twos_padded_input(counted):
    """At these widths layer 1's output is computed 64 wide (zero columns) and layer 2 pads its inputs to 64: the
    plan takes the padded hidden as it is, and the gradients of the real shapes come back."""
    ffn = _ffn("bspline", torch.float64)
    x = _inputs(torch.float64)
    with kernel("fused"):
        p = lean_ffn.plan(ffn, x)
    assert (p.pad1, p.pad2) == (1, 1)
    chained = _run(ffn, x, "fused")
    for pname, param in ffn.named_parameters():
        assert chained[2][pname].shape == param.shape, pname
    _close(chained, _run(ffn, x, "reference"), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", CHAINABLE)
def test_on_cudas_widths_the_hidden_gradient_keeps_the_padded_width(name, counted, monkeypatch):
    """CUDA's rule (``gemm.aligned_pad``, forced here on CPU): 31 inputs and 61 hidden units are padded to 32 and 64,
    the backward's products of layer 1 take the hidden gradient at the padded width (aligned rows for cuBLAS), against
    zero rows of weights, and every result of the real shapes equals the reference's."""
    monkeypatch.setattr(lean, "_aligned_rows", lambda device: True)
    widths = []
    backward = lean_ffn._lean_backward
    monkeypatch.setattr(lean_ffn, "_lean_backward", lambda basis, x, coef, base, gy, *a, **k:
                        widths.append((coef.shape[0], gy.shape[1])) or backward(basis, x, coef, base, gy, *a, **k))
    ffn = _ffn(name, torch.float64, h=61)
    x = _inputs(torch.float64)
    with kernel("fused"):
        p = lean_ffn.plan(ffn, x, (ffn.n_sum, ffn.n_mult) if name == "multkan" else None)
    hidden = ffn.fc1.out_features
    assert (p.pad1, p.pad2) == (1, -ffn.fc2.in_features % 8) and p.pad2
    chained = _run(ffn, x, "fused")
    assert counted, "the two-layer Function did not run"
    if name not in ("multkan", "wavelet"):  # MultKAN's products and the wavelet's input-major layer 1: sliced
        assert widths == [(D, D), (hidden, hidden + p.pad2)], widths
    for pname, param in ffn.named_parameters():
        assert chained[2][pname].shape == param.shape, pname
    _close(chained, _run(ffn, x, "reference"), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["bspline", "rbf"])
def test_the_two_layer_graphs_pad_the_weights_and_drop_the_padded_gradients_themselves(name, counted, monkeypatch):
    """Where layer 2's inputs are padded (CUDA's widths, forced here): both graphs take the weights (and a
    pre-transform's parameters) as the parameters hold them and pad them inside (no eager operator a tensor and call:
    on a GPU, launches the host waits on), the per-function state comes padded once per grid (the same tensors on
    every call), and the backward gives each weight's gradient at its parameter's shape, contiguous (not a strided view
    for autograd to copy again)."""
    monkeypatch.setattr(lean, "_aligned_rows", lambda device: True)
    calls = []

    def record(fn, x=None, tag=""):
        def call(*args):
            out = fn(*args)
            calls.append((fn.__name__, args, out))
            return out
        return call

    monkeypatch.setattr(lean_ffn, "_kernel_fn", record)
    ffn = _ffn(name, torch.float64, h=61)
    x = _inputs(torch.float64)
    with kernel("fused"):
        p = lean_ffn.plan(ffn, x)
    assert p.pad2 == 3  # 61 hidden units -> 64
    for _ in range(2):
        _run(ffn, x, "fused")
    forward = [args for fn, args, _ in calls if fn == "_ffn_forward"]
    backward = [(args, out) for fn, args, out in calls if fn == "_ffn_backward"]
    assert len(forward) == len(backward) == 2
    fc2 = ffn.fc2
    for layer2 in [args[4] for args in forward] + [args[5] for args, _ in backward]:
        coef, base = layer2[0], layer2[1]
        assert coef.shape == fc2.coef.shape and coef.data_ptr() == fc2.coef.data_ptr()  # the parameter itself
        assert base.shape == fc2.base_weight.shape and base.data_ptr() == fc2.base_weight.data_ptr()
    pres = [args[4][4] for args in forward] + [args[5][3] for args, _ in backward]
    if name == "rbf":  # its LayerNorm's weight and bias, padded inside the graphs too
        norm = fc2.basis.norm
        assert all(w.shape == norm.weight.shape and b.shape == norm.bias.shape for w, b in pres)
    states = [args[4][3] for args in forward] + [args[5][2] for args, _ in backward]
    if name == "bspline":
        assert all(t.shape[-1] == 64 for t in states[0] if t.dim())
        assert all(a is b for s in states[1:] for a, b in zip(states[0], s, strict=True))  # padded once
    for _, out in backward:
        g_coef2, g_base2 = out[5], out[6]
        assert g_coef2.shape == fc2.coef.shape and g_coef2.is_contiguous()
        assert g_base2.shape == fc2.base_weight.shape and g_base2.is_contiguous()


def test_a_state_made_under_inference_mode_is_padded_without_being_kept(counted, monkeypatch):
    """An inference tensor has no version counter to check a kept copy against: a B-spline whose fused state is first
    made under ``torch.inference_mode`` (pinned ``fused``, CUDA's widths forced so layer 2's inputs are padded) pads
    it afresh and computes what the reference does."""
    monkeypatch.setattr(lean, "_aligned_rows", lambda device: True)
    ffn = _ffn("bspline", torch.float64, h=61)
    x = _inputs(torch.float64)
    with kernel("fused"), torch.inference_mode():
        y = ffn(x)
    assert counted, "the two-layer Function did not run"
    with kernel("reference"), torch.no_grad():
        torch.testing.assert_close(y, ffn(x), rtol=1e-9, atol=1e-10)


def test_on_cudas_widths_a_single_layer_pads_its_output_gradient(monkeypatch):
    """The per-layer path under CUDA's rule: 61 outputs computed 64 wide, and the backward pads the output gradient to
    the same width for its products; results equal the reference's."""
    monkeypatch.setattr(lean, "_aligned_rows", lambda device: True)
    monkeypatch.setattr(lean, "_kernel_fn", lambda fn, x=None, tag="": fn)
    widths = []
    backward = lean._lean_backward
    monkeypatch.setattr(lean, "_lean_backward", lambda basis, x, coef, base, gy, *a, **k:
                        widths.append(gy.shape[1]) or backward(basis, x, coef, base, gy, *a, **k))
    torch.manual_seed(0)
    layer = kan.KANLinear(D, 61, "bspline", grid_size=5, grid_range=(-2.5, 2.5)).double()
    x = _inputs(torch.float64)
    fused = _run(layer, x, "fused")
    assert widths == [61]  # padded inside: the rows of the products are 64 wide
    _close(fused, _run(layer, x, "reference"), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["bspline", "rational", "multkan"])
@pytest.mark.parametrize("autocast", [False, True])
def test_chained_ffn_equals_the_per_layer_path(name, autocast, counted, monkeypatch):
    """The same computations as the two per-layer Functions (and MultKAN's eager products between them), in the same
    order: equal, fp32 and bf16 autocast."""
    ffn = _ffn(name, torch.float32)
    x = _inputs(torch.float32)
    chained = _run(ffn, x, "fused", autocast)
    assert counted
    monkeypatch.setattr(kan, "ffn_plan", lambda *a: None)
    monkeypatch.setattr(multkan, "ffn_plan", lambda *a: None)
    monkeypatch.setattr(rational, "rational_chainable", lambda *a: False)
    n = len(counted)
    per_layer = _run(ffn, x, "fused", autocast)
    assert len(counted) == n  # the per-layer path really ran
    _close(chained, per_layer, rtol=0, atol=0)


@pytest.mark.parametrize("autocast", [False, True])
def test_chained_wavelet_ffn_equals_the_per_layer_path(autocast, counted, monkeypatch):
    """The wavelet's layers run input-major in the two-layer backward (one matmul for the basis and the base branch,
    dL/dh handed to layer 1 untransposed): the same sums as the per-layer path in another order, so equal to
    rounding, fp32 and bf16 autocast. Translations and scales moved off their start, so their gradients differ per
    input."""
    ffn = _ffn("wavelet", torch.float32)
    with torch.no_grad():
        for name, p in ffn.named_parameters():
            if "translation" in name or "log_scale" in name:
                p.add_(torch.randn_like(p) * 0.3)
    x = _inputs(torch.float32)
    chained = _run(ffn, x, "fused", autocast)
    assert counted
    monkeypatch.setattr(kan, "ffn_plan", lambda *a: None)
    n = len(counted)
    per_layer = _run(ffn, x, "fused", autocast)
    assert len(counted) == n
    tol = 2e-2 if autocast else 1e-5  # bf16: the products' roundings differ in order
    _close(chained, per_layer, rtol=tol, atol=tol)


def test_the_chained_wavelet_keeps_each_layers_input_input_major_and_unpadded(counted):
    """Its backward reads each layer's input along rows, (I, N), as the forward kept it: as much memory as the
    per-layer path's (N, I) inputs, the inputs' padding not kept (31 and 63 inputs, padded to 32 and 64)."""
    ffn = _ffn("wavelet", torch.float64)
    x = _inputs(torch.float64)
    with kernel("fused"):
        p = lean_ffn.plan(ffn, x)
    assert (p.pad1, p.pad2, p.n_own1, p.n_own2) == (1, 1, 2, 2)
    saved = []
    with kernel("fused"), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        ffn(x.clone().requires_grad_(True))
    assert counted
    n = len(x)
    assert (D, n) in saved and (H, n) in saved
    assert not [s for s in saved if len(s) == 2 and n in s and s not in ((D, n), (H, n))], saved


def test_the_chained_wavelet_takes_its_parameters_as_they_are_and_its_state_as_two_tables(counted):
    """No copy of the translations and log-scales for autograd to differentiate each step: the Function's backward
    hands their gradients straight to the parameters. The forward's state is two (W, I) tables per layer, not a graph
    argument per wavelet (fixed costs per call)."""
    ffn = _ffn("wavelet", torch.float64)
    x = _inputs(torch.float64)
    with kernel("fused"):
        p = lean_ffn.plan(ffn, x)
        y = ffn(x.clone().requires_grad_(True))
    assert counted
    w = ffn.fc1.basis.num_wavelets
    assert [s.shape for s in p.state1] == [(w, D)] * 2 and [s.shape for s in p.state2] == [(w, H)] * 2
    own = {id(t) for b in (ffn.fc1.basis, ffn.fc2.basis) for t in (b.translation, b.log_scale)}
    node = y.grad_fn
    while type(node).__name__ != "LeanKANFFNFunctionBackward":  # past the reshape
        node = node.next_functions[0][0]
    leaves = {id(n.variable) for n, _ in node.next_functions if type(n).__name__ == "AccumulateGrad"}
    assert own <= leaves
    y.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for b in (ffn.fc1.basis, ffn.fc2.basis)
               for t in (b.translation, b.log_scale))


@pytest.mark.parametrize("first", ["wavelet", "bspline"])
def test_a_layer_with_parameters_of_its_own_chains_with_one_without(first, counted):
    """One input-major layer beside a token-major one, either way round: the gradient between them is handed over
    transposed, and the whole equals the reference in fp64."""
    from kanformer.layers import KANLinear

    other = "bspline" if first == "wavelet" else "wavelet"
    ffn = _ffn(first, torch.float64)
    kw = {"grid_size": 5, "grid_range": (-2.5, 2.5)} if other == "bspline" else {}
    torch.manual_seed(1)
    ffn.fc2 = KANLinear(H, D, other, **kw).double()
    x = _inputs(torch.float64)
    with kernel("fused"):
        p = lean_ffn.plan(ffn, x)
    assert (p.n_own1, p.n_own2) == ((2, 0) if first == "wavelet" else (0, 2))
    chained = _run(ffn, x, "fused")
    assert counted
    _close(chained, _run(ffn, x, "reference"), rtol=1e-9, atol=1e-10)


def test_multkan_products_run_between_the_layers_and_layer_two_pads_the_nodes(counted):
    """MultKAN: 31 sum + 32 multiplication nodes from layer 1's 95 outputs (computed 96 wide); the 63 nodes get layer
    2's one zero input, a width layer 1's output does not have. Only the subnodes are saved."""
    ffn = _ffn("multkan", torch.float64)
    assert (ffn.n_sum, ffn.n_mult, ffn.fc1.out_features) == (31, 32, 95)
    x = _inputs(torch.float64)
    with kernel("fused"):
        p = lean_ffn.plan(ffn, x, (ffn.n_sum, ffn.n_mult))
        with pytest.raises(ValueError, match="layer 1's 95 outputs and layer 2's 63 inputs do not match products"):
            lean_ffn.plan(ffn, x)
    assert (p.pad1, p.pad2, p.products) == (1, 1, (31, 32))
    chained = _run(ffn, x, "fused")
    assert counted
    for pname, param in ffn.named_parameters():
        assert chained[2][pname].shape == param.shape, pname
    _close(chained, _run(ffn, x, "reference"), rtol=1e-9, atol=1e-10)
    x_in = x.clone().requires_grad_(True)
    with kernel("fused"), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        saved = []
        ffn(x_in)
    assert (len(x), 95) in saved and (len(x), 63) not in saved and (len(x), 64) not in saved


def _fused_saved(ffn, x):
    """Shapes of what autograd saves for ``ffn``'s backward on the fused path (``test_kernels._saved_shapes``)."""
    with kernel("fused"):
        return sorted(_saved_shapes(ffn, x.clone().requires_grad_(True)))


@pytest.mark.parametrize("per_layer", [False, True])
def test_rbf_backward_reads_the_ratio_its_forward_kept(counted, monkeypatch, per_layer):
    """Where RBF's forward keeps its recurrence's ratio (``fused_kept``: in a compiled CPU graph; forced here, the
    helpers running as the eager code they compile), each layer saves one value per padded input more, every
    ``fused_terms`` call of the step, the backward's included, takes it, and the results are bit for bit those of
    the backward computing it again; on the two-layer Function and on the per-layer path."""
    ffn = _ffn("rbf", torch.float64)
    x = _inputs(torch.float64)
    if per_layer:  # a hook on a layer: the per-layer path (lean.py's Function) serves
        ffn.fc2.register_forward_hook(lambda *a: None)
    again = _run(ffn, x, "fused")
    without = _fused_saved(ffn, x)
    taken = []
    terms = rbf.RBFBasis.fused_terms
    monkeypatch.setattr(rbf, "inline", lambda u: True)
    monkeypatch.setattr(rbf.RBFBasis, "fused_terms", lambda self, u, kept=(): (
        taken.append(tuple(tuple(k.shape) for k in kept)) or terms(self, u, kept=kept)))
    kept = _run(ffn, x, "fused")
    assert len(counted) == (0 if per_layer else 3)  # three steps on the two-layer Function, or none
    n = len(x)
    assert sorted(taken) == [((n, D + 1),)] * 2 + [((n, H + 1),)] * 2  # forward and backward, each layer (padded)
    _close(kept, again, rtol=0, atol=0)
    assert _fused_saved(ffn, x) == sorted([*without, (n, D + 1), (n, H + 1)])


def test_what_a_layer_kept_splits_into_statistics_and_kept_values():
    """A basis with ``fused_kept`` (RBF) has its pre-transform's ``lean_pre_stats`` statistics first, then its kept
    values; one without has all of it as statistics, however many its pre-transform makes (a basis of a user's own)."""
    saved = tuple(torch.zeros(5, k) for k in (1, 1, 3))
    layer = kan.KANLinear(3, 2, "rbf")
    stats, kept = lean._split_saved(layer.basis, (layer.basis.norm.weight, layer.basis.norm.bias), saved)
    assert [id(t) for t in stats] == [id(t) for t in saved[:2]] and [id(t) for t in kept] == [id(saved[2])]
    plain = kan.KANLinear(3, 2, "chebyshev").basis
    assert not plain.has_fused_kept and layer.basis.has_fused_kept
    stats, kept = lean._split_saved(plain, (), saved)
    assert [id(t) for t in stats] == [id(t) for t in saved] and kept == ()


@pytest.mark.slow
def test_compiled_rbf_keeps_the_ratio_and_equals_the_reference():
    """Compiled for this CPU in fp32, RBF's fused FFN keeps the ratio of each layer (one fp32 value an input) beside
    its input, hidden activations and LayerNorm statistics, and equals the reference."""
    ffn = _ffn("rbf", torch.float32)
    x = _inputs(torch.float32)
    n = len(x)
    with kernel("fused"):
        p = lean_ffn.plan(ffn, x)
    saved = _fused_saved(ffn, x)
    # x, the hidden activations (layer 1's padded output), 2 x 2 statistics, then the two ratios
    assert saved == sorted([(n, D), (n, H + p.pad2), *[(n, 1)] * 4, (n, D + p.pad1), (n, H + p.pad2)]), saved
    # fp32: the sums over tokens run in another order (the base weights' gradient, ~0.1, differed by 2e-5)
    _close(_run(ffn, x, "fused"), _run(ffn, x, "reference"), rtol=1e-4, atol=5e-5)


def test_the_per_layer_path_serves_where_the_two_layer_function_cannot():
    x = _inputs(torch.float32)
    ffn = _ffn("bspline", torch.float32)
    with kernel("fused"):
        assert lean_ffn.plan(ffn, x) is not None
    for mode in ("lean", "reference"):  # eager lean: nothing compiled to save calls of
        with kernel(mode):
            assert lean_ffn.plan(ffn, x) is None
    with kernel("fused"), torch.no_grad():
        assert lean_ffn.plan(ffn, x) is not None  # evaluation on training's compiled path
    handle = ffn.fc2.register_forward_hook(lambda *a: None)  # hooks see each layer's call
    with kernel("fused"):
        assert lean_ffn.plan(ffn, x) is None
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    with kernel("fused"):
        assert lean_ffn.plan(ffn, x) is None
    handle.remove()
    ffn.fc1.update_grid(x)  # a data-adapted grid: chained too, on its knot tables
    with kernel("fused"):
        assert lean_ffn.plan(ffn, x) is not None
    with kernel("fused"), pytest.MonkeyPatch.context() as mp:  # a basis without a per-function form: per layer
        mp.setattr(type(ffn.fc1.basis), "fused_state", lambda self: None)
        assert lean_ffn.plan(ffn, x) is None
    wavelet = _ffn("wavelet", torch.float32, h=10)
    with kernel("fused"):  # a wavelet's own parameters: chained, their gradients by its analytic backward
        assert lean_ffn.plan(wavelet, x) is not None
    with kernel("fused"), pytest.MonkeyPatch.context() as mp:  # without that backward, autograd per layer
        mp.setattr(type(wavelet.fc1.basis), "lean_params_backward", kan.Basis.lean_params_backward)
        assert lean_ffn.plan(wavelet, x) is None
    gr = _ffn("rational", torch.float32)
    with kernel("fused"):
        assert lean_rational.rational_chainable(gr, x)
        gr.act2.register_forward_pre_hook(lambda *a: None)
        assert not lean_rational.rational_chainable(gr, x)
    with kernel("lean"):
        assert not lean_rational.rational_chainable(_ffn("rational", torch.float32), x)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*CHAINABLE, "rational"])
def test_fused_kernels_equal_reference(name):
    """The fused mode's compiled graphs (inductor: C++ here, Triton on GPU) against the reference definition, at
    widths that pad the inputs and the hidden (MultKAN: its nodes padded inside the graphs; the wavelet: input-major
    backward, the inputs kept transposed). The wavelet with 4 wavelets, not 8: its terms are independent of each other
    and the compiler unrolls them, so 8 only lengthen the compile (an empty compiler cache: 55 against 36 s here)."""
    ffn = _ffn(name, torch.float32, **({"num_wavelets": 4} if name == "wavelet" else {}))
    x = _inputs(torch.float32)
    _close(_run(ffn, x, "fused"), _run(ffn, x, "reference"), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bspline", "rbf", "wavelet"])
def test_the_compiled_graph_of_few_tokens_equals_the_reference(name, monkeypatch):
    """Compiled, at two token counts (one graph): the per-function state (B-spline), a pre-transform (RBF's LayerNorm),
    parameters of the basis' own (the wavelet's); products as sums in the graph's loops (B-spline, the wavelet; and
    one token, a graph of its own) and the matmul library's (RBF)."""
    from torch._dynamo.utils import counters

    if name == "rbf":
        monkeypatch.setattr(few_tokens, "_TINY_MACS", 0)
        monkeypatch.setattr(few_tokens, "_TINY_TOKENS", {})
    ffn = _ffn(name, torch.float32, **({"num_wavelets": 4} if name == "wavelet" else {}))
    graphs = []
    with torch.no_grad():
        for n in (3, 6, 1) if name == "bspline" else (3, 6):
            x = _inputs(torch.float32, n=max(n, 2))[:n]  # one token: a far-out-of-range row
            with kernel("fused"):
                y = ffn(x)
            graphs.append(counters["stats"]["unique_graphs"])
            with kernel("reference"):
                torch.testing.assert_close(y, ffn(x), rtol=1e-4, atol=1e-4)
    assert graphs[0] == graphs[1], "the second token count compiled again"
    assert any(key.startswith("_few_tokens_forward[") and f"{ffn.fc1.basis.__class__.__name__}" in key
               for key in dispatch._COMPILED)


@pytest.mark.slow
def test_a_compiled_wavelet_ffn_runs_the_fused_paths_helpers_and_keeps_its_memory():
    """Compiled with inductor (the graphs of ``test_fused_kernels_equal_reference``), the wavelet FFN's operator runs
    the fused path's compiled helpers: equal to the eager fused path, and it saves what that path saves (x input-major
    and the hidden activations), not the reference's basis values (the wavelets', N x I x W each layer)."""
    from kanformer.evaluation.metrics import saved_activation_bytes

    torch._dynamo.reset()
    ffn = _ffn("wavelet", torch.float32, num_wavelets=4)
    x = _inputs(torch.float32, n=256)
    weights = sum(p.numel() * p.element_size() for p in ffn.parameters())
    gemm.choose_for(ffn)  # the library chosen before compiling, as train.compile does (else the graph and op differ)
    compiled = torch.compile(ffn, fullgraph=True)
    # fp32's tolerance for sums over the 256 tokens taken in another order: the eager path runs the helpers' own
    # graphs, the compiled model has them inlined in its graph, fused as the compiler likes; in one CI run of about
    # ten, 132 of fc1.coef's 7,812 gradients differed by up to 3.4e-5 (4.6e-4 relative), equal in the others (which
    # worker state chose another order was not found). Which path ran is the memory check's to tell
    _close(_run(ffn, x, "fused", call=compiled), _run(ffn, x, "fused"), rtol=1e-4, atol=1e-4)
    x.requires_grad_(True)
    with kernel("fused"):
        eager, saved = saved_activation_bytes(ffn, x), saved_activation_bytes(compiled, x)
    with kernel("reference"):
        reference = saved_activation_bytes(ffn, x)
    assert saved <= eager + 2 * weights < reference, (saved, eager, weights, reference)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bspline", "rational"])
def test_fused_helpers_compile_one_graph_for_every_token_count(name):
    """The token count is the compiled helpers' one symbolic size: another batch size compiles nothing."""
    ffn = _ffn(name, torch.float32)  # the graphs of test_fused_kernels_equal_reference
    dispatch._COMPILED.clear()
    graphs = torch._dynamo.utils.counters["stats"]
    graphs.clear()
    x = _inputs(torch.float32, n=24)
    first = _run(ffn, x, "fused")
    compiled = graphs["unique_graphs"]
    assert compiled >= 2  # at least a forward and a backward
    for n in (40, 72):
        _run(ffn, _inputs(torch.float32, n=n), "fused")
    assert graphs["unique_graphs"] == compiled
    _close(first, _run(ffn, x, "reference"), rtol=1e-4, atol=1e-4)
    dispatch._COMPILED.clear()


@pytest.mark.slow
def test_a_pre_transform_without_parameters_runs_on_both_paths(counted, monkeypatch):
    """``lean_pre_params() == ()`` is a pre-transform (with no parameters), not its absence: the two-layer Function
    applies it as the per-layer path does."""
    from kanformer.layers.rbf import RBFBasis

    monkeypatch.setattr(RBFBasis, "lean_pre_params", lambda self: ())
    monkeypatch.setattr(RBFBasis, "lean_pre", lambda self, x, stats=None: (torch.tanh(x), ()))
    monkeypatch.setattr(RBFBasis, "lean_pre_backward", lambda self, x, stats, g: (g * (1 - torch.tanh(x) ** 2),))
    ffn = _ffn("rbf", torch.float64, layernorm=False)  # its LayerNorm's parameters would get no gradient
    x = _inputs(torch.float64)
    chained = _run(ffn, x, "fused")
    assert counted
    monkeypatch.setattr(kan, "ffn_plan", lambda *a: None)
    per_layer = _run(ffn, x, "fused")
    _close(chained, per_layer, rtol=1e-12, atol=1e-12)
    monkeypatch.undo()
    ffn_plain = _ffn("rbf", torch.float64, layernorm=False)  # the same weights without the transform
    with pytest.raises(AssertionError):
        _close(_run(ffn_plain, x, "fused"), per_layer, rtol=1e-6, atol=1e-6)


def _run_compiled(ffn, x, mode):
    """``_run`` through ``torch.compile(ffn, fullgraph=True)`` (a graph break is an error), on ``mode``."""
    return _run(ffn, x, mode, call=torch.compile(ffn, fullgraph=True))


@pytest.mark.slow
def test_a_compiled_model_traces_the_two_layer_function_and_checks_the_grid_it_read(monkeypatch):
    """Inside a compiled graph (a compiled model) the fused path's two-layer Function is traced with the rest: equal to
    the reference, no graph break. The B-spline's uniform-grid verdict, which a graph cannot read back, comes from its
    last eager check: a grid written in place since raises; after ``refresh_checks`` the reference serves it."""
    from kanformer.layers import refresh_checks

    counted = []  # calls of the Function's entry, traced (dynamo takes the Function's apply itself apart)
    monkeypatch.setattr(kan, "lean_kan_ffn", lambda *a, _f=kan.lean_kan_ffn: counted.append(1) or _f(*a))
    torch._dynamo.reset()
    ffn = _ffn("bspline", torch.float32)
    x = _inputs(torch.float32)
    expected = _run(ffn, x, "reference")
    counted.clear()
    _close(_run_compiled(ffn, x, "fused"), expected, rtol=1e-4, atol=1e-4)
    assert counted, "the two-layer Function was not traced"
    with torch.no_grad():
        ffn.fc1.basis.grid[:, 4:] += 0.25  # a non-uniform grid, written behind the basis' back
    with pytest.raises(RuntimeError, match="refresh_checks"):
        _run_compiled(ffn, x, "fused")
    refresh_checks(ffn)
    counted.clear()
    _close(_run_compiled(ffn, x, "fused"), _run(ffn, x, "reference"), rtol=1e-4, atol=1e-4)
    assert counted == [], "a non-uniform grid is the reference path's"


def test_a_compiled_model_traces_gr_kans_function():
    torch._dynamo.reset()
    ffn = _ffn("rational", torch.float32)
    x = _inputs(torch.float32)
    with kernel("fused"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.compiler, "is_compiling", lambda: True)  # what the plan sees while a graph is traced
        assert lean_rational.rational_chainable(ffn, x)
    _close(_run_compiled(ffn, x, "auto"), _run(ffn, x, "reference"), rtol=1e-4, atol=1e-4)


def test_a_compiled_model_runs_the_wavelet_ffn_as_one_operator(counted):
    """Inside a compiled graph the wavelet FFN (a basis with parameters of its own) is one operator, whose forward and
    backward are the eager two-layer Function's: equal to the reference in fp64, the translations' and scales'
    gradients included, under the compiler's tracing of both (fake tensors, the token count symbolic), no graph break.
    A second batch size, and another FFN of the same configuration, reuse the graph."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    ffn = _ffn("wavelet", torch.float64)
    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(ffn, fullgraph=True, backend=backend, dynamic=True)
    inputs = [_inputs(torch.float64, n=n) for n in (40, 56)]
    expected = [_run(ffn, x, "reference") for x in inputs]  # first: the products' library chosen eagerly
    for x, reference in zip(inputs, expected, strict=True):
        _close(_run(ffn, x, "auto", call=compiled), reference, rtol=1e-9, atol=1e-10)
    other = _ffn("wavelet", torch.float64)  # another layer of this configuration: a regionally compiled model's next
    x = inputs[0]                             # block, whose graph is this one (no guard on the layer's identity)
    _close(_run(other, x, "auto", call=torch.compile(other, fullgraph=True, backend=backend, dynamic=True)),
           _run(other, x, "reference"), rtol=1e-9, atol=1e-10)
    ops = [n.target for g in backend.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert ops.count(getattr(torch.ops, lean_ffn._NS).own_params_ffn.default) == 1, ops
    assert backend.frame_count == 1
    assert not counted  # the Function itself is not traced: the operator runs it
    torch._dynamo.reset()


def test_the_operator_builds_its_basis_from_the_configuration_the_graph_carries():
    """``lean_spec`` names what the lean forms read; the basis the operator builds from it computes the layer's
    basis values (its own parameters passed in, as the operator passes the layer's)."""
    from kanformer.layers.wavelet import WaveletBasis

    basis = WaveletBasis(7, num_wavelets=3, wavelet="morlet")
    with torch.no_grad():
        basis.translation.add_(torch.randn_like(basis.translation))
    built = lean_ffn._basis(basis.lean_spec())
    assert (type(built), built.in_features, built.num_wavelets, built.wavelet) == (WaveletBasis, 7, 3, "morlet")
    x = torch.randn(5, 7)
    state = built.fused_state_from(*basis.lean_params())
    for j in range(3):
        torch.testing.assert_close(built.fused_term(x, j, *state)[0], basis.fused_term(x, j, *basis.fused_state())[0])


def test_under_bf16_autocast_the_wavelets_operator_computes_what_the_eager_function_does(counted):
    """The operator takes the matmul dtype the graph was traced under (bf16 here) and runs the Function's computations
    with it: equal to the eager two-layer Function's under the same autocast."""
    torch._dynamo.reset()
    ffn = _ffn("wavelet", torch.float32, num_wavelets=4)
    x = _inputs(torch.float32)
    eager = _run(ffn, x, "fused", autocast=True)
    assert counted
    counted.clear()
    compiled = _run(ffn, x, "fused", autocast=True, call=torch.compile(ffn, fullgraph=True, backend="aot_eager"))
    assert not counted
    _close(compiled, eager, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


def test_inside_a_compiled_graph_gr_kans_tables_are_buffers_of_their_own(monkeypatch):
    """GR-KAN's per-channel coefficient tables (gathered from its per-group ones) come through the opaque copy in a
    traced graph, under either memory rule: the compiler keeps them as buffers that its loops read directly. Left to
    it, the gather ran inside the loops, every element's loads indirect (d 128, 1024 tokens: 1.83 against 1.13x the
    MLP's step)."""
    from kanformer.layers import autotune_cache

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    ffn = _ffn("rational", torch.float32)
    x = _inputs(torch.float32).requires_grad_(True)
    monkeypatch.setattr(autotune_cache, "_memory", ["fast"])  # no copies for the backward's recomputation
    with kernel("fused"):
        torch.compile(ffn, fullgraph=True, backend=record)(x).sum().backward()
    copies = [n for g in graphs for m in g.modules() if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes
              if str(n.target) == f"{dispatch._NS}.opaque_copy.default"]
    assert len(copies) >= 4  # numerator and denominator tables of both rational functions
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chebyshev", "rational"])
def test_a_compiled_model_keeps_the_lean_memory_under_the_lean_rule(name):
    """Inside a compiled graph the backward recomputes the features from the inputs the forward kept, under the ``lean``
    memory rule: the compiled FFN saves what the eager lean path saves, plus its weights' matmul layouts (their input
    padding included: at most twice the weights). Under ``fast`` the compiler merges the backward's features with the
    forward's and keeps them."""
    from kanformer.evaluation.metrics import saved_activation_bytes
    from kanformer.layers import autotune

    torch._dynamo.reset()
    ffn = _ffn(name, torch.float32)
    x = _inputs(torch.float32, n=256).requires_grad_(True)
    weights = sum(p.numel() * p.element_size() for p in ffn.parameters())
    with kernel("lean"):  # what the fused path saves too, without compiling its helpers
        eager = saved_activation_bytes(ffn, x)
    compiled = torch.compile(ffn, fullgraph=True)
    saved, rule_before = {}, autotune.kernel_memory()
    try:
        for rule in ("lean", "fast"):
            autotune.set_kernel_memory(rule)
            with kernel("fused"):
                compiled(x).sum().backward()
                saved[rule] = saved_activation_bytes(compiled, x)
    finally:
        autotune.set_kernel_memory(rule_before)
    assert saved["lean"] <= eager + 2 * weights, (saved, eager, weights)
    assert saved["fast"] > eager + 2 * weights, (saved, eager, weights)  # the features: what the rule keeps out


def test_inside_a_compiled_graph_the_plan_takes_the_function_where_it_serves(monkeypatch):
    """While a graph is traced: the two-layer Function on auto, fused and lean alike; the reference path on
    ``reference`` and for a B-spline grid not known uniform. A wavelet (parameters of its own) takes its operator on
    auto and fused (traced as lean forms, its input-major backward in one graph with the rest ran slower than the
    compiled reference: d 128, 1024 tokens, 2.39 against 1.84x the MLP's step), the reference on lean, without
    autograd and under the fast memory rule."""
    from kanformer.layers import autotune_cache

    x = _inputs(torch.float32)
    ffn = _ffn("bspline", torch.float32)
    wavelet = _ffn("wavelet", torch.float32, h=10)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for mode in ("auto", "fused", "lean"):
        with kernel(mode):
            assert not lean_ffn.plan(ffn, x).opaque, mode
            chained = lean_ffn.plan(wavelet, x)
            assert (chained is None) if mode == "lean" else chained.opaque, mode
            with torch.no_grad():
                assert lean_ffn.plan(wavelet, x) is None, mode
            with pytest.MonkeyPatch.context() as mp:  # the fast memory rule: the compiler's choice, the reference
                mp.setattr(autotune_cache, "_memory", ["fast"])
                assert lean_ffn.plan(wavelet, x) is None, mode
            with pytest.MonkeyPatch.context() as mp:  # a basis that cannot name its configuration: the reference
                mp.setattr(type(wavelet.fc1.basis), "lean_spec", kan.Basis.lean_spec)
                assert lean_ffn.plan(wavelet, x) is None, mode
    with kernel("reference"):
        assert lean_ffn.plan(ffn, x) is None
    ffn.fc1.basis.grid = ffn.fc1.basis.grid.clone()  # a new tensor that no check has seen (a loader's, say)
    with kernel("fused"):
        assert lean_ffn.plan(ffn, x) is None
    monkeypatch.undo()
    ffn.fc1.basis.refresh_checks()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with kernel("fused"):
        assert lean_ffn.plan(ffn, x) is not None
