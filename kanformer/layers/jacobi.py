"""Jacobi polynomial basis P_n^(alpha, beta) (JacobiKAN), by the three-term recurrence.

Legend: N tokens, I inputs, D = ``degree``; B = D + 1 polynomials per input.

With ``t = tanh(x)``, ``P_0 = 1``, ``P_1 = ((alpha - beta) + (alpha + beta + 2) t) / 2`` and, for n >= 2
(Abramowitz & Stegun 22.7.1, Szego 1975 eq. 4.5.1), ``P_n = (A_n t + B_n) P_{n-1} - C_n P_{n-2}`` with
``c = 2n + alpha + beta`` and
``A_n = (c - 1) c (c - 2) / d``, ``B_n = (c - 1)(alpha^2 - beta^2) / d``,
``C_n = 2 (n + alpha - 1)(n + beta - 1) c / d``, ``d = 2 n (n + alpha + beta)(c - 2)``.
alpha = beta = -1/2 gives Chebyshev (up to scale), alpha = beta = 0 Legendre.

Out-of-range rule: tanh squashes every input into (-1, 1), the polynomials' natural domain.
"""

from __future__ import annotations

from typing import Any

import torch

from .kan import KANFFN, TanhPolynomialBasis, register_basis
from .registry import check_positive_int, register_ffn
from .vecmath import loop_tanh


def jacobi_recurrence(degree: int, alpha: float, beta: float) -> list[tuple[float, float, float]]:
    """(A_n, B_n, C_n) for n = 2..degree."""
    coeffs = []
    for n in range(2, degree + 1):
        c = 2 * n + alpha + beta
        d = 2 * n * (n + alpha + beta) * (c - 2)
        coeffs.append(((c - 1) * c * (c - 2) / d, (c - 1) * (alpha**2 - beta**2) / d,
                       2 * (n + alpha - 1) * (n + beta - 1) * c / d))
    return coeffs


@register_basis("jacobi")
class JacobiBasis(TanhPolynomialBasis):
    def __init__(self, in_features: int, *, degree: int = 4, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__(in_features)
        self.degree = check_positive_int("degree", degree, minimum=0)
        for name, v in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(v, int | float) and v > -1):
                raise ValueError(f"{name} must be a number > -1, got {v!r}")
        self.alpha, self.beta = float(alpha), float(beta)
        self._recurrence = jacobi_recurrence(degree, self.alpha, self.beta)

    @classmethod
    def flops_per_element(cls, *, degree: int, **_: Any) -> int:
        # tanh; P_1: 1 mul + 1 add; each n >= 2: (A t + B) P_{n-1} - C P_{n-2}: 3 mul, 1 add, 1 sub
        return 1 + (2 if degree >= 1 else 0) + 5 * max(degree - 1, 0)

    def _polynomials(self, t: torch.Tensor) -> list[torch.Tensor]:
        """P_0(t) .. P_degree(t) by the three-term recurrence."""
        a, b = self.alpha, self.beta
        polys = [torch.ones_like(t)]
        if self.degree >= 1:
            polys.append(0.5 * (a - b) + 0.5 * (a + b + 2) * t)
        for A, B, C in self._recurrence:
            polys.append((A * t + B) * polys[-1] - C * polys[-2])
        return polys


    # -- lean path (layers/lean.py): (N, B, I) layout, analytic derivative -----------------------------------------
    def _lean_values(self, t: torch.Tensor) -> torch.Tensor:
        a, b = self.alpha, self.beta  # t = tanh(x), (N, I)
        out = t.new_empty(t.shape[0], self.degree + 1, t.shape[1])  # (N, D+1, I)
        out[:, 0] = 1
        if self.degree >= 1:
            out[:, 1] = 0.5 * (a - b) + 0.5 * (a + b + 2) * t
        for n, (A, B, C) in enumerate(self._recurrence, start=2):
            out[:, n] = (A * t + B) * out[:, n - 1] - C * out[:, n - 2]
        return out

    def fused_terms(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(P_n(t), d/dx P_n(t)) for n = 0..degree, t = tanh(x): both recurrences (``lean_features``' and
        ``lean_input_grad``'s) in one pass, so the fused backward writes the recomputed features and the input gradient
        in one loop. With the two forms apart, the compiler computed layer 1's features in an earlier loop and the
        derivatives in a loop of their own, evaluating tanh and both recurrences twice (d 384, 2048 tokens, bf16: the
        FFN step 0.95 and 0.97x the two-form step's, same-process A/Bs; fp32 and d 768 level, 0.97 - 1.01)."""
        t = loop_tanh(x)  # inline in a compiled CPU loop (layers/vecmath.py)
        dt = 1 - t * t
        a, b = self.alpha, self.beta
        values = self._polynomials(t)
        # d/dt P_n^(a,b) = (n + a + b + 1)/2 P_{n-1}^(a+1,b+1), the latter by its own recurrence (see _lean_slope_sum)
        a1, b1 = a + 1, b + 1
        q = [torch.ones_like(t), 0.5 * (a1 - b1) + 0.5 * (a1 + b1 + 2) * t][: self.degree]
        for A, B, C in jacobi_recurrence(self.degree - 1, a1, b1):
            q.append((A * t + B) * q[-1] - C * q[-2])
        slopes = [None] + [q[n - 1] * ((n + a + b + 1) / 2) * dt for n in range(1, self.degree + 1)]
        return list(zip(values, slopes, strict=True))

    def _lean_slope_sum(self, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """sum_n g_n P_n'(t) (1 - t^2), with d/dt P_n^(a,b) = (n + a + b + 1)/2 P_{n-1}^(a+1,b+1) (DLMF 18.9.15), the
        latter by its own three-term recurrence."""
        if self.degree == 0:
            return torch.zeros_like(t)
        a, b = self.alpha + 1, self.beta + 1
        scale = [(n + self.alpha + self.beta + 1) / 2 for n in range(self.degree + 1)]
        acc = g[:, 1] * scale[1]  # P_1' = (a + b + 2)/2 = scale[1] * Q_0
        q_prev, q_cur = torch.ones_like(t), 0.5 * (a - b) + 0.5 * (a + b + 2) * t  # Q_0, Q_1 of (a+1, b+1)
        recurrence = jacobi_recurrence(self.degree - 1, a, b)
        for n in range(2, self.degree + 1):
            acc.add_(g[:, n] * q_cur, alpha=scale[n])
            if n - 2 < len(recurrence):
                A, B, C = recurrence[n - 2]
                q_prev, q_cur = q_cur, (A * t + B).mul_(q_cur).sub_(q_prev, alpha=C)
        return acc.mul_(1 - t * t)


@register_ffn("jacobi")
class JacobiFFN(KANFFN):
    basis_cls = JacobiBasis
