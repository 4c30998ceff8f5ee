"""MultKAN (Liu et al. 2024, "KAN 2.0", Sec. 2.2): KAN layers whose hidden nodes may multiply.

Legend: D = d_model, H = hidden nodes = S sum nodes + M multiplication nodes (M = round(mult_fraction * H)).

The first KAN layer produces S + 2M "subnodes"; each multiplication node is the product of two of them (arity 2,
the paper's default), each sum node passes its subnode on::

    sub = fc1(x)                                       # (N, S + 2M)
    h = cat(sub[:, :S], sub[:, S::2] * sub[:, S+1::2])  # (N, S + M) = (N, H)
    y = fc2(h)                                         # (N, D)

Products let a KAN express x*y with two edges instead of learning it from squares. Any registered basis serves
(``basis=``, with that basis' options); ``mult_fraction=0`` is the plain KAN FFN on that basis.
"""

from __future__ import annotations

from typing import Any

import torch

from .few_tokens import PathFFN
from .kan import KANLinear, get_basis_class, list_bases
from .lean import node_products
from .lean_ffn import lean_kan_ffn
from .lean_ffn import plan as ffn_plan
from .registry import check_last_dim, register_ffn


def _split(hidden: int, mult_fraction: Any) -> tuple[int, int]:
    """(sum nodes, multiplication nodes) of ``hidden``."""
    if isinstance(mult_fraction, bool) or not isinstance(mult_fraction, int | float) or not 0 <= mult_fraction <= 1:
        raise ValueError(f"mult_fraction must be a number in [0, 1], got {mult_fraction!r}")
    n_mult = round(hidden * float(mult_fraction))
    return hidden - n_mult, n_mult


@register_ffn("multkan")
class MultKANFFN(PathFFN):
    """KAN FFN with multiplication nodes in its hidden layer."""

    def __init__(self, d_model: int, hidden: int, *, basis: str = "bspline", mult_fraction: float = 0.5,
                 base: bool | None = None, bias: bool = True, init_scale: float = 1.0, **basis_kw: Any) -> None:
        super().__init__(d_model, hidden, basis=basis, mult_fraction=mult_fraction, base=base, bias=bias,
                         init_scale=init_scale, **basis_kw)
        self.n_sum, self.n_mult = _split(self.hidden, mult_fraction)
        layer_kw = dict(base=base, bias=bias, init_scale=init_scale, **basis_kw)
        self.fc1 = KANLinear(d_model, self.n_sum + 2 * self.n_mult, basis, **layer_kw)
        self.fc2 = KANLinear(self.hidden, d_model, basis, **layer_kw)

    @classmethod
    def accepted_kwargs(cls) -> list[str]:
        basis_kw = {k for name in list_bases() for k in get_basis_class(name).accepted_kwargs()}
        return ["basis", "mult_fraction", "base", "bias", "init_scale", *sorted(basis_kw)]

    @classmethod
    def count_params(cls, d_model: int, hidden: int, *, basis: str = "bspline", mult_fraction: float = 0.5,
                     **kw: Any) -> int:
        n_sum, n_mult = _split(hidden, mult_fraction)
        return (KANLinear.count_params(d_model, n_sum + 2 * n_mult, basis, **kw)
                + KANLinear.count_params(hidden, d_model, basis, **kw))

    @classmethod
    def count_flops(cls, d_model: int, hidden: int, *, basis: str = "bspline", mult_fraction: float = 0.5,
                    **kw: Any) -> dict[str, int]:
        n_sum, n_mult = _split(hidden, mult_fraction)
        a = KANLinear.count_flops(d_model, n_sum + 2 * n_mult, basis, **kw)
        b = KANLinear.count_flops(hidden, d_model, basis, **kw)
        return {"matmul": a["matmul"] + b["matmul"], "elementwise": a["elementwise"] + b["elementwise"] + n_mult}

    def nodes(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden node values ``(..., H)``: sum nodes, then multiplication nodes."""
        return node_products(self.fc1(x), self.n_sum)  # (..., S + 2M) -> (..., H)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.d_model, f"FFN {self.name!r}")
        # both layers and the products between them in one Function where they can be (layers/lean_ffn.py)
        chained = ffn_plan(self, x, (self.n_sum, self.n_mult) if self.n_mult else None)
        if chained is not None:
            return lean_kan_ffn(self, x, chained)
        return self.fc2(self.nodes(x))
