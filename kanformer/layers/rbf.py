"""Gaussian radial basis (FastKAN, Li 2024, "Kolmogorov-Arnold Networks are Radial Basis Function Networks").

Legend: N tokens, I inputs, G = ``num_grids`` centres.

``f_g(x) = exp(-((LN(x) - c_g) / h)^2)`` with G centres c_g = lo + g h evenly spaced over ``grid_range`` and width h
equal to their spacing, cut to exactly zero more than sqrt(50) ~ 7.1 widths from the centre (below e^-50 ~ 1.9e-22,
which carries nothing beside a feature of order 1 in fp32). Uncut, the tail reaches fp32's subnormal range, where CPU
arithmetic takes microcode assists (~100x slower); cut at e^-80 the values stayed normal, but their products with a
training step's gradients (1e-5 and less) did not (see ``fused_terms``). Every form measures the distance in widths as
d_g = (x - lo) / h - g, so they agree to rounding. FastKAN shows these Gaussians approximate the cubic B splines of
Liu et al. at a fraction of the cost.

Out-of-range rule: the input is layer-normalised per token before the Gaussians (FastKAN's LayerNorm), so the
centres see unit-scale features; the SiLU base branch (on by default) sees the raw input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bspline import _check_grid_range
from .flops import LAYERNORM_FLOPS
from .kan import KANFFN, Basis, register_basis
from .registry import check_positive_int, register_ffn
from .vecmath import inline, loop_exp

_CUT = 50.0  # squared distances (in widths) beyond which a Gaussian is exactly zero
_ROOT_CUT = math.sqrt(_CUT)
# fused_terms' distance from the nearer outer centre is floored here: below -sqrt(50), where every centre is cut, and
# above -sqrt(87.3), so exp(-t^2) and exp(2t) stay in loop_exp's range without its clamp (``bounded=True``)
_T_FLOOR = -9.0


def _square_cut(d: torch.Tensor) -> torch.Tensor:
    """d^2, and +inf where the Gaussian is cut (exp(-inf) = 0, gradient 0)."""
    d2 = d * d
    return torch.where(d2 > _CUT, torch.inf, d2)


@register_basis("rbf")
class RBFBasis(Basis):
    default_base = True
    lean_pre_stats = 2  # the LayerNorm's mean and 1 / std per token

    def __init__(self, in_features: int, *, num_grids: int = 8, grid_range: Sequence[float] = (-2.0, 2.0),
                 layernorm: bool = True) -> None:
        super().__init__(in_features)
        self.num_grids = check_positive_int("num_grids", num_grids)
        lo, hi = _check_grid_range(grid_range)
        self.register_buffer("centers", torch.linspace(lo, hi, num_grids))  # (G,): c_g = lo + g h
        self.lo = lo
        self.inv_width = (num_grids - 1) / (hi - lo) if num_grids > 1 else 1.0 / (hi - lo)
        self.norm = nn.LayerNorm(in_features) if layernorm else None

    @classmethod
    def n_basis_for(cls, *, num_grids: int, **_: Any) -> int:
        return num_grids

    @classmethod
    def flops_per_element(cls, *, num_grids: int, layernorm: bool, **_: Any) -> int:
        # per centre: subtract, scale, square, negate, exp = 5
        return (LAYERNORM_FLOPS if layernorm else 0) + 5 * num_grids

    @classmethod
    def params_for(cls, in_features: int, *, layernorm: bool, **_: Any) -> int:
        return 2 * in_features if layernorm else 0

    @property
    def n_basis(self) -> int:
        return self.num_grids

    def reset_parameters(self) -> None:
        if self.norm is not None:
            self.norm.reset_parameters()

    def select_inputs(self, keep: torch.Tensor) -> None:
        if self.norm is not None:
            raise ValueError("rbf normalises each token across all its inputs (LayerNorm), so dropping inputs "
                             "changes the others; prune edges instead, or build with layernorm=False")
        self.in_features = len(keep)

    def out_of_range(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised inputs more than one centre spacing beyond the outer centres (every RBF is < e^-1 there)."""
        if self.norm is not None:
            x = F.layer_norm(x, (self.in_features,), self.norm.weight.to(x.dtype), self.norm.bias.to(x.dtype),
                             self.norm.eps)
        spacing = 1.0 / self.inv_width
        return (x < self.centers[0] - spacing) | (x > self.centers[-1] + spacing)

    def widths(self, x: torch.Tensor) -> torch.Tensor:
        """(x - lo) / h, the distance in widths from the first centre: every form takes centre g's as this minus g."""
        return (x - self.lo) * self.inv_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            w, b = self.norm.weight.to(x.dtype), self.norm.bias.to(x.dtype)
            x = F.layer_norm(x, (self.in_features,), w, b, self.norm.eps)  # (N, I)
        steps = torch.arange(self.num_grids, dtype=x.dtype, device=x.device)
        d = self.widths(x).unsqueeze(-1) - steps  # (N, I, G)
        return torch.exp(-_square_cut(d))


    # -- lean path (layers/lean.py): the LayerNorm as its pre-transform (recomputed in the backward), then (N, B, I)
    # Gaussians
    def lean_pre_params(self) -> tuple[torch.Tensor, ...] | None:
        return None if self.norm is None else (self.norm.weight, self.norm.bias)

    def lean_pre(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 stats: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """LayerNorm(x) and its per-token statistics (mean, 1 / std: F.layer_norm's, biased variance with eps
        inside), which the backward takes back instead of computing them again (8 bytes per token). ``x`` may carry
        zero inputs beyond ``in_features`` (the fused path's padding, with zero weight and bias there): the
        statistics are over the first ``in_features``."""
        if stats is None:
            n_in, pad = self.in_features, x.shape[-1] - self.in_features
            mean = x.sum(-1, keepdim=True) / n_in
            d = x - mean
            var = ((d * d).sum(-1, keepdim=True) - pad * mean * mean) / n_in  # each zero input adds mean^2
            stats = (mean, torch.rsqrt(var + self.norm.eps))
        mean, rstd = stats
        return (x - mean) * rstd * weight.to(x.dtype) + bias.to(x.dtype), stats

    def lean_pre_backward(self, x: torch.Tensor, stats: tuple[torch.Tensor, ...], g_u: torch.Tensor,
                          weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """dL/dx, dL/dweight, dL/dbias of the LayerNorm from dL/du (the standard analytic form; means over the first
        ``in_features``: ``g_u`` and ``weight`` are zero on padded inputs)."""
        mean, rstd = stats
        n_in = self.in_features
        x_hat = (x - mean) * rstd
        g_hat = g_u * weight.to(x.dtype)
        g_x = rstd * (g_hat - g_hat.sum(-1, keepdim=True) / n_in
                      - x_hat * (g_hat * x_hat).sum(-1, keepdim=True) / n_in)
        return g_x, (g_u * x_hat).sum(0), g_u.sum(0)

    def lean_features(self, u: torch.Tensor) -> torch.Tensor:
        out = u.new_empty(u.shape[0], self.num_grids, u.shape[1])  # (N, G, I)
        d0 = self.widths(u)
        for j in range(self.num_grids):
            torch.exp(-_square_cut(d0 - j), out=out[:, j])
        return out

    # fused mode (layers/lean.py): every centre's value and slope in one expression, with two exponentials per element
    def fused_state(self) -> tuple[torch.Tensor, ...]:
        return ()

    def _nearer(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``fused_terms``' d0 = (u - lo) / h, whether u is nearer the first centre than the last, and t, the distance
        in widths from the nearer outer centre counted towards the others, floored at -9."""
        n = self.num_grids
        d0 = self.widths(u)
        up = d0 <= (n - 1) / 2  # nearer the first centre: count up from it
        t = torch.where(up, d0, (n - 1) - d0)
        return d0, up, torch.where(t < _T_FLOOR, _T_FLOOR, t)  # every centre cut below -9; NaN stays NaN

    def fused_kept(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """In a compiled CPU graph, the recurrence's ratio exp(2t) (``fused_terms``), one fp32 value an input, which
        the backward then reads instead of computing it (elsewhere: none). Computed again, the backward's compiled
        loops took both exponentials a second time, and the compiler stored the chain's seven values per input in
        fp32 between its loops (each too large to inline where several loops read it; docs/speed.md, *RBF's loops at
        the demo's width*); with the ratio read, they store no chain. The same values, bit for bit. FFN step x the
        MLP's, one process timing both (8 interleaved rounds), processes alternating with the code before, 2-core
        Zen 5: d 384, 2048 tokens, bf16 autocast 1.075 - 1.133 (three runs) against 1.175 - 1.222 (five); fp32 0.997 /
        1.006 against 1.037 - 1.112 (four); d 128, 1024 tokens, fp32 1.188 / 1.283 against 1.361 - 1.516 (four); d 768,
        4096 tokens, bf16 1.005 / 1.026 against 1.070 / 1.087. Keeping exp(-t^2) as well measured no faster (bf16 1.070
        - 1.120, fp32 0.977 - 1.020, d 128 1.172 - 1.257) for twice the bytes (docs/speed.md, *RBF keeps its
        ratio*). The cost: 4 bytes an input of each layer saved for the backward (the FFN's saved activations at d 384
        0.33x the MLP's in fp32, 0.51x in bf16, where they were 0.16x and 0.24x), and a store of them in a forward
        without autograd, which measured no slower (its forward alone at d 384: bf16 0.976 - 1.023x the MLP's against
        1.019 - 1.061, fp32 1.040 / 1.048 against 1.123 / 1.131)."""
        return (loop_exp(2 * self._nearer(u)[2], bounded=True),) if inline(u) else ()

    def fused_terms(self, u: torch.Tensor, kept: tuple[torch.Tensor, ...] = ()
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(f_g(u), f_g'(u)) for every centre, the Gaussians by a recurrence: with t the distance in widths from the
        nearer outer centre, counted towards the others, the i-th centre from it has exp(-(t - i)^2) = exp(-(t - i +
        1)^2) exp(2t) e^(1 - 2i), two exponentials per element instead of G. t <= (G - 1) / 2, so every step's value
        is one of the Gaussians (at most 1, no overflow), and where t < 0 they fall from the first, which is
        underflow-safe: a value that reaches zero is followed by smaller ones. Each value is then cut where the direct
        form cuts it. fp32 values agree with the direct form to ~1e-5 relative at the cut, ~1e-6 near the centres.
        Same-process A/Bs of the FFN step against one exponential per centre (2-core CPU): d 384, 2048 tokens 0.91 -
        0.93x in bf16 (four runs), 0.98 in fp32 (two); d 768, 4096 tokens, bf16 0.98; d 128, 1024 tokens, fp32 0.99.
        Each step multiplies by ``ratio * e^(1 - 2i)``, made apart from the chain: the chain is one product deep a
        step, not two, and the compiled loop waits less on it (Zen 5, d 384 bf16, the FFN step x the MLP's, four
        pairs of processes: 1.107 - 1.140 against 1.139 - 1.163 with ``(v * ratio) * e^(1 - 2i)``; a tree of the
        ratio's powers gained nothing more, 1.114 / 1.150). Each slope likewise multiplies the value by ``d * -2 / h``,
        made apart from it (four pairs more: 1.105 - 1.130 against 1.135 - 1.173 with ``(value * d) * -2 / h``).

        Fewer operations an element, for CPUs whose products are fast enough for the loops to weigh (an Intel Xeon
        with AMX): the cut is taken on t, the i-th centre from the nearer end cut where t < i - sqrt(cut) (t <= 3.5,
        so |t - i| > sqrt(cut) only there), one comparison a centre instead of d, d^2 and a comparison; t is floored at
        -9, below which every centre is cut, so both exponentials' arguments stay in range and lose their clamps
        (``loop_exp(bounded=True)``); and each slope is ``value * (d0 * -2/h - j * -2/h)``, d0 scaled once. On that
        Xeon, d 384, 2048 tokens, bf16 autocast, one process timing both forms (8 rounds): the FFN step 1.17x the
        MLP's against 1.29x, its compiled loops 10.3 against 11.0 ms a step (profiler); fp32 level (1.18 both).

        Each step's cut is taken on the previous value before its product, not on the product: a product is then
        exactly zero or at least e^-cut. Cut after it, the chain ran on past the cut into fp32's subnormal range (one
        subnormal product or two for every element more than ~2.3 widths outside the outer centres: with 8 centres the
        last step's exp(-(t - 7)^2) is subnormal for t in (-3.2, -2.3)), which Intel CPUs take in microcode assists.
        Same values, bit for bit (eager and compiled, fp32 / bf16 / fp64). On that Xeon, the same process timing both
        (6 rounds), d 384, 2048 tokens: with the LayerNorms' gains at 1 (the benchmarks' inputs, few elements out
        there) level, fp32 0.98x, bf16 1.01x; with gains of 3 (fp32) / 2 (bf16), the FFN step took 1.11x / 1.17x its
        time at gain 1 cut after the product, 0.99x / 1.00x cut before. The cut is at e^-50, not e^-80 as it was:
        values near e^-80 times a training step's gradients (the bench's upstream gradient scaled by 1e-5) still made
        subnormal products in the backward; gains of 3, fp32, same process: 1.05x the step at gain 1 cut at e^-80,
        1.00x at e^-50."""
        n = self.num_grids
        d0, up, t = self._nearer(u)
        v = loop_exp(-(t * t), bounded=True)  # inline in a compiled CPU loop
        ratio = kept[0] if kept else loop_exp(2 * t, bounded=True)  # the forward's (``fused_kept``), where it kept it
        chain = [torch.where(t < -_ROOT_CUT, 0.0, v)]
        for i in range(1, n):  # the i-th centre from the nearer end is cut where t < i - sqrt(cut) (|t - i| beyond):
            # the cut taken on the previous value before the product, so a product is exactly zero or at least
            # e^-cut, never subnormal; each step's factor made apart from the chain (one product a step)
            chain.append(torch.where(t < i - _ROOT_CUT, 0.0, chain[-1]) * (ratio * math.exp(1 - 2 * i)))
        scale = -2 * self.inv_width
        d_scaled = d0 * scale
        terms = []
        for j in range(n):
            value = torch.where(up, chain[j], chain[n - 1 - j])
            terms.append((value, value * (d_scaled - j * scale)))
        return terms

    def lean_input_grad(self, u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``sum_g g[:, g] f_g'(u)`` with one exponential per centre, not ``fused_terms``' recurrence: run eagerly,
        each step of the recurrence is a pass over (N, I) of its own (with it, the eager lean FFN step took 1.06x as
        long in a same-process A/B, d 384, fp32)."""
        d0 = self.widths(u)
        acc = torch.zeros_like(u)
        for j in range(self.num_grids):
            d = d0 - j
            acc += g[:, j] * torch.exp(-_square_cut(d)) * d
        return acc * (-2 * self.inv_width)

    def lean_features_and_input_grad(self, u: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features, and the input gradient from their own Gaussians (f_g'(u) = f_g(u) (d0 - g) (-2 / h)): G
        exponentials an element for both, not 2G."""
        feats = self.lean_features(u)  # (N, G, I)
        steps = torch.arange(self.num_grids, dtype=u.dtype, device=u.device)[:, None]  # (G, 1)
        d = self.widths(u).unsqueeze(1) - steps  # (N, G, I)
        return feats, (g * feats * d).sum(1) * (-2 * self.inv_width)


@register_ffn("rbf")
class RBFFFN(KANFFN):
    basis_cls = RBFBasis
