"""A GR-KAN FFN's two rational -> linear pairs as one autograd Function: one compiled graph for the forward of both,
one for the backward (lean.py's ``LeanRationalLinearFunction`` per pair, chained as layers/lean_ffn.py chains a KAN
FFN's two layers). A call without autograd runs the forward's graph alone, on per-channel tables kept from the last
such call (layers/few_tokens.py).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .dispatch import (
    _fused,
    _global_hooks,
    _hooked,
    _kernel_fn,
    get_kernel,
    kept_for_recompute,
    on_forward_path,
    per_token,
    traced,
    use_lean,
)
from .few_tokens import _drop_kept, _kept_tables, served
from .gemm import mm
from .lean import (
    _channel_tables,
    _compute_dtype,
    _detached,
    _low_dtype,
    _per_group,
    rational_backward,
    rational_values,
)
from .triton_kan import triton_available


def rational_chainable(ffn: Any, x: torch.Tensor) -> bool:
    """Whether a GR-KAN FFN's two rational + linear pairs (``act1``, ``fc1``, ``act2``, ``fc2``) run as one Function
    now: the fused path without a Triton kernel that applies (CUDA under auto: the per-layer kernels), no hooks."""
    mode = get_kernel()
    if traced():  # inside a compiled model's graph
        return not _global_hooks() and not any(_hooked(m) for m in (ffn.act1, ffn.fc1, ffn.act2, ffn.fc2))
    if mode not in ("auto", "fused") or not _fused() or not use_lean() or _global_hooks():
        return False
    if mode == "auto" and triton_available(x):
        return False
    return not any(_hooked(m) for m in (ffn.act1, ffn.fc1, ffn.act2, ffn.fc2))


def _rational_ffn_forward(x: torch.Tensor, act1: tuple[torch.Tensor, ...], w1: torch.Tensor,
                          bias1: torch.Tensor | None, act2: tuple[torch.Tensor, ...], w2: torch.Tensor,
                          bias2: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """y and the hidden pre-activations h: ``R2(R1(x) @ W1^T + b1) @ W2^T + b2``, ``act``: a GroupRational's
    per-channel coefficient tables (``lean._channel_tables``: made outside the graph, where the compiler would fold
    their gather into the rational's loops as indirect loads: the FFN step took 1.19x the per-layer path's; inside a
    compiled model's graph, buffers of their own, ``dispatch.realized``). One compiled graph in the fused mode."""
    h = _rational_linear(x, act1, w1, bias1, dtype)
    return _rational_linear(h, act2, w2, bias2, dtype), h


def _rational_linear(x: torch.Tensor, act: tuple[torch.Tensor, ...], w: torch.Tensor, bias: torch.Tensor | None,
                     dtype: torch.dtype) -> torch.Tensor:
    r = rational_values(x, *act, dtype)
    return mm(r, w.to(dtype).T, None if bias is None else bias.to(dtype))


def _rational_ffn_backward(x: torch.Tensor, h: torch.Tensor, gy: torch.Tensor, act1: tuple[torch.Tensor, ...],
                           w1: torch.Tensor, act2: tuple[torch.Tensor, ...], w2: torch.Tensor, dtype: torch.dtype,
                           need: tuple[bool, ...]) -> tuple[Any, ...]:
    """(dx, per-channel dnum1, dden1, dW1, db1, dnum2, dden2, dW2, db2): the second pair's backward, then the first's
    on its input gradient (in h's dtype, as the per-layer path hands it). ``need``: (dW1, db1, dW2, db2). One
    compiled graph in the fused mode."""
    need_w1, need_b1, need_w2, need_b2 = need
    g_h, g_a2, g_b2, g_w2, g_bias2 = _rational_linear_backward(h, gy, act2, w2, dtype, need_w2, need_b2)
    g_x, g_a1, g_b1, g_w1, g_bias1 = _rational_linear_backward(x, g_h.to(h.dtype), act1, w1, dtype, need_w1, need_b1)
    return g_x, g_a1, g_b1, g_w1, g_bias1, g_a2, g_b2, g_w2, g_bias2


def _rational_linear_backward(x: torch.Tensor, gy: torch.Tensor, act: tuple[torch.Tensor, ...], w: torch.Tensor,
                              dtype: torch.dtype, need_w: bool, need_b: bool) -> tuple[Any, ...]:
    gy_ = gy.to(dtype)
    r, g_x, g_a, g_b = rational_backward(x, mm(gy_, w.to(dtype)), *act, dtype)
    return g_x, g_a, g_b, (mm(gy_.T, r) if need_w else None), (gy.sum(0) if need_b else None)


def _rational_tag(num1: torch.Tensor, den1: torch.Tensor, w1: torch.Tensor) -> str:
    """The compiled-copy tag of a GR-KAN FFN's two-pair helpers (dispatch._kernel_fn)."""
    return f"{tuple(num1.shape)}{tuple(den1.shape)}{tuple(w1.shape)}"


def _rational_ffn_no_grad(ffn: Any, x: torch.Tensor) -> torch.Tensor:
    """``LeanRationalFFNFunction``'s forward for a call without autograd (x: (N, d_model)): the same compiled graph,
    on the per-channel tables kept from the last such call (``_kept_tables``), and no Function."""
    a1, a2 = ffn.act1, ffn.act2
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        act1 = _kept_tables(a1.numerator, a1.denominator, a1.group_index, _low_dtype(x.dtype))
        act2 = _kept_tables(a2.numerator, a2.denominator, a2.group_index, _low_dtype(dtype))
        x_, w1, b1, w2, b2 = _detached(x, ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias)
        per_token(x_)
        call = _kernel_fn(_rational_ffn_forward, tag=_rational_tag(a1.numerator, a1.denominator, w1))
        y = call(x_, act1, w1, b1, act2, w2, b2, dtype)[0]
    served(ffn, y, functools.partial(_first, call), (), (act1, w1, b1, act2, w2, b2, dtype),
           torch.is_autocast_enabled(x.device.type))
    return y


def _first(call: Any, *args: Any) -> torch.Tensor:
    return call(*args)[0]


class LeanRationalFFNFunction(torch.autograd.Function):
    """A GR-KAN FFN ``fc2(act2(fc1(act1(x))))`` saving x and the hidden pre-activations: the two pairs of
    lean.py's ``LeanRationalLinearFunction`` in one Function, one compiled graph each way."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, num1: torch.Tensor, den1: torch.Tensor, group1: torch.Tensor,
                w1: torch.Tensor, bias1: torch.Tensor | None, num2: torch.Tensor, den2: torch.Tensor,
                group2: torch.Tensor, w2: torch.Tensor, bias2: torch.Tensor | None) -> torch.Tensor:
        dtype = _compute_dtype(x)
        tag = _rational_tag(num1, den1, w1)
        with torch.autocast(x.device.type, enabled=False):
            x_, n1, d1, w1_, b1, n2, d2, w2_, b2 = _detached(x, num1, den1, w1, bias1, num2, den2, w2, bias2)
            act1 = _channel_tables(n1, d1, group1, _low_dtype(x.dtype))
            act2 = _channel_tables(n2, d2, group2, _low_dtype(dtype))  # h comes in the matmul's dtype
            per_token(x_)
            y, h = _kernel_fn(_rational_ffn_forward, tag=tag)(x_, act1, w1_, b1, act2, w2_, b2, dtype)
        ctx.dtype, ctx.tag, ctx.has_bias1, ctx.has_bias2 = dtype, tag, bias1 is not None, bias2 is not None
        ctx.mode = get_kernel()
        # the per-channel tables too (a few numbers a channel): the backward does not gather them again
        ctx.save_for_backward(x, h, num1, den1, group1, w1, num2, den2, group2, w2, *act1, *act2)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return on_forward_path(ctx.mode, LeanRationalFFNFunction._backward, ctx, gy)

    @staticmethod
    def _backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, h, num1, den1, group1, w1, num2, den2, group2, w2, *tables = ctx.saved_tensors
        x, h = kept_for_recompute(x, h)
        act1, act2 = tuple(tables[:2]), tuple(tables[2:])
        needs = ctx.needs_input_grad
        need = (needs[4], ctx.has_bias1 and needs[5], needs[9], ctx.has_bias2 and needs[10])
        with torch.autocast(x.device.type, enabled=False):
            per_token(x, h, gy)
            g_x, g_a1, g_b1, g_w1, g_bias1, g_a2, g_b2, g_w2, g_bias2 = _kernel_fn(_rational_ffn_backward, tag=ctx.tag)(
                x, h, gy, act1, w1, act2, w2, ctx.dtype, need)

        def cast(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
            return None if g is None else g.to(like.dtype)

        return (g_x.to(x.dtype), _per_group(g_a1, num1, group1), _per_group(g_b1, den1, group1), None, cast(g_w1, w1),
                cast(g_bias1, w1), _per_group(g_a2, num2, group2), _per_group(g_b2, den2, group2), None, cast(g_w2, w2),
                cast(g_bias2, w2))


def lean_rational_ffn(ffn: Any, x: torch.Tensor) -> torch.Tensor:
    """A GR-KAN FFN (``act1``, ``fc1``, ``act2``, ``fc2``) through the two-pair Function; a call without autograd (not
    in inference mode, which the compiled graphs are not made for, nor inside a compiled model) through its forward's
    graph alone (``_rational_ffn_no_grad``)."""
    if not (torch.is_grad_enabled() or torch.is_inference_mode_enabled() or torch.compiler.is_compiling()):
        return _rational_ffn_no_grad(ffn, x.reshape(-1, ffn.d_model)).reshape(x.shape)
    _drop_kept()
    a1, a2 = ffn.act1, ffn.act2
    y = LeanRationalFFNFunction.apply(x.reshape(-1, ffn.d_model), a1.numerator, a1.denominator, a1.group_index,
                                      ffn.fc1.weight, ffn.fc1.bias, a2.numerator, a2.denominator, a2.group_index,
                                      ffn.fc2.weight, ffn.fc2.bias)
    return y.reshape(x.shape)
