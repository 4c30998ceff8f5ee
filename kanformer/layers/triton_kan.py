"""Fused Triton kernels, registered with ``torch.library``: the B-spline KAN layer (uniform knots) and GR-KAN's
group-rational activation.

Legend: N tokens, I inputs, O outputs, B = G + k basis functions per input, t0 / h the first knot and the knot step
of each input's (uniform) grid.

On a uniform grid every basis function is the cardinal B-spline of order k, shifted: ``f_b(x) = N_k(s - b)`` with
``s = (x - t0) / h``, and ``N_k(u) = 1/k! sum_j (-1)^j C(k+1, j) (u - j)_+^k`` on [0, k+1) (de Boor 1978, ch. IX).
So a tile of basis values is computed in registers from a tile of x, never stored:

    forward   y[n, o]    = sum_b sum_i N_k(s[n, i] - b) C[b, i, o]          tl.dot per (b, i-block)
    backward  dC[b, i, o] = sum_n N_k(s[n, i] - b) gy[n, o]                 one program per (b, i, o) tile,
                                                                            reduced over n in the program: no atomics
              dx[n, i]   = sum_b N_k'(s[n, i] - b) / h * (gy @ C[b]^T)[n, i]  N_k' = N_{k-1}(u) - N_{k-1}(u - 1)

GR-KAN (``rational_forward`` / ``rational_backward``): R(x) = P(x) / (1 + |x S(x)|) per channel, one pass each way;
the backward writes dL/dx and R(x), and each (row block, channel block) program reduces its rows' coefficient
gradients into its own slot of a (row blocks, C, m+1+n) buffer, summed afterwards: no per-element atomics (KAT's
kernel adds every element's contribution atomically).

Inputs may be bf16 (loaded and evaluated in fp32); tile products run on TF32 tensor cores for bf16 layers (exact fp32
for fp32 layers) and accumulate in fp32. ``<module>::bspline_kan`` is a
``torch.library`` custom op with a fake (meta) implementation and an autograd formula, so ``torch.compile`` traces
through it as one node. On a CPU, the kernels run under ``TRITON_INTERPRET=1`` (how the tests check them).
"""

from __future__ import annotations

import math
import os
import re

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the kernels are optional: without Triton, the lean path serves
    triton = None

BLOCK_N, BLOCK_I, BLOCK_O = 32, 32, 32
# One op namespace per copy of this file: checkpoints carry their own copy (portable modeling code), which may be
# imported into a process that already registered the package's ops.
_NS = re.sub(r"\W", "_", __name__)


