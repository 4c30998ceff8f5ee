"""B-spline basis (Liu et al. 2024, "KAN: Kolmogorov-Arnold Networks"), computed as in efficient-kan.

Legend: N tokens, I inputs, G grid intervals, k spline order, B = G + k basis functions per input.

Each input feature has its own knot vector of G + 2k + 1 knots (``grid``, shape (I, G+2k+1)): G intervals over
``grid_range`` plus k extension knots on each side, so the B splines form a partition of unity on the grid range.
Bases come from the Cox-de Boor recursion (de Boor 1978, eq. (IX.14)).

Out-of-range rule: B splines vanish outside the grid, so such inputs are carried by the SiLU base branch
(on by default, as in the paper); ``update_grid`` moves the grid to where the data is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange

from .bspline_paths import BSplinePaths, _local_polynomials
from .kan import KANFFN, Basis, register_basis
from .registry import check_positive_int, register_ffn


def _check_grid_range(grid_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in grid_range)
    except (TypeError, ValueError):
        raise ValueError(f"grid_range must be two numbers (low, high), got {grid_range!r}") from None
    if not (lo < hi) or not all(map(lambda v: abs(v) < float("inf"), (lo, hi))):
        raise ValueError(f"grid_range must be finite with low < high, got {grid_range!r}")
    return lo, hi


def _extend_knots(interior: torch.Tensor, k: int) -> torch.Tensor:
    """(I, G+1) interior knots -> (I, G+2k+1): k knots each side at the mean interior spacing."""
    g = interior.shape[1] - 1
    step = (interior[:, -1:] - interior[:, :1]) / g  # (I, 1)
    ramp = torch.arange(1, k + 1, device=interior.device, dtype=interior.dtype)  # (k,)
    left = interior[:, :1] - step * ramp.flip(0)
    right = interior[:, -1:] + step * ramp
    return torch.cat([left, interior, right], dim=1)


def _spans(grid: torch.Tensor, p: int) -> torch.Tensor:
    """The knot spans t_j+p - t_j of an (I, M) knot vector, infinite where knots repeat (zero span): the Cox-de Boor
    recursion's convention 0/0 = 0, so that a term over an empty span vanishes (its lower-order spline is zero there)
    instead of making NaN. Repeated knots come from ``fit_grid_to`` with ``grid_eps=0`` on tied data (a ReLU's
    zeros)."""
    span = grid[:, p:] - grid[:, :-p]
    return torch.where(span == 0, torch.full_like(span, float("inf")), span)



def _cox_de_boor(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """The B splines of order ``k`` on the knot vectors ``grid`` (I, M) at ``x`` (N, I): (N, I, M - 1 - k)."""
    x = x.unsqueeze(-1)  # (N, I, 1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)  # (N, I, M-1)
    for p in range(1, k + 1):
        spans = _spans(grid, p)  # (I, M-p); repeated knots: infinite, the term zero (0/0 = 0)
        left = (x - grid[:, : -(p + 1)]) / spans[:, :-1]
        right = (grid[:, p + 1:] - x) / spans[:, 1:]
        bases = left * bases[..., :-1] + right * bases[..., 1:]  # (N, I, M-1-p)
    return bases


@register_basis("bspline")
class BSplineBasis(BSplinePaths, Basis):
    """B splines of order k on G intervals per input (the fast paths: ``BSplinePaths``, layers/bspline_paths.py)."""

    per_input = ("grid",)
    default_base = True

    def __init__(self, in_features: int, *, grid_size: int = 5, spline_order: int = 3,
                 grid_range: Sequence[float] = (-2.0, 2.0)) -> None:
        super().__init__(in_features)
        self.grid_size = check_positive_int("grid_size", grid_size)
        self.spline_order = check_positive_int("spline_order", spline_order, minimum=0)
        lo, hi = _check_grid_range(grid_range)
        interior = torch.linspace(lo, hi, grid_size + 1).expand(in_features, -1)  # (I, G+1)
        self.register_buffer("grid", _extend_knots(interior, spline_order).contiguous())  # (I, G+2k+1)
        for derivative in (False, True):  # the fused forms' constants, filled before anything traces them
            _local_polynomials(self.spline_order, derivative)
        self.refresh_checks()


    @classmethod
    def n_basis_for(cls, *, grid_size: int, spline_order: int, **_: Any) -> int:
        return grid_size + spline_order

    @classmethod
    def flops_per_element(cls, *, grid_size: int, spline_order: int, **_: Any) -> int:
        g, k = grid_size, spline_order
        # order 0: two comparisons and a logical and per interval (G+2k intervals);
        # order p: (x - t_j)/(t_{j+p} - t_j)*B_j + (t_{j+p+1} - x)/(...)*B_{j+1}: 2 sub, 2 div, 2 mul, 1 add
        # for each of the G+2k-p bases of that order (knot differences are per feature, not per token).
        return 3 * (g + 2 * k) + sum(7 * (g + 2 * k - p) for p in range(1, k + 1))

    @property
    def n_basis(self) -> int:
        return self.grid_size + self.spline_order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cox_de_boor(x, self.grid.to(x.dtype), self.spline_order)  # (N, I, G+k)

    def out_of_range(self, x: torch.Tensor) -> torch.Tensor:
        interior = self.interior_knots().to(x.dtype)
        return (x < interior[:, 0]) | (x > interior[:, -1])  # (N, I): only the base branch sees these inputs

    # -- grid adaptation ----------------------------------------------------------------------------------------
    def interior_knots(self) -> torch.Tensor:
        k = self.spline_order
        return self.grid[:, k: self.grid.shape[1] - k]  # (I, G+1)

    def fit_grid_to(self, x: torch.Tensor, *, margin: float = 0.01, grid_eps: float = 0.02) -> None:
        """Knots at data quantiles, blended with a uniform grid over the data range (weight ``grid_eps``),
        which keeps knots distinct even for a constant feature (efficient-kan's rule). With ``grid_eps=0`` tied data
        repeat knots; the splines over an empty span are then zero (``_spans``)."""
        if not 0.0 <= grid_eps <= 1.0:
            raise ValueError(f"grid_eps must be in [0, 1], got {grid_eps!r}")
        g = self.grid_size
        xs = torch.sort(x.float(), dim=0).values  # (N, I)
        idx = torch.linspace(0, xs.shape[0] - 1, g + 1, device=xs.device).round().long()
        adaptive = xs[idx]  # (G+1, I)
        lo, hi = xs[0] - margin, xs[-1] + margin  # (I,)
        steps = torch.linspace(0, 1, g + 1, device=xs.device)[:, None]  # (G+1, 1)
        uniform = lo + (hi - lo) * steps  # (G+1, I)
        interior = rearrange(grid_eps * uniform + (1 - grid_eps) * adaptive, "g i -> i g")
        self.grid.copy_(_extend_knots(interior, self.spline_order).to(self.grid.dtype))
        self.refresh_checks()

    def set_grid_size(self, grid_size: int) -> None:
        """Re-knot with ``grid_size`` intervals, following the current (possibly adapted) knot spacing."""
        check_positive_int("grid_size", grid_size)
        interior = self.interior_knots().float()  # (I, G+1)
        t = torch.linspace(0, self.grid_size, grid_size + 1, device=interior.device)
        i0 = t.floor().long().clamp(max=self.grid_size - 1)
        frac = t - i0
        new = interior[:, i0] * (1 - frac) + interior[:, i0 + 1] * frac  # (I, grid_size+1)
        self.grid = _extend_knots(new, self.spline_order).to(self.grid.dtype).contiguous()
        self.grid_size = grid_size
        self.refresh_checks()

    def grid_samples(self, grid_size: int | None = None) -> torch.Tensor:
        g = max(self.grid_size, grid_size or 0)
        m = 8 * (g + self.spline_order) + 64
        interior = self.interior_knots().float()
        lo, hi = interior[:, 0], interior[:, -1]  # (I,)
        u = (torch.arange(m, device=lo.device, dtype=lo.dtype)[:, None] + 0.5) / m  # (M, 1), inside [0, 1)
        return lo + (hi - lo) * u  # (M, I)


@register_ffn("bspline")
class BSplineFFN(KANFFN):
    """B-spline KAN FFN. Grid: ``update_grid(x)`` (fit to data quantiles), ``extend_grid(G)`` (refine)."""

    basis_cls = BSplineBasis
