"""The FFN contract, checked for every registered FFN (baselines included)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import kanformer
from kanformer import create_ffn, list_ffns, match_hidden
from kanformer.layers.dispatch import kernel

D = 16
FFNS = list_ffns()


def build(name, d=D, **kw):
    return create_ffn(name, d, match_hidden(name, d, **kw), **kw)


def test_registry_holds_every_documented_ffn():
    expected = {"mlp", "swiglu", "bspline", "rbf", "chebyshev", "jacobi", "fourier", "wavelet", "rational", "multkan"}
    assert expected <= set(FFNS)


@pytest.mark.parametrize("name", FFNS)
@pytest.mark.parametrize("shape", [(7, D), (2, 5, D), (2, 3, 4, D)])
def test_any_leading_shape(name, shape):
    ffn = build(name)
    x = torch.randn(shape)
    y = ffn(x)
    assert y.shape == x.shape
    # the same tokens give the same outputs whatever the leading shape
    torch.testing.assert_close(ffn(x.reshape(-1, D)).reshape(shape), y)


@pytest.mark.parametrize("name", FFNS)
def test_gradients_reach_every_parameter(name):
    ffn = build(name)
    x = torch.randn(64, D)
    (ffn(x) * torch.randn(64, D)).sum().backward()
    for pname, p in ffn.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


def _inputs_with_far_values(dtype):
    x = torch.randn(4, 8, D)
    x[0, :, :4] = 50.0
    x[1, :, :4] = -50.0
    x[2, :, 4:8] = 12.0
    return x.to(dtype).requires_grad_(True)


@pytest.mark.parametrize("name", FFNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_outputs_and_gradients_far_outside_the_grid(name, dtype):
    ffn = build(name).to(dtype)
    x = _inputs_with_far_values(dtype)
    y = ffn(x)
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in ffn.named_parameters():
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", FFNS)
def test_far_inputs_are_not_silently_zeroed(name):
    """Inputs far outside a basis' range still change the output (the documented out-of-range rule)."""
    ffn = build(name)
    base = torch.zeros(1, D)
    far = base.clone()
    far[0, 0] = 50.0
    assert not torch.allclose(ffn(far), ffn(base))


@pytest.mark.parametrize("name", FFNS)
def test_bf16_autocast_matches_fp32(name):
    ffn = build(name)
    x = torch.randn(32, D)
    ref = ffn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ffn(x)
    assert torch.isfinite(y).all()
    err = (y.float() - ref).norm() / ref.norm()
    assert err < 0.05, f"{name}: bf16 autocast relative error {err:.3g}"


@pytest.mark.parametrize("name", FFNS)
def test_state_dict_round_trip(name):
    a = build(name)
    torch.manual_seed(1)
    b = build(name)
    x = torch.randn(10, D)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", FFNS)
def test_num_params_counts_every_parameter(name):
    ffn = build(name)
    assert ffn.num_params() == sum(p.numel() for p in ffn.parameters())
    assert kanformer.ffn_params(name, ffn.d_model, ffn.hidden) == ffn.num_params()


@pytest.mark.parametrize("name", FFNS)
def test_matmul_flops_match_torch_flop_counter(name):
    ffn = build(name, d=24)
    x = torch.randn(3, 5, 24)
    # the analytic count is the definition's; the fast paths add small implementation matmuls (the B-spline's
    # local polynomials run as one K = k+1 GEMM), so the reference path is the one counted
    with FlopCounterMode(display=False) as counter, kernel("reference"):
        ffn(x)
    assert ffn.flop_breakdown()["matmul"] * 15 == counter.get_total_flops()
    assert ffn.flops_per_token() == sum(ffn.flop_breakdown().values())
    assert ffn.flop_breakdown()["elementwise"] > 0


