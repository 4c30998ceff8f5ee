"""Fourier basis (FourierKAN, Xu et al. 2024): ``cos(k x)`` and ``sin(k x)`` for k = 1..K.

Legend: N tokens, I inputs, K = ``num_frequencies``; B = 2K features per input.

Out-of-range rule: the features are periodic and bounded, so every input maps to a finite value with a finite
gradient; nothing is zeroed (the constant term is the layer's bias).
"""

from __future__ import annotations

from typing import Any

import torch

from .kan import KANFFN, Basis, register_basis
from .registry import check_positive_int, register_ffn


@register_basis("fourier")
class FourierBasis(Basis):
    default_base = False

    def __init__(self, in_features: int, *, num_frequencies: int = 4) -> None:
        super().__init__(in_features)
        self.num_frequencies = check_positive_int("num_frequencies", num_frequencies)
        self.register_buffer("frequencies", torch.arange(1, num_frequencies + 1, dtype=torch.float32))  # (K,)

    @classmethod
    def n_basis_for(cls, *, num_frequencies: int, **_: Any) -> int:
        return 2 * num_frequencies

    @classmethod
    def flops_per_element(cls, *, num_frequencies: int, **_: Any) -> int:
        return 3 * num_frequencies  # k*x, cos, sin per frequency

    @property
    def n_basis(self) -> int:
        return 2 * self.num_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kx = x.unsqueeze(-1) * self.frequencies.to(x.dtype)  # (N, I, K)
        return torch.cat([torch.cos(kx), torch.sin(kx)], dim=-1)  # (N, I, 2K)


    # -- lean path (layers/lean.py): (N, B, I) layout, analytic derivative -----------------------------------------
    def lean_features(self, x: torch.Tensor) -> torch.Tensor:
        k = self.num_frequencies
        out = x.new_empty(x.shape[0], 2 * k, x.shape[1])  # (N, 2K, I): cosines, then sines
        freqs = self.frequencies.to(x.dtype)  # read on the device: a host read (``tolist``) waits for a GPU's queue
        for j in range(k):
            fx = x * freqs[j]
            torch.cos(fx, out=out[:, j])
            torch.sin(fx, out=out[:, k + j])
        return out

    # fused mode (layers/lean.py): one expression per function, value and slope together. The frequencies are
    # 1..K (the buffer is fixed), so cos(k x) and sin(k x) come from cos x and sin x by the angle-addition recurrence:
    # two transcendental evaluations per element instead of 2K, the same prefix for every function (the compiler
    # evaluates it once per element); rounding grows by ~1 ulp per frequency
    def fused_state(self) -> tuple[torch.Tensor, ...]:
        return ()

    def fused_term(self, x: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.num_frequencies
        f = j % k + 1  # the frequency
        c1, s1 = torch.cos(x), torch.sin(x)
        c, s = c1, s1
        for _ in range(f - 1):  # (cos, sin)((n + 1) x) = (cos nx cos x - sin nx sin x, sin nx cos x + cos nx sin x)
            c, s = c * c1 - s * s1, s * c1 + c * s1
        if j < k:
            return c, -f * s
        return s, f * c

    def lean_input_grad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        k, freqs = self.num_frequencies, self.frequencies.to(x.dtype)
        acc = torch.zeros_like(x)
        for j in range(k):  # a sum of (N, I) terms, each sine and cosine evaluated once
            fx = x * freqs[j]
            acc = acc + freqs[j] * (g[:, k + j] * torch.cos(fx) - g[:, j] * torch.sin(fx))
        return acc

    def lean_features_and_input_grad(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features, and the input gradient from their own cosines and sines (d/dx cos fx = -f sin fx, d/dx sin fx
        = f cos fx): 2K transcendental passes for both, not 4K."""
        feats = self.lean_features(x)  # (N, 2K, I)
        k, freqs = self.num_frequencies, self.frequencies.to(x.dtype)[:, None]  # (K, 1)
        return feats, ((g[:, k:] * feats[:, :k] - g[:, :k] * feats[:, k:]) * freqs).sum(1)


@register_ffn("fourier")
class FourierFFN(KANFFN):
    basis_cls = FourierBasis
