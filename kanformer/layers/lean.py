"""The memory-lean KAN layer path: an autograd Function that saves only the layer input and recomputes the basis in
the backward pass, so no (tokens, in, n_basis) tensor lives between forward and backward.

Legend: N tokens, I inputs, O outputs, B basis functions per input.

    forward:  F = basis(x) (N, B*I);  y = F @ C^T + silu(x) @ W^T + bias           saves x (N, I) only
    backward: F recomputed;  dC = gy^T F;  dF = gy @ C;  dx = sum_b dF * dF/dx  (+ base branch)

Here the features are laid out basis-major, (N, B, I): each basis function's values for all inputs form one
contiguous row segment, so a basis is evaluated with whole-row vector operations instead of stride-B writes; the
coefficients are permuted to match (O, I, B) -> (O, B*I), a small copy per call.

A basis opts in by implementing ``lean_features(u) -> (N, B, I)`` (equal to its reference ``forward`` within dtype
tolerance) and, for speed, ``lean_input_grad(u, g) -> (N, I)`` (the analytic ``sum_b g[:, b] * f_b'(u)``, or None
to decline). Without an analytic derivative the recomputed basis is differentiated by autograd inside the backward
(still lean: nothing was saved for it).
Bases with a differentiable pre-transform (RBF's LayerNorm) apply it outside, under ordinary autograd.

Dispatch (``KANLinear.forward``, ``RationalFFN.forward``): ``set_kernel("auto" | "lean" | "fused" | "triton" |
"reference")`` or the ``KANFORMER_KERNEL`` environment variable. ``auto`` takes the Triton kernels where they apply
(CUDA), else the lean path, when autograd records (training); the reference path without autograd (inference) and
under ``torch.compile``, whose own fusion and recomputation (min-cut rematerialisation) then apply; ``fused`` is
the lean path with each basis' (and GR-KAN's) elementwise work compiled by torch.compile into fused loops (C++ on
CPU, Triton on GPU; seconds of compilation per process, once per basis kind); ``reference`` forces the definition.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from .triton_kan import bspline_kan, triton_available
from .triton_kan import rational_backward as triton_rational_backward
from .triton_kan import rational_forward as triton_rational_forward

KERNELS = ("auto", "lean", "fused", "triton", "reference")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_mode = [os.environ.get("KANFORMER_KERNEL", "auto")]


def _check(mode: str) -> str:
    if mode not in KERNELS:
        raise ValueError(f"Unknown KAN kernel {mode!r}. Available: {', '.join(KERNELS)}")
    return mode


def set_kernel(mode: str) -> None:
    """Choose the KAN layer path for this process: one of ``KERNELS`` (auto is the default)."""
    _mode[0] = _check(mode)


def get_kernel() -> str:
    return _check(_mode[0])


@contextlib.contextmanager
def kernel(mode: str) -> Iterator[None]:
    """``with kernel("reference"): ...`` runs a block on the given path."""
    previous, _mode[0] = _mode[0], _check(mode)
    try:
        yield
    finally:
        _mode[0] = previous


def use_lean(available: bool = True) -> bool:
    """Whether a module with a lean path (``available``) takes it now."""
    mode = get_kernel()
    if mode == "reference" or not available:
        return False
    if mode in ("lean", "fused", "triton"):
        return True
    # auto: the lean path exists to keep activations out of memory, so it serves training; without autograd
    # (evaluation, generation) nothing is saved anyway and the reference forward has less overhead per call
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _silu_grad(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


_COMPILED: dict[str, Any] = {}  # fused mode: torch.compile'd helpers by qualified name
_TRITON: dict[str, Any] = {}  # helper name -> its hand-written Triton kernel (filled below, once the helpers exist)


def _kernel_fn(fn: Any, x: torch.Tensor | None = None) -> Any:
    """``fn`` itself; its hand-written Triton kernel (layers/triton_kan.py) where one exists and runs on ``x``
    (kernels auto / triton); or in the fused mode its torch.compile'd version (one fused loop: C++ on CPU, Triton on
    GPU; compiled once per process, token count dynamic)."""
    mode = get_kernel()
    if x is not None and fn.__name__ in _TRITON and mode in ("auto", "triton") and triton_available(x):
        return _TRITON[fn.__name__]
    if mode != "fused":
        return fn
    if fn.__qualname__ not in _COMPILED:
        _COMPILED[fn.__qualname__] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn.__qualname__]


def _features(basis: Any, u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, B*I) basis values in ``dtype``; low-precision inputs are evaluated in fp32 (as the reference does)."""
    uc = u.float() if u.dtype in _LOW_PRECISION else u
    return _kernel_fn(type(basis).lean_features)(basis, uc).reshape(len(u), -1).to(dtype)  # (N, B*I)


