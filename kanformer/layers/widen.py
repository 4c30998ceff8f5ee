"""CPU autocast on a CPU without native bf16 / fp16 products: the whole model's products taken in fp32.

Where oneDNN has no kernels for the dtype (AVX2 without AVX-512 BF16 / FP16 or AMX), PyTorch multiplies bf16 and fp16
CPU operands in a fallback kernel ~100x slower than fp32 (layers/gemm.py). The kit's FFNs widen their own products
(:func:`gemm.mm`, :func:`gemm.linear`); the rest of a model, attention's projections and scaled dot products and the
head, goes through autocast's kernels. Inside :func:`widened_autocast` those kernels are replaced, for the process, by
ones that take the operands as autocast does (every fp32, fp16 or bf16 tensor rounded to the autocast dtype; fp64
and integer tensors as they are), compute in fp32, and round the result to the autocast dtype: the inputs and fp32
sums of a native kernel, summed in another order. Autograd records the casts, so the backward's products are fp32
too. Compiled graphs trace the same casts.

The demo's B-spline GPT-2 (4 x 128, 1024 tokens) under bf16 autocast on an AMD EPYC Zen 3 (AVX2): a training step took
532 ms with autocast's own kernels and 88 ms widened (fp32: 71 ms; compiled, bf16: 574 against 73 ms), the losses of
eight steps within 1e-4 of each other.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .gemm import MIXED_PRECISION_DTYPES, native_low_precision

# The products and the attention that CPU autocast runs in its low dtype, by the name of the overload its kernel is
# registered for (F.linear, torch.matmul, F.scaled_dot_product_attention, nn.Conv*d and the products they take).
OPS = ("mm", "addmm", "bmm", "baddbmm", "addbmm", "linear", "matmul", "scaled_dot_product_attention",
       "conv1d", "conv2d", "conv3d", "conv1d.padding", "conv2d.padding", "conv3d.padding")
_state: dict[str, Any] = {"depth": 0, "lib": None}


def _widened(t: Any, low: torch.dtype) -> Any:
    """An operand as autocast casts it (rounded to ``low``), then in fp32; anything else as it is."""
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
        return t.to(low).float()
    return t


def _kernel(op: torch._ops.OpOverload) -> Callable[..., torch.Tensor]:
    def widened(*args: Any, **kwargs: Any) -> torch.Tensor:
        low = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):  # the op itself, in fp32, below autocast
            out = op(*(_widened(a, low) for a in args), **{k: _widened(v, low) for k, v in kwargs.items()})
        return out.to(low)

    return widened


def _register() -> torch.library.Library:
    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # PyTorch warns that each replaces autocast's registered kernel: it is meant to
        warnings.simplefilter("ignore")
        for name in OPS:
            base, _, overload = name.partition(".")
            lib.impl(name, _kernel(getattr(getattr(torch.ops.aten, base), overload or "default")), "AutocastCPU")
    return lib


def active() -> bool:
    """Whether CPU autocast's products are widened now."""
    return _state["depth"] > 0


@contextlib.contextmanager
def widened_autocast(dtype: torch.dtype | str | None) -> Iterator[bool]:
    """Inside, CPU autocast's products (:data:`OPS`) are taken in fp32 on operands rounded to its dtype, where this CPU
    has no native products for ``dtype`` (a dtype, or a run's ``mixed_precision``: ``no``, ``bf16``, ``fp16``);
    elsewhere nothing changes. Yields whether the products are widened. Nests; the process's autocast kernels are
    restored when the outermost exits. It applies to the whole process (every thread's CPU autocast)."""
    if isinstance(dtype, str) or dtype is None:
        dtype = MIXED_PRECISION_DTYPES.get(dtype)  # type: ignore[arg-type]
    if dtype not in MIXED_PRECISION_DTYPES.values() or native_low_precision(dtype):
        yield False
        return
    if _state["depth"] == 0:
        _state["lib"] = _register()
    _state["depth"] += 1
    try:
        yield True
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            _state["lib"]._destroy()
            _state["lib"] = None
