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


@register_ffn("chebyshev")
class ChebyshevFFN(KANFFN):
    basis_cls = ChebyshevBasis