def _basis_major(coef: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(O, I, B) -> (O, B*I), matching the (N, B, I) feature layout."""
    return coef.to(dtype).permute(0, 2, 1).reshape(coef.shape[0], -1)


class LeanKANFunction(torch.autograd.Function):
    """``y = F(u) @ coef^T (+ silu(x) @ base^T) (+ bias)``, saving ``u``, ``x`` and the weights only (``u`` is the
    basis input, ``x`` the layer input: the same tensor unless the basis transforms its input first)."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None,
                bias: torch.Tensor | None, basis: Any, *params: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(u)
        with torch.autocast(u.device.type, enabled=False):
            feats = _features(basis, u, dtype)  # (N, B*I)
            w = _basis_major(coef, dtype)  # (O, B*I)
            y = feats @ w.T if bias is None else torch.addmm(bias.to(dtype), feats, w.T)  # (N, O)
            if base is not None:
                y = torch.addmm(y, F.silu(x.to(dtype)), base.to(dtype).T)
        ctx.basis, ctx.dtype, ctx.has_base, ctx.has_bias = basis, dtype, base is not None, bias is not None
        ctx.same = x is u
        ctx.save_for_backward(u, torch.empty(0) if ctx.same else x, coef, base if base is not None else torch.empty(0),
                              *params)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, x, coef, base, *params = ctx.saved_tensors
        x = u if ctx.same else x
        basis, dtype = ctx.basis, ctx.dtype
        n, i_in = u.shape
        o, _, b = coef.shape
        gy = gy.to(dtype)
        with torch.autocast(u.device.type, enabled=False):
            feats = _features(basis, u, dtype)  # recomputed (N, B*I)
            g_coef = None
            if ctx.needs_input_grad[2]:
                g_coef = (gy.T @ feats).reshape(o, b, i_in).permute(0, 2, 1).contiguous().to(coef.dtype)
            del feats
            g_feats = (gy @ _basis_major(coef, dtype)).reshape(n, b, i_in)  # (N, B, I)
            uc = u.float() if u.dtype in _LOW_PRECISION else u
            g_params: tuple[torch.Tensor | None, ...] = (None,) * len(params)
            g_u = None
            if hasattr(basis, "lean_input_grad") and not params:
                g_u = _kernel_fn(type(basis).lean_input_grad)(basis, uc, g_feats.to(uc.dtype))  # None: declined
            if g_u is None:  # autograd through the recomputed basis, here and now (nothing was saved for it)
                with torch.enable_grad():
                    ur = uc.detach().requires_grad_(True)
                    values = basis.lean_features(ur)
                    grads = torch.autograd.grad(values, [ur, *params], g_feats.to(values.dtype), allow_unused=True)
                g_u, g_params = grads[0], tuple(grads[1:])
            g_base, g_x = None, None
            if ctx.has_base:
                xd = x.to(dtype)
                if ctx.needs_input_grad[3]:
                    g_base = (gy.T @ F.silu(xd)).to(base.dtype)
                g_x = ((gy @ base.to(dtype)) * _silu_grad(xd)).to(x.dtype)
            g_bias = gy.sum(0).to(coef.dtype) if ctx.has_bias and ctx.needs_input_grad[4] else None
        g_u = g_u.to(u.dtype)
        if ctx.same and g_x is not None:
            g_u, g_x = g_u + g_x, None
        return (g_u, g_x, g_coef, g_base, g_bias, None, *g_params)


def _triton_kan_linear(x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None, bias: torch.Tensor | None,
                       basis: Any) -> torch.Tensor | None:
    """The fused Triton kernels (layers/triton_kan.py) where they apply: a basis that offers them (B-spline on a
    uniform grid) and a device they run on (CUDA, or the CPU interpreter). None otherwise."""
    mode = get_kernel()
    if mode not in ("auto", "triton") or not hasattr(basis, "triton_params") or not triton_available(x):
        if mode == "triton" and not (triton_available(x) or torch.compiler.is_compiling()):
            raise ValueError("kernel 'triton' needs Triton and a CUDA tensor (or TRITON_INTERPRET=1 on CPU); "
                             "use auto, lean, fused or reference")
        return None
    params = basis.triton_params()
    if params is None:  # e.g. a data-adapted (non-uniform) grid: the lean path serves
        return None
    dtype = _compute_dtype(x)
    coef_t = coef.to(dtype).permute(2, 1, 0)  # (B, I, O)
    y = bspline_kan(x.to(dtype), coef_t, *params).to(dtype)
    if bias is not None:
        y = y + bias.to(dtype)
    if base is not None:
        y = y + F.linear(F.silu(x.to(dtype)), base.to(dtype))
    return y


def lean_kan_linear(x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None, bias: torch.Tensor | None,
                    basis: Any) -> torch.Tensor:
    """The fast paths of ``KANLinear`` on flat inputs ``(N, I)``: Triton kernels where they apply, else lean."""
    y = _triton_kan_linear(x, coef, base, bias, basis)
    if y is not None:
        return y
    u = basis.lean_pre(x) if hasattr(basis, "lean_pre") else x
    params = tuple(basis.lean_params()) if hasattr(basis, "lean_params") else ()
    return LeanKANFunction.apply(u, x, coef, base, bias, basis, *params)


# -- GR-KAN: rational activation fused with the linear layer after it --------------------------------------------
def _horner(coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_j coeffs[:, j] x^j with per-channel coefficients ``(C, J)`` on ``x`` ``(N, C)``."""
    out = coeffs[:, -1].expand_as(x).clone()
    for j in range(coeffs.shape[1] - 2, -1, -1):
        out.mul_(x).add_(coeffs[:, j])
    return out


def _rational_parts(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
    """P(x), z(x) = sum_j b_j x^j and Q = 1 + |z| (layers/rational.py's safe denominator)."""
    p = _horner(a, x)
    z = _horner(b, x).mul_(x) if b.shape[1] else torch.zeros_like(x)
    return p, z, z.abs().add_(1)


def rational_values(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """R(x) = P(x) / Q(x) with per-channel coefficients (elementwise; compiled in the fused mode)."""
    p, _, q = _rational_parts(x, a, b)
    return p.div_(q)


def rational_backward(x: torch.Tensor, g_r: torch.Tensor, a: torch.Tensor, b: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """From dL/dR (N, C): R(x) (recomputed), dL/dx, and the per-channel coefficient gradients dL/da (C, m+1),
    dL/db (C, n), reduced over tokens without a (N, C, degree) tensor of powers (compiled in the fused mode)."""
    m, n = a.shape[1] - 1, b.shape[1]
    p, z, q = _rational_parts(x, a, b)
    r = p / q
    gq = g_r / q  # dL/dR / Q
    share = r * torch.sign(z) * gq  # dL/dR * R/Q * sign(z): the denominator's share
    # dR/dx = P'/Q - (R/Q) sign(z) z'
    g_x = gq * _horner(a[:, 1:] * torch.arange(1, m + 1, device=a.device, dtype=a.dtype), x) if m else 0 * x
    if n:
        g_x = g_x - share * _horner(b * torch.arange(1, n + 1, device=b.device, dtype=b.dtype), x)
    g_a, g_b = [gq.sum(0)], []
    power = x
    for j in range(1, max(m, n) + 1):
        if j <= m:
            g_a.append((gq * power).sum(0))
        if j <= n:
            g_b.append(-(share * power).sum(0))
        if j < max(m, n):
            power = power * x
    g_b_t = torch.stack(g_b, dim=1) if g_b else x.new_zeros(x.shape[1], 0)
    return r, g_x, torch.stack(g_a, dim=1), g_b_t


_TRITON.update(rational_values=triton_rational_forward, rational_backward=triton_rational_backward)


class LeanRationalLinearFunction(torch.autograd.Function):
    """``y = R(x) @ W^T + bias`` with the group-rational R of layers/rational.py, saving only ``x``: R(x) is
    recomputed in the backward, and the coefficient gradients are reduced over tokens per channel, then per group."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, num: torch.Tensor, den: torch.Tensor, group_index: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xc = x.float() if x.dtype in _LOW_PRECISION else x
            r = _kernel_fn(rational_values, x)(xc, num[group_index].to(xc.dtype), den[group_index].to(xc.dtype))
            r, w = r.to(dtype), weight.to(dtype)
            y = r @ w.T if bias is None else torch.addmm(bias.to(dtype), r, w.T)
        ctx.dtype, ctx.has_bias = dtype, bias is not None
        ctx.save_for_backward(x, num, den, group_index, weight)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, num, den, group_index, weight = ctx.saved_tensors
        dtype = ctx.dtype
        gy = gy.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            xc = x.float() if x.dtype in _LOW_PRECISION else x
            a, b = num[group_index].to(xc.dtype), den[group_index].to(xc.dtype)  # (C, m+1), (C, n)
            g_r = (gy @ weight.to(dtype)).to(xc.dtype)  # dL/dR (N, C)
            r, g_x, g_a, g_b = _kernel_fn(rational_backward, x)(xc, g_r, a, b)
            g_w = (gy.T @ r.to(dtype)).to(weight.dtype) if ctx.needs_input_grad[4] else None
            g_bias = gy.sum(0).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[5] else None
            g_num = torch.zeros_like(num, dtype=g_a.dtype).index_add_(0, group_index, g_a).to(num.dtype)
            g_den = torch.zeros_like(den, dtype=g_b.dtype).index_add_(0, group_index, g_b).to(den.dtype)
        return g_x.to(x.dtype), g_num, g_den, None, g_w, g_bias


def lean_rational_linear(x: torch.Tensor, act: Any, linear: Any) -> torch.Tensor:
    """``linear(act(x))`` for a GroupRational ``act`` and nn.Linear ``linear`` on flat inputs ``(N, C)``."""
    return LeanRationalLinearFunction.apply(x, act.numerator, act.denominator, act.group_index, linear.weight,
                                            linear.bias)