def triton_available(x: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on ``x``: CUDA with Triton, or Triton's CPU interpreter."""
    if triton is None:
        return False
    return x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _cardinal(u, K: tl.constexpr):
        """N_K(u): the cardinal B-spline of order K (degree K), support [0, K+1)."""
        acc = tl.zeros_like(u)
        for j in tl.static_range(K + 2):
            d = tl.maximum(u - j, 0.0)
            p = tl.full(u.shape, 1.0, tl.float32)
            for _ in tl.static_range(K):
                p = p * d
            sign = 1.0 if j % 2 == 0 else -1.0
            acc += sign * _binom(K + 1, j) * p
        acc = acc * _inv_factorial(K)
        return tl.where((u >= 0) & (u < K + 1), acc, 0.0)

    @triton.jit
    def _binom(n: tl.constexpr, j: tl.constexpr):
        r = 1.0
        for t in tl.static_range(j):
            r = r * (n - t) / (t + 1)
        return r

    @triton.jit
    def _inv_factorial(k: tl.constexpr):
        r = 1.0
        for t in tl.static_range(k):
            r = r / (t + 1)
        return r

    @triton.jit
    def _dot(a, b, LOWP: tl.constexpr):
        """Tile product accumulated in fp32. Layers running in bf16/fp16 multiply on TF32 tensor cores (more mantissa
        than their own inputs carry; the basis values are computed in fp32 and never rounded to bf16); fp32 layers
        get exact fp32 products."""
        if LOWP:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32")
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")

    @triton.jit
    def _fwd_kernel(x_ptr, t0_ptr, inv_h_ptr, c_ptr, y_ptr, n_tok, n_in, n_out,
                    NB: tl.constexpr, K: tl.constexpr, BN: tl.constexpr, BI: tl.constexpr, BO: tl.constexpr,
                    LOWP: tl.constexpr):
        pn, po = tl.program_id(0), tl.program_id(1)
        rn = pn * BN + tl.arange(0, BN)
        ro = po * BO + tl.arange(0, BO)
        acc = tl.zeros((BN, BO), dtype=tl.float32)
        for i0 in range(0, n_in, BI):
            ri = i0 + tl.arange(0, BI)
            mi = ri < n_in
            x = tl.load(x_ptr + rn[:, None] * n_in + ri[None, :], mask=(rn[:, None] < n_tok) & mi[None, :], other=0.0)
            t0 = tl.load(t0_ptr + ri, mask=mi, other=0.0)
            inv_h = tl.load(inv_h_ptr + ri, mask=mi, other=0.0)
            s = (x.to(tl.float32) - t0[None, :]) * inv_h[None, :]  # (BN, BI)
            for b in tl.static_range(NB):
                f = _cardinal(s - b, K)  # basis b of this tile, in registers
                c = tl.load(c_ptr + b * n_in * n_out + ri[:, None] * n_out + ro[None, :],
                            mask=mi[:, None] & (ro[None, :] < n_out),
                            other=0.0)
                acc += _dot(f, c, LOWP)
        tl.store(y_ptr + rn[:, None] * n_out + ro[None, :], acc, mask=(rn[:, None] < n_tok) & (ro[None, :] < n_out))

    @triton.jit
    def _grad_coef_kernel(x_ptr, t0_ptr, inv_h_ptr, gy_ptr, gc_ptr, n_tok, n_in, n_out,
                          K: tl.constexpr, BN: tl.constexpr, BI: tl.constexpr, BO: tl.constexpr, LOWP: tl.constexpr):
        pi, po, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        ri = pi * BI + tl.arange(0, BI)
        ro = po * BO + tl.arange(0, BO)
        mi = ri < n_in
        t0 = tl.load(t0_ptr + ri, mask=mi, other=0.0)
        inv_h = tl.load(inv_h_ptr + ri, mask=mi, other=0.0)
        acc = tl.zeros((BI, BO), dtype=tl.float32)
        for n0 in range(0, n_tok, BN):  # the reduction over tokens stays inside this program: no atomics
            rn = n0 + tl.arange(0, BN)
            mn = rn < n_tok
            x = tl.load(x_ptr + rn[:, None] * n_in + ri[None, :], mask=mn[:, None] & mi[None, :], other=0.0)
            f = _cardinal((x.to(tl.float32) - t0[None, :]) * inv_h[None, :] - b, K)
            f = tl.where(mn[:, None], f, 0.0)
            gy = tl.load(gy_ptr + rn[:, None] * n_out + ro[None, :], mask=mn[:, None] & (ro[None, :] < n_out),
                         other=0.0)
            acc += _dot(tl.trans(f), gy, LOWP)
        tl.store(gc_ptr + b * n_in * n_out + ri[:, None] * n_out + ro[None, :], acc,
                 mask=mi[:, None] & (ro[None, :] < n_out))

    @triton.jit
    def _grad_x_kernel(x_ptr, t0_ptr, inv_h_ptr, c_ptr, gy_ptr, gx_ptr, n_tok, n_in, n_out,
                       NB: tl.constexpr, K: tl.constexpr, BN: tl.constexpr, BI: tl.constexpr, BO: tl.constexpr,
                       LOWP: tl.constexpr):
        pn, pi = tl.program_id(0), tl.program_id(1)
        rn = pn * BN + tl.arange(0, BN)
        ri = pi * BI + tl.arange(0, BI)
        mn, mi = rn < n_tok, ri < n_in
        x = tl.load(x_ptr + rn[:, None] * n_in + ri[None, :], mask=mn[:, None] & mi[None, :], other=0.0)
        t0 = tl.load(t0_ptr + ri, mask=mi, other=0.0)
        inv_h = tl.load(inv_h_ptr + ri, mask=mi, other=0.0)
        s = (x.to(tl.float32) - t0[None, :]) * inv_h[None, :]
        acc = tl.zeros((BN, BI), dtype=tl.float32)
        for b in tl.static_range(NB):
            g = tl.zeros((BN, BI), dtype=tl.float32)  # (gy @ C[b]^T) for this tile
            for o0 in range(0, n_out, BO):
                ro = o0 + tl.arange(0, BO)
                mo = ro < n_out
                gy = tl.load(gy_ptr + rn[:, None] * n_out + ro[None, :], mask=mn[:, None] & mo[None, :], other=0.0)
                c = tl.load(c_ptr + b * n_in * n_out + ri[None, :] * n_out + ro[:, None],
                            mask=mo[:, None] & mi[None, :],
                            other=0.0)  # C[b]^T tile (BO, BI)
                g += _dot(gy, c, LOWP)
            u = s - b
            acc += g * (_cardinal(u, K - 1) - _cardinal(u - 1.0, K - 1))
        tl.store(gx_ptr + rn[:, None] * n_in + ri[None, :], acc * inv_h[None, :], mask=mn[:, None] & mi[None, :])

    @triton.jit
    def _rational_parts(x, a_ptr, b_ptr, rc, mc, M: tl.constexpr, ND: tl.constexpr):
        """P(x), z = x S(x) and Q = 1 + |z| for a (rows, channels) tile; coefficients per channel."""
        p = tl.load(a_ptr + rc * (M + 1) + M, mask=mc, other=0.0)[None, :] + tl.zeros_like(x)
        for jj in tl.static_range(M):
            p = p * x + tl.load(a_ptr + rc * (M + 1) + (M - 1 - jj), mask=mc, other=0.0)[None, :]
        z = tl.zeros_like(x)
        if ND > 0:
            sx = tl.load(b_ptr + rc * ND + (ND - 1), mask=mc, other=0.0)[None, :] + tl.zeros_like(x)
            for jj in tl.static_range(ND - 1):
                sx = sx * x + tl.load(b_ptr + rc * ND + (ND - 2 - jj), mask=mc, other=0.0)[None, :]
            z = sx * x
        return p, z, 1.0 + tl.abs(z)

    @triton.jit
    def _rational_fwd_kernel(x_ptr, a_ptr, b_ptr, r_ptr, n_tok, n_ch, M: tl.constexpr, ND: tl.constexpr,
                             BN: tl.constexpr, BC: tl.constexpr):
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        rc = tl.program_id(1) * BC + tl.arange(0, BC)
        mc = rc < n_ch
        mask = (rn[:, None] < n_tok) & mc[None, :]
        x = tl.load(x_ptr + rn[:, None] * n_ch + rc[None, :], mask=mask, other=0.0).to(tl.float32)
        p, z, q = _rational_parts(x, a_ptr, b_ptr, rc, mc, M, ND)
        tl.store(r_ptr + rn[:, None] * n_ch + rc[None, :], p / q, mask=mask)

    @triton.jit
    def _rational_bwd_kernel(x_ptr, g_ptr, a_ptr, b_ptr, r_ptr, gx_ptr, part_ptr, n_tok, n_ch, M: tl.constexpr,
                             ND: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
        pn = tl.program_id(0)
        rn = pn * BN + tl.arange(0, BN)
        rc = tl.program_id(1) * BC + tl.arange(0, BC)
        mc = rc < n_ch
        mask = (rn[:, None] < n_tok) & mc[None, :]
        offs = rn[:, None] * n_ch + rc[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p, z, q = _rational_parts(x, a_ptr, b_ptr, rc, mc, M, ND)
        r = p / q
        gq = g / q
        share = r * tl.where(z > 0, 1.0, tl.where(z < 0, -1.0, 0.0)) * gq
        dp = tl.zeros_like(x)  # P'(x) by Horner on j a_j
        for jj in tl.static_range(M):
            j = M - jj
            dp = dp * x + j * tl.load(a_ptr + rc * (M + 1) + j, mask=mc, other=0.0)[None, :]
        dz = tl.zeros_like(x)  # z'(x) = sum_j j b_j x^(j-1)
        for jj in tl.static_range(ND):
            j = ND - jj
            dz = dz * x + j * tl.load(b_ptr + rc * ND + (j - 1), mask=mc, other=0.0)[None, :]
        tl.store(gx_ptr + offs, gq * dp - share * dz, mask=mask)
        tl.store(r_ptr + offs, r, mask=mask)
        # this program's share of the coefficient gradients: its own slot, no atomics
        slot = part_ptr + pn * n_ch * (M + 1 + ND) + rc * (M + 1 + ND)
        power = tl.full(x.shape, 1.0, tl.float32)
        for j in tl.static_range(M + 1):
            tl.store(slot + j, tl.sum(tl.where(mask, gq * power, 0.0), axis=0), mask=mc)
            if j < ND:
                tl.store(slot + M + 1 + j, -tl.sum(tl.where(mask, share * power * x, 0.0), axis=0), mask=mc)
            power = power * x
        for j in tl.static_range(M + 1, ND):  # a denominator of higher degree than the numerator
            tl.store(slot + M + 1 + j, -tl.sum(tl.where(mask, share * power * x, 0.0), axis=0), mask=mc)
            power = power * x


def _grid(n: int, block: int) -> int:
    return math.ceil(n / block)


def _low_precision(*tensors: torch.Tensor) -> bool:
    return any(t.dtype in (torch.bfloat16, torch.float16) for t in tensors)


@torch.library.custom_op(f"{_NS}::bspline_kan", mutates_args=())
def bspline_kan(x: torch.Tensor, coef_t: torch.Tensor, t0: torch.Tensor, inv_h: torch.Tensor, order: int
                ) -> torch.Tensor:
    """``sum_{i,b} N_k((x - t0) inv_h - b) coef_t[b, i, :]``: x (N, I), coef_t (B, I, O) -> (N, O) fp32."""
    n, i = x.shape
    nb, _, o = coef_t.shape
    y = torch.empty(n, o, device=x.device, dtype=torch.float32)
    _fwd_kernel[(_grid(n, BLOCK_N), _grid(o, BLOCK_O))](
        x.contiguous(), t0.float().contiguous(), inv_h.float().contiguous(), coef_t.contiguous(), y, n, i, o,
        NB=nb, K=order, BN=BLOCK_N, BI=BLOCK_I, BO=BLOCK_O, LOWP=_low_precision(x, coef_t))
    return y


@bspline_kan.register_fake
def _(x: torch.Tensor, coef_t: torch.Tensor, t0: torch.Tensor, inv_h: torch.Tensor, order: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], coef_t.shape[2], dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::bspline_kan_backward", mutates_args=())
def bspline_kan_backward(gy: torch.Tensor, x: torch.Tensor, coef_t: torch.Tensor, t0: torch.Tensor,
                         inv_h: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, i = x.shape
    nb, _, o = coef_t.shape
    gy, x, coef_t = gy.contiguous(), x.contiguous(), coef_t.contiguous()
    t0, inv_h = t0.float().contiguous(), inv_h.float().contiguous()
    g_coef = torch.empty(nb, i, o, device=x.device, dtype=torch.float32)
    _grad_coef_kernel[(_grid(i, BLOCK_I), _grid(o, BLOCK_O), nb)](
        x, t0, inv_h, gy, g_coef, n, i, o, K=order, BN=BLOCK_N, BI=BLOCK_I, BO=BLOCK_O,
        LOWP=_low_precision(x, coef_t))
    g_x = torch.empty(n, i, device=x.device, dtype=torch.float32)
    _grad_x_kernel[(_grid(n, BLOCK_N), _grid(i, BLOCK_I))](
        x, t0, inv_h, coef_t, gy, g_x, n, i, o, NB=nb, K=order, BN=BLOCK_N, BI=BLOCK_I, BO=BLOCK_O,
        LOWP=_low_precision(x, coef_t))
    return g_x, g_coef


@bspline_kan_backward.register_fake
def _(gy: torch.Tensor, x: torch.Tensor, coef_t: torch.Tensor, t0: torch.Tensor, inv_h: torch.Tensor, order: int
      ) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape, dtype=torch.float32), coef_t.new_empty(coef_t.shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    x, coef_t, t0, inv_h, order = inputs
    ctx.save_for_backward(x, coef_t, t0, inv_h)  # the layer input and weights only: the basis is recomputed
    ctx.order = order


def _backward(ctx, gy: torch.Tensor):
    x, coef_t, t0, inv_h = ctx.saved_tensors
    g_x, g_coef = bspline_kan_backward(gy, x, coef_t, t0, inv_h, ctx.order)
    return g_x.to(x.dtype), g_coef.to(coef_t.dtype), None, None, None


bspline_kan.register_autograd(_backward, setup_context=_setup_context)


# -- GR-KAN ---------------------------------------------------------------------------------------------------------
BLOCK_ROWS, BLOCK_CH = 64, 64


@torch.library.custom_op(f"{_NS}::rational_forward", mutates_args=())
def rational_forward(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """R(x) (N, C) fp32 with per-channel numerator ``a`` (C, m+1) and denominator ``b`` (C, n) coefficients."""
    n, c = x.shape
    r = torch.empty(n, c, device=x.device, dtype=torch.float32)
    _rational_fwd_kernel[(_grid(n, BLOCK_ROWS), _grid(c, BLOCK_CH))](
        x.contiguous(), a.float().contiguous(), b.float().contiguous(), r, n, c, M=a.shape[1] - 1, ND=b.shape[1],
        BN=BLOCK_ROWS, BC=BLOCK_CH)
    return r


@rational_forward.register_fake
def _(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::rational_backward", mutates_args=())
def rational_backward(x: torch.Tensor, g_r: torch.Tensor, a: torch.Tensor, b: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R(x), dL/dx, dL/da (C, m+1), dL/db (C, n)) from dL/dR, as ``lean.rational_backward``."""
    n, c = x.shape
    m1, nd = a.shape[1], b.shape[1]
    blocks = _grid(n, BLOCK_ROWS)
    r = torch.empty(n, c, device=x.device, dtype=torch.float32)
    g_x = torch.empty_like(r)
    partial = torch.empty(blocks, c, m1 + nd, device=x.device, dtype=torch.float32)
    _rational_bwd_kernel[(blocks, _grid(c, BLOCK_CH))](
        x.contiguous(), g_r.contiguous(), a.float().contiguous(), b.float().contiguous(), r, g_x, partial, n, c,
        M=m1 - 1, ND=nd, BN=BLOCK_ROWS, BC=BLOCK_CH)
    sums = partial.sum(0)  # (C, m+1+n): the per-block partial sums, reduced in a fixed order
    return r, g_x, sums[:, :m1].contiguous(), sums[:, m1:].contiguous()


@rational_backward.register_fake
def _(x: torch.Tensor, g_r: torch.Tensor, a: torch.Tensor, b: torch.Tensor
      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    f = torch.float32
    return (x.new_empty(x.shape, dtype=f), x.new_empty(x.shape, dtype=f), a.new_empty(a.shape, dtype=f),
            b.new_empty(b.shape, dtype=f))
