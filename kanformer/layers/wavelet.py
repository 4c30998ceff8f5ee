"""Wavelet basis (Wav-KAN, Bozorgasl & Chen 2024): Mexican hat, Morlet or derivative-of-Gaussian wavelets.

Legend: N tokens, I inputs, W = ``num_wavelets`` per input.

``f_w(x_i) = psi((x_i - t_iw) / s_iw)`` with a learnable translation t and scale s (kept positive as exp of a
learnable log-scale) for each input and wavelet. Wav-KAN gives every *edge* its own (t, s), which forces an
(N, O, I) tensor; here (t, s) belong to the input feature and the output mixes W wavelets per input through
the coefficient matmul, so the layer keeps the one-matmul form of every other basis (a family of W learnable
wavelets per input instead of one per edge).

Mother wavelets (u = (x - t) / s):
  mexican_hat  (1 - u^2) exp(-u^2 / 2)       (Ricker; normalisation absorbed by the coefficients)
  morlet       cos(5 u) exp(-u^2 / 2)         (real Morlet, omega_0 = 5)
  dog          -u exp(-u^2 / 2)               (first derivative of a Gaussian)

Out-of-range rule: wavelets decay away from their translations, so far inputs are carried by the SiLU base
branch (on by default, as in Wav-KAN). The Gaussian factor is cut to exactly zero beyond 10 scales (|u| > 10, below
e^-50 ~ 1.9e-22) on every path: its tail otherwise reached fp32's subnormal range, or, in the compiled loops' clamped
exponential, stayed at ~1e-38, and its products with a training step's gradients were subnormal, each a microcode
assist on CPUs. With scales a third of their initial ones (many inputs beyond 13 scales) and the bench's upstream
gradient scaled by 1e-5 (d 384, 2048 tokens, an Intel Xeon, one process timing the two, 6 rounds), the FFN step took
1.40x (fp32) / 1.53x (bf16 autocast) its time at the initial scales; cut, 0.99x / 0.97x. At the initial scales (no
input out there) the cut costs its comparison and select: fp32 0.995x the uncut form's step, bf16 1.02 - 1.06x (four
runs; the bf16 step's loops weigh more beside its products). Its multiplication by the comparison cost the same; the
exponential's argument floored beside the cut, 1.18x. The cut also keeps the compiled loops' exponential unclamped
(``loop_exp(bounded=True)``: an argument out of its range only where the cut drops the value): the forward's compiled
loop (d 128, 1024 tokens, 8 wavelets, the SiLU branch beside them; one process timing both, 30 interleaved rounds,
2-core Zen 5) 0.78x its time with the clamp, the same values bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .bspline import _check_grid_range
from .kan import KANFFN, Basis, register_basis
from .registry import check_positive_int, register_ffn
from .vecmath import loop_exp

# FLOPs per wavelet: u = (x - t) * exp(-log s) (2; the exp is per feature, not per token), u^2 (1),
# exp(-u^2/2) (2), then the wavelet's own factor.
_WAVELET_FLOPS = {"mexican_hat": 5 + 2, "morlet": 5 + 3, "dog": 5 + 2}
_CUT = 100.0  # u^2 beyond which the Gaussian factor exp(-u^2 / 2) is exactly zero (below e^-50)


@register_basis("wavelet")
class WaveletBasis(Basis):
    per_input = ("translation", "log_scale")
    default_base = True

    def __init__(self, in_features: int, *, num_wavelets: int = 8, wavelet: str = "mexican_hat",
                 grid_range: Sequence[float] = (-2.0, 2.0)) -> None:
        super().__init__(in_features)
        self.num_wavelets = check_positive_int("num_wavelets", num_wavelets)
        if wavelet not in _WAVELET_FLOPS:
            raise ValueError(f"Unknown wavelet {wavelet!r}. Available: {', '.join(sorted(_WAVELET_FLOPS))}")
        self.wavelet = wavelet
        self.grid_range = _check_grid_range(grid_range)
        self.translation = nn.Parameter(torch.empty(in_features, num_wavelets))  # (I, W)
        self.log_scale = nn.Parameter(torch.empty(in_features, num_wavelets))  # (I, W)
        self.reset_parameters()

    @classmethod
    def n_basis_for(cls, *, num_wavelets: int, **_: Any) -> int:
        return num_wavelets

    @classmethod
    def flops_per_element(cls, *, num_wavelets: int, wavelet: str, **_: Any) -> int:
        return num_wavelets * _WAVELET_FLOPS[wavelet]

    @classmethod
    def params_for(cls, in_features: int, *, num_wavelets: int, **_: Any) -> int:
        return 2 * in_features * num_wavelets

    @property
    def n_basis(self) -> int:
        return self.num_wavelets

    def reset_parameters(self) -> None:
        lo, hi = self.grid_range
        w = self.num_wavelets
        with torch.no_grad():
            self.translation.copy_(torch.linspace(lo, hi, w) if w > 1 else torch.full((1,), (lo + hi) / 2))
            self.log_scale.fill_(math.log((hi - lo) / max(w - 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv_scale = torch.exp(-self.log_scale).to(x.dtype)  # (I, W)
        u = (x.unsqueeze(-1) - self.translation.to(x.dtype)) * inv_scale  # (N, I, W)
        u2 = u.square()
        return self._psi(u, u2, torch.where(u2 > _CUT, 0.0, torch.exp(-0.5 * u2)))

    def _psi(self, u: torch.Tensor, u2: torch.Tensor, gauss: torch.Tensor) -> torch.Tensor:
        """The mother wavelet at u, given u^2 and exp(-u^2 / 2)."""
        if self.wavelet == "mexican_hat":
            return (1 - u2) * gauss
        if self.wavelet == "morlet":
            return torch.cos(5 * u) * gauss
        return -u * gauss  # dog

    # -- lean path (layers/lean.py): recomputed in the backward, with analytic gradients -----------------------------
    # The lean forms work wavelet by wavelet on (N, I) rows, with the translations and inverse scales laid out
    # wavelet-major, (W, I): each wavelet's row for all inputs is contiguous. Read from the (I, W) parameters inside a
    # compiled loop they were strided gathers, and the parameter gradients' reductions over tokens ran as 8-wide
    # vectors over W: the wavelet FFN step took 1.54 - 1.61x the GELU MLP's against 1.30 - 1.33x in this layout (d 384,
    # 2048 tokens; its parameter-gradient graph also needs fixed widths: the compiled helpers are static but for the
    # token count, dispatch.per_token).
    def _term(self, x: torch.Tensor, t: torch.Tensor, inv_scale: torch.Tensor, slope: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(psi(u), d psi(u) / dx) with u = (x - t) / s, for one wavelet's per-input t and 1/s: rows (I,) against x
        (N, I), or columns (I, 1) against input-major x (I, N). Without ``slope``, (psi(u), None): eager code runs
        every operation written (a compiled graph drops the unused ones itself)."""
        inv_scale = inv_scale.to(x.dtype)
        u = (x - t.to(x.dtype)) * inv_scale
        u2 = u.square()
        # inline in a compiled CPU loop, unclamped: the cut drops every value whose argument is out of its range
        gauss = torch.where(u2 > _CUT, 0.0, loop_exp(-0.5 * u2, bounded=True))
        if not slope:
            return self._psi(u, u2, gauss), None
        if self.wavelet == "mexican_hat":
            d_psi = (u2 - 3) * u
        elif self.wavelet == "morlet":
            d_psi = -(5 * torch.sin(5 * u) + u * torch.cos(5 * u))
        else:  # dog
            d_psi = u2 - 1
        return self._psi(u, u2, gauss), d_psi * gauss * inv_scale

    def lean_features(self, x: torch.Tensor) -> torch.Tensor:
        t, inv_scale = self.fused_state_from(self.translation, self.log_scale)
        return torch.stack([self._term(x, t[j], inv_scale[j], slope=False)[0] for j in range(self.num_wavelets)], dim=1)

    def fused_state(self) -> tuple[torch.Tensor, ...]:
        """The translations and inverse scales wavelet-major, (W, I) each: wavelet j's row for all inputs is contiguous
        (their gradients reach the parameters through ``lean_params``). Two arguments of the compiled graphs, not 2W
        rows of their own: each graph argument costs its guards, checks and pad on every call (see ``lean_params``).
        A generation step's repeated call does not make them again: the kept call (``few_tokens.recall``) runs the graph
        of few tokens on the arguments it was last given."""
        with torch.no_grad():
            return self.fused_state_from(self.translation, self.log_scale)

    def lean_spec(self) -> str:
        return f"{self.name}|{self.in_features}|num_wavelets={self.num_wavelets}|wavelet={self.wavelet!r}"

    def fused_state_from(self, translation: torch.Tensor, log_scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Translations and inverse scales, wavelet-major (W, I), from the (I, W) tensors ``lean_params`` gives."""
        return translation.T.contiguous(), torch.exp(-log_scale).T.contiguous()

    def fused_term(self, x: torch.Tensor, j: int, *state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        translation, inv_scale = state
        return self._term(x, translation[j], inv_scale[j])

    def lean_params(self) -> tuple[torch.Tensor, ...]:
        """The translations and log-scales as they are, (I, W): the parameters themselves, so the FFN's autograd graph
        has no copy and transpose of them to run each step (``lean_params_backward`` returns their gradients in this
        layout, transposed inside its compiled graph). Against (W, I) copies here and 2W state rows (``fused_state``),
        same-process A/Bs of the wavelet FFN step, 2-core CPU, fp32: 0.91x at d 128 / 16 tokens, where the fixed costs
        of a call show; 0.97 - 1.07x at 1024 tokens (five runs, median 0.975); 1.00 - 1.01x at d 384 / 2048 tokens
        (three runs). Under bf16 autocast: 0.975x at d 128 / 1024 tokens, 0.99 / 0.99x at d 384 (one and two runs)."""
        return self.translation, self.log_scale

    def lean_params_backward(self, x_t: torch.Tensor, g_t: torch.Tensor, translation: torch.Tensor,
                             log_scale: torch.Tensor, g_x: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """With P_w = g_w df_w/dx per wavelet, u = (x - t) / s: dL/dx = sum_w P_w, dL/dt_w = -sum_n P_w,
        dL/dlog s_w = -sum_n g_w psi'(u) u = -sum_n P_w (x - t_w). Input-major (the Basis contract): ``x_t`` (I, N),
        ``g_t`` (W, I, N), dL/dx returned (I, N), added to ``g_x`` where given; parameters and their gradients (I, W),
        as ``lean_params`` gives them; last, the wavelets' values (I, N) each, of the same pass. Each input's row is
        one loop over its tokens that makes dL/dx and the 2W sums together (and the values where they are used).
        Token-major, (N, I) per wavelet, the sums were reductions down columns, which the compiler ran as a loop of
        their own over the W P_w it had stored first: the wavelet FFN's backward wrote and read W extra (N, I) tensors
        (this helper with the gradient's matmul, d 384 / 2048 tokens, fp32: 27.6 against 21.5 ms; layer 2, 176
        inputs: 21.4 against 18.5; bf16: 13.1 against 11.5). The compiler stored them so too where the base branch's
        dL/dx was added to this sum afterwards rather than taken as its start (``g_x``): one layer's backward compiled
        alone (d 128, 1024 tokens, 56 inputs, the weight gradient's features included), 0.59 ms in this form against
        0.70 with the share added afterwards and the values from a second evaluation of the basis (one timing each)."""
        inv_scale = torch.exp(-log_scale)
        g_tr, g_log_scale, values = [], [], []
        for j in range(self.num_wavelets):
            t = translation[:, j: j + 1]  # (I, 1): a scalar per row
            value, slope = self._term(x_t, t, inv_scale[:, j: j + 1])
            p = g_t[j] * slope  # (I, N)
            values.append(value)
            g_x = p if g_x is None else g_x + p
            g_tr.append(-p.sum(1))
            g_log_scale.append(-(p * (x_t - t)).sum(1))
        return g_x, torch.stack(g_tr, dim=1), torch.stack(g_log_scale, dim=1), values


@register_ffn("wavelet")
class WaveletFFN(KANFFN):
    basis_cls = WaveletBasis
