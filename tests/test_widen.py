"""CPU autocast on a CPU without native bf16 / fp16 products: the whole model's products in fp32 (layers/widen.py)."""

import pytest
import torch
import torch.nn.functional as F

from kanformer.layers import widen
from kanformer.layers.widen import widened_autocast


def _autocast_kernel(op: str = "aten::mm") -> str:
    """Where the AutocastCPU kernel in force for ``op`` was registered."""
    return next(line for line in torch._C._dispatch_dump(op).splitlines() if line.startswith("AutocastCPU:"))


# (what the model calls, the shapes of its fp32 operands); every op of widen.OPS but addmm's twin addbmm is reached
CASES = {
    "mm": (torch.mm, [(9, 6), (6, 5)]),
    "addmm": (torch.addmm, [(5,), (9, 6), (6, 5)]),
    "bmm": (torch.bmm, [(2, 9, 6), (2, 6, 5)]),
    "baddbmm": (torch.baddbmm, [(2, 9, 5), (2, 9, 6), (2, 6, 5)]),
    "addbmm": (torch.addbmm, [(9, 5), (2, 9, 6), (2, 6, 5)]),
    "linear": (F.linear, [(2, 7, 6), (5, 6), (5,)]),
    "matmul": (torch.matmul, [(2, 3, 7, 6), (2, 3, 6, 5)]),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [(2, 3, 7, 8)] * 3),
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b, padding=1), [(2, 4, 9), (5, 4, 3), (5,)]),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2), [(2, 3, 8, 8), (4, 3, 2, 2), (4,)]),
    "conv2d same": (lambda x, w: F.conv2d(x, w, padding="same"), [(2, 3, 6, 6), (4, 3, 3, 3)]),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_autocast_products_are_taken_in_fp32_on_the_rounded_operands(native, case, dtype):
    """Inside the widening, each product autocast runs in its low dtype gives exactly the fp32 product of the operands
    rounded to that dtype, rounded back, and autograd's gradients through those casts; PyTorch's own low-precision
    kernels give the same within the dtype's rounding."""
    native(False)
    fn, shapes = CASES[case]
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*s, generator=g) for s in shapes]
    gy = None
    results = {}
    for how in ("widened", "by hand", "pytorch"):
        xs = [t.clone().requires_grad_() for t in inputs]
        if how == "by hand":
            y = fn(*(t.to(dtype).float() for t in xs)).to(dtype)
        else:
            with widened_autocast(dtype if how == "widened" else None) as on, torch.autocast("cpu", dtype=dtype):
                assert on == (how == "widened")
                y = fn(*xs)
        assert y.dtype == dtype
        gy = torch.randn(y.shape, generator=g).to(dtype) if gy is None else gy
        y.backward(gy)
        results[how] = [y.detach()] + [t.grad for t in xs]
    for got, want in zip(results["widened"], results["by hand"], strict=True):
        assert torch.equal(got, want)
    if dtype == torch.bfloat16:  # PyTorch's own fp16 CPU kernels do not cover every op here
        for got, want in zip(results["widened"], results["pytorch"], strict=True):
            tol = 3e-2 * want.float().abs().max().item()
            torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=tol)


def test_the_widening_nests_and_restores_autocasts_own_kernels(native):
    native(False)
    own = _autocast_kernel()
    assert "widen.py" not in own and not widen.active()
    with widened_autocast("bf16") as on:
        assert on and widen.active() and "widen.py" in _autocast_kernel()
        with widened_autocast(torch.float16):
            assert "widen.py" in _autocast_kernel("aten::scaled_dot_product_attention")
        assert widen.active() and "widen.py" in _autocast_kernel()  # the inner exit leaves the outer's
    assert _autocast_kernel() == own and not widen.active()
    with pytest.raises(KeyError), widened_autocast("bf16"):
        raise KeyError("inside")
    assert _autocast_kernel() == own and not widen.active()
    a, b = torch.randn(4, 3), torch.randn(3, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(a @ b, a.bfloat16() @ b.bfloat16())  # autocast's own kernel again


@pytest.mark.parametrize("setting", ["bf16", torch.float16, "no", None])
def test_a_cpu_with_native_products_or_no_low_precision_is_left_alone(native, setting):
    native(True)
    own = _autocast_kernel()
    with widened_autocast(setting) as on:
        assert not on and not widen.active() and _autocast_kernel() == own
    native(False)
    if setting in ("no", None):
        with widened_autocast(setting) as on:
            assert not on and _autocast_kernel() == own
