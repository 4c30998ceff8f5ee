"""exp, sigmoid and tanh for the fused path's compiled CPU loops, written as arithmetic the compiler inlines.

In a compiled CPU loop, ``torch.exp`` (and the sigmoid built on it) is a call into the vector math library (Sleef).
Under the platform's calling convention every vector register is caller-saved, so a loop body that keeps many values
live (a layer's nine features, their gradients, the hoisted constants) saves and reloads them around each call. The
B-spline layer-1 backward loop of a d 128 FFN (1024 tokens; the generated loop alone, one thread, 2-core development
CPU) took 0.93 - 1.19 ms as generated and 0.43 - 0.51 ms with its one sigmoid taken out; RBF's, with three calls,
1.45 - 1.82 ms, and 0.87 - 0.91 ms with the three in an inline form like this one (a degree-6 polynomial, the same
exponent bits). In the FFN step: docs/speed_history.md, the paragraph marked ¶.

``loop_exp`` is Cephes' ``expf``: x = k ln2 + r (k the nearest integer to x / ln2, ln2 in two parts, Cody-Waite), a
degree-7 polynomial in r, and 2^k made in the exponent bits. At most 0.99 ulp from the exact exponential over 5
million points of [-87.3, 88] (torch.exp: 0.56; the test bounds it); inputs are clamped to that range, so results below
~1.2e-38 are that value instead of 0 or a subnormal, and above e^88 (~1.7e38) that value instead of inf (NaN stays
NaN). Everywhere else
(eager, another device, another dtype, the reference path) these are torch's own. The polynomial's inner degree-5
part is evaluated by Estrin's scheme (0.993 ulp at most over those points; Horner's, 0.982): a shorter chain of
dependent operations in the loops that take it. The FFN step x the MLP's, 2-core Zen 5, a probe timing both in one
process, pairs of processes: RBF at d 384 bf16 1.117 / 1.079 / 1.115 / 1.136 / 1.144 against Horner's 1.131 / 1.143
/ 1.138 / 1.137 / 1.142 (the B-spline level: medians 1.058 and 1.059); d 384 fp32, two pairs, B-spline 0.967 / 0.957
against 1.004 / 1.039, RBF 0.982 / 1.012 against 1.026 / 1.020: small, and in this machine's noise, but not
against it. k is rounded by one instruction (``round``; ``floor(x / ln2 + 1/2)`` took an addition and a floor, and
differs only at halves, where either r is in the polynomial's range): the wavelet's forward loop (wavelet.py) 0.97x.

``loop_tanh`` is Cephes' ``tanhf``: for |x| > 0.625, (1 - e^(-2|x|)) / (1 + e^(-2|x|)) with the sign of x
(``loop_exp``), else an odd polynomial of degree 11. Within 9e-8 of the exact value over 2 million points of [-12,
12], 1.5e-7 relative (the test bounds it); +-1 at the infinities, NaN stays NaN. In the Chebyshev and Jacobi layers'
fused loops it replaced the library's tanh (a call, with every vector register saved and reloaded around it): the FFN
step, d 384, 2048 tokens, bf16 autocast, 2-core Zen 5, same-process A/B: Chebyshev 1.14 -> 1.08x the MLP's, Jacobi
1.13 -> 1.06x; fp32 level at d 384 (0.86 both ways), 0.95 -> 0.91 and 0.93 -> 0.91 at d 128; bf16 level at d 768. The
compiler still stores the reused tanh apart (about 50 operations, its threshold for inlining), in a loop body that
touches no bf16 value, so those layer-1 loops keep fp32's vector width (``python -m benchmarks.profile_ffn
--loop-widths``); a shorter form without the polynomial (1e-7 absolute, not relative, near 0) measured no clear gain
(1.10 -> 1.09, 1.09 -> 1.05). |x| is capped at 10 before the exponential (a comparison and a select), which then
takes no clamp (two NaN-propagating extrema): the same bits, and a compiled loop of Chebyshev's degree-5 features
with the SiLU branch (d 128, 1024 tokens; one process timing both, 30 interleaved rounds, 2-core Zen 5) 0.97x its time.
"""

from __future__ import annotations

import torch

_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = hi + lo, hi with few mantissa bits so k * hi is exact
_LO, _HI = -87.3, 88.0  # 2^k stays a normal number: k in [-126, 127]
# Cephes expf: exp(r) ~ 1 + r + r^2 (c0 + c1 r + ... + c5 r^5) on |r| <= ln2 / 2
_C = (5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3, 1.3981999507e-3, 1.9875691500e-4)
# Cephes tanhf: tanh(x) ~ x + x^3 (t0 + t1 x^2 + ... + t4 x^8) on |x| <= 0.625
_T = (-3.33332819422e-1, 1.33314422036e-1, -5.37397155531e-2, 2.06390887954e-2, -5.70498872745e-3)
_TANH_POLY = 0.625
_TANH_ONE = 10.0  # |x| beyond which (1 - e^(-2|x|)) / (1 + e^(-2|x|)) is 1 in fp32


def inline(x: torch.Tensor) -> bool:
    """Whether ``x`` is evaluated inside a compiled CPU fp32 graph, where the inline forms serve."""
    return torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32


def loop_exp(x: torch.Tensor, bounded: bool = False) -> torch.Tensor:
    """e^x: inline arithmetic in a compiled CPU fp32 graph (see the module's docstring), else ``torch.exp``.
    ``bounded``: the caller keeps x within [-87.3, 88] (or NaN), so the clamp is left out (in the compiled loop it is
    two NaN-propagating max / min of three instructions each); outside that range the result is garbage."""
    if not inline(x):
        return torch.exp(x)
    if not bounded:
        x = x.clamp(_LO, _HI)
    k = torch.round(x * _LOG2E)  # the nearest integer: one rounding instruction, as floor(x log2(e) + 1/2) is two
    r = x - k * _LN2_HI - k * _LN2_LO
    # the polynomial by Estrin's scheme, in pairs of terms, not Horner's one term after another: its chain of dependent
    # operations is 6 deep rather than 10 (the loops' compiler forms no multiply-adds and keeps the order as written)
    r2 = r * r
    r4 = r2 * r2
    p = (_C[0] + _C[1] * r) + r2 * (_C[2] + _C[3] * r) + r4 * (_C[4] + _C[5] * r)
    p = p * r2 + r + 1.0
    return p * ((k.to(torch.int32) + 127) << 23).view(torch.float32)  # 2^k from its exponent bits


def loop_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + e^-x) with :func:`loop_exp` in a compiled CPU fp32 graph, else ``torch.sigmoid``."""
    return 1 / (1 + loop_exp(-x)) if inline(x) else torch.sigmoid(x)


def loop_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x): inline arithmetic in a compiled CPU fp32 graph (see the module's docstring), else ``torch.tanh``."""
    if not inline(x):
        return torch.tanh(x)
    a = x.abs()
    # |x| capped at 10 (tanh is 1 in fp32 from ~9.0), so the exponential's argument stays in range unclamped
    e = loop_exp(-2 * torch.where(a > _TANH_ONE, _TANH_ONE, a), bounded=True)
    outer = torch.copysign((1 - e) / (1 + e), x)
    z = x * x
    p = _T[4]
    for c in reversed(_T[:4]):
        p = p * z + c
    return torch.where(a > _TANH_POLY, outer, p * z * x + x)
