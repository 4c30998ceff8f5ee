"""Chebyshev polynomial basis (ChebyKAN, SS et al. 2024), by the three-term recurrence.

Legend: N tokens, I inputs, D = ``degree``; B = D + 1 polynomials T_0..T_D per input.

``T_0 = 1, T_1 = t, T_n = 2 t T_{n-1} - T_{n-2}`` with ``t = tanh(x)``. This equals ``cos(n arccos t)`` on [-1, 1]
but, unlike the ``acos`` form used by ChebyKAN, has finite gradients when tanh saturates (|t| -> 1).

Out-of-range rule: tanh squashes every input into (-1, 1), the polynomials' natural domain.
"""

from __future__ import annotations

from typing import Any

import torch

from .kan import KANFFN, TANH_SATURATION, Basis, register_basis
from .registry import check_positive_int, register_ffn


@register_basis("chebyshev")
class ChebyshevBasis(Basis):
    default_base = False

    def __init__(self, in_features: int, *, degree: int = 4) -> None:
        super().__init__(in_features)
        self.degree = check_positive_int("degree", degree, minimum=0)

    @classmethod
    def n_basis_for(cls, *, degree: int, **_: Any) -> int:
        return degree + 1

    @classmethod
    def flops_per_element(cls, *, degree: int, **_: Any) -> int:
        return 1 + 3 * max(degree - 1, 0)  # tanh; then 2*t*T_{n-1} - T_{n-2}: 2 mul + 1 sub per n >= 2

    @property
    def n_basis(self) -> int:
        return self.degree + 1

    def out_of_range(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() > TANH_SATURATION  # tanh(x) within 0.5% of +-1: the polynomials barely vary there

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(x)  # (N, I)
        polys = [torch.ones_like(t), t][: self.degree + 1]
        for _ in range(2, self.degree + 1):
            polys.append(2 * t * polys[-1] - polys[-2])
        return torch.stack(polys, dim=-1)  # (N, I, D+1)


    # -- lean path (layers/lean.py): (N, B, I) layout, analytic derivative -----------------------------------------
    def lean_features(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(x)  # (N, I)
        out = x.new_empty(x.shape[0], self.degree + 1, x.shape[1])  # (N, D+1, I)
        out[:, 0] = 1
        if self.degree >= 1:
            out[:, 1] = t
        for d in range(2, self.degree + 1):
            torch.sub(2 * t * out[:, d - 1], out[:, d - 2], out=out[:, d])
        return out

    def lean_input_grad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """sum_d g_d T_d'(t) (1 - t^2), with T_d' = 2 T_{d-1} + 2 t T_{d-1}' - T_{d-2}' (T_0' = 0, T_1' = 1)."""
        t = torch.tanh(x)
        acc = torch.zeros_like(x)
        if self.degree == 0:
            return acc
        t_prev, t_cur = torch.ones_like(x), t  # T_{d-2}, T_{d-1}
        d_prev, d_cur = torch.zeros_like(x), torch.ones_like(x)  # T_{d-2}', T_{d-1}'
        acc += g[:, 1]
        for d in range(2, self.degree + 1):
            d_new = 2 * t_cur + 2 * t * d_cur - d_prev
            t_prev, t_cur = t_cur, 2 * t * t_cur - t_prev
            d_prev, d_cur = d_cur, d_new
            acc.addcmul_(g[:, d], d_new)
        return acc * (1 - t * t)


@register_ffn("chebyshev")
class ChebyshevFFN(KANFFN):
    basis_cls = ChebyshevBasis