@pytest.mark.parametrize("name", FFNS)
def test_reset_parameters_reinitialises_everything(name):
    ffn = build(name)
    x = torch.randn(10, D)
    ref = ffn(x)
    with torch.no_grad():
        for p in ffn.parameters():
            p.fill_(7.0)
    ffn.reset_parameters()
    for pname, p in ffn.named_parameters():
        assert not torch.all(p == 7.0), f"{name}: reset_parameters left {pname} untouched"
    if name != "rational":  # rational's reset is deterministic (fitted init) except for its Linear layers
        assert not torch.allclose(ffn(x), ref)
    assert torch.isfinite(ffn(x)).all()


@pytest.mark.parametrize("name", FFNS)
def test_wrong_last_dimension_is_a_clear_error(name):
    ffn = build(name)
    with pytest.raises(ValueError, match=rf"\(\.\.\., {D}\)"):
        ffn(torch.randn(4, D + 1))


@pytest.mark.parametrize("name", FFNS)
def test_kan_modules_answer_for_themselves(name):
    """The optimizer, telemetry and initialisation ask every KAN module (KANModule) the same questions: here each
    registered FFN's modules answer them, and every parameter is either a shape or a scale, never lost."""
    from kanformer.interpret.telemetry import InputRecorder, kan_modules, layer_telemetry
    from kanformer.layers import KANModule
    from kanformer.train.optim import param_groups

    ffn = build(name)
    modules = kan_modules(ffn)
    assert bool(modules) == (name not in ("mlp", "swiglu")), modules.keys()
    shapes = {id(p) for m in modules.values() for p in m.shape_parameters()}
    decay, no_decay = param_groups(ffn, weight_decay=0.1)
    assert {id(p) for p in no_decay["params"] if p.dim() >= 2} <= shapes  # matrices skip decay only as shapes
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(ffn.parameters()))
    with torch.no_grad(), InputRecorder(modules, max_rows=64) as rec:
        ffn(torch.randn(32, D))
    stats = layer_telemetry(modules, rec.rows())
    for module_name, module in modules.items():
        assert isinstance(module, KANModule)
        own = {k.rsplit("/", 1)[-1] for k in stats if k.startswith(f"kan/{module_name}/")}
        assert set(module.function_stats(rec.rows()[module_name])) <= own and "in_std" in own
    assert all(v == v for v in stats.values())  # finite telemetry (no NaN)


@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_padded_for_the_gpu_equals_its_own_width(monkeypatch, bias):
    """On CUDA a SwiGLU whose hidden width is no multiple of 8 runs its step padded with zero units (aligned rows for
    the GPU's matmul kernels): outputs and every gradient equal the unpadded step's; no padding on CPU, at an aligned
    width, or where a projection has hooks. The padded branch is forced here on CPU."""
    from types import SimpleNamespace

    from kanformer.layers.baselines import SwiGLU

    torch.manual_seed(0)
    ffn = SwiGLU(16, 21, bias=bias)
    cuda = SimpleNamespace(is_cuda=True)
    assert ffn.hidden_pad(torch.zeros(1, 16)) == 0 and ffn.hidden_pad(cuda) == 3
    assert SwiGLU(16, 24).hidden_pad(cuda) == 0
    x = torch.randn(7, 16, requires_grad=True)

    def step(pad):
        monkeypatch.setattr(SwiGLU, "hidden_pad", lambda self, x: pad)
        ffn.zero_grad()
        x.grad = None
        y = ffn(x)
        (y * torch.linspace(-1, 1, 16)).sum().backward()
        return [y.detach(), x.grad.clone(), *(p.grad.clone() for p in ffn.parameters())]

    plain, padded = step(0), step(3)
    assert [t.shape for t in plain] == [t.shape for t in padded]
    for a, b in zip(plain, padded, strict=True):
        torch.testing.assert_close(b, a)
    monkeypatch.undo()
    handle = ffn.up_proj.register_forward_hook(lambda *a: None)
    assert ffn.hidden_pad(cuda) == 0  # the hook must see the call
    handle.remove()
    assert ffn.hidden_pad(cuda) == 3
