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


@register_basis("bspline")
class BSplineBasis(Basis):
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
        grid = self.grid.to(x.dtype)  # (I, G+2k+1)
        x = x.unsqueeze(-1)  # (N, I, 1)
        bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)  # (N, I, G+2k)
        for p in range(1, self.spline_order + 1):
            left = (x - grid[:, : -(p + 1)]) / (grid[:, p:-1] - grid[:, : -(p + 1)])
            right = (grid[:, p + 1:] - x) / (grid[:, p + 1:] - grid[:, 1:-p])
            bases = left * bases[..., :-1] + right * bases[..., 1:]  # (N, I, G+2k-p)
        return bases  # (N, I, G+k)

    def out_of_range(self, x: torch.Tensor) -> torch.Tensor:
        interior = self.interior_knots().to(x.dtype)
        return (x < interior[:, 0]) | (x > interior[:, -1])  # (N, I): only the base branch sees these inputs

    # -- grid adaptation ----------------------------------------------------------------------------------------
    def interior_knots(self) -> torch.Tensor:
        k = self.spline_order
        return self.grid[:, k: self.grid.shape[1] - k]  # (I, G+1)

    def fit_grid_to(self, x: torch.Tensor, *, margin: float = 0.01, grid_eps: float = 0.02) -> None:
        """Knots at data quantiles, blended with a uniform grid over the data range (weight ``grid_eps``),
        which keeps knots distinct even for a constant feature (efficient-kan's rule)."""
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

    def grid_samples(self, grid_size: int | None = None) -> torch.Tensor:
        g = max(self.grid_size, grid_size or 0)
        m = 8 * (g + self.spline_order) + 64
        interior = self.interior_knots().float()
        lo, hi = interior[:, 0], interior[:, -1]  # (I,)
        u = (torch.arange(m, device=lo.device, dtype=lo.dtype)[:, None] + 0.5) / m  # (M, 1), inside [0, 1)
        return lo + (hi - lo) * u  # (M, I)


    # -- lean path (layers/lean.py) ---------------------------------------------------------------------------------
    # On a uniform knot vector (per input: start t_0, step h) only k+1 splines are non-zero at x: with s = (x - t_0)/h,
    # interval m = floor(s) and t = s - m they follow de Boor's local triangle (The NURBS Book, A2.2), whose knot
    # differences are whole multiples of h. They are scattered into the (N, B, I) features at m-k..m. Adapted
    # (non-uniform) grids use the reference recursion, differentiated by autograd in the backward.
    def _uniform(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.spline_order < 1:
            return None
        steps = self.grid[:, 1:] - self.grid[:, :-1]  # (I, G+2k)
        if not torch.allclose(steps, steps[:, :1].expand_as(steps), rtol=1e-5, atol=0):
            return None
        return self.grid[:, 0], steps.mean(dim=1)  # (I,), (I,)

    def _local(self, x: torch.Tensor, t0: torch.Tensor, h: torch.Tensor, order: int
               ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        s = (x - t0.to(x.dtype)) / h.to(x.dtype)  # (N, I)
        m = torch.floor(s)
        t = s - m
        values = [torch.ones_like(x)]
        for j in range(1, order + 1):
            saved = torch.zeros_like(x)
            nxt = []
            for r in range(j):
                temp = values[r] / j
                nxt.append(saved + (r + 1 - t) * temp)
                saved = (t + (j - r - 1)) * temp
            nxt.append(saved)
            values = nxt
        return s, m, values  # values[r]: spline m-order+r of that order

    def _slots(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature index of the k+1 local splines (N, k+1, I), clamped, and whether each is a real basis."""
        k = self.spline_order
        idx = m.unsqueeze(1) + torch.arange(-k, 1, device=m.device, dtype=m.dtype)[:, None]  # (N, k+1, I)
        inside = (m >= 0) & (m < self.grid_size + 2 * k)  # x within the extended grid (NaN: outside)
        ok = inside.unsqueeze(1) & (idx >= 0) & (idx < self.n_basis)
        return idx.clamp(0, self.n_basis - 1).long(), ok

    def lean_features(self, x: torch.Tensor) -> torch.Tensor:
        uniform = self._uniform()
        if uniform is None:
            return self(x).transpose(1, 2)  # (N, B, I)
        _, m, values = self._local(x, *uniform, self.spline_order)
        idx, ok = self._slots(m)
        out = x.new_zeros(x.shape[0], self.n_basis, x.shape[1])  # (N, B, I)
        return out.scatter_add_(1, idx, torch.stack(values, dim=1) * ok)

    def lean_input_grad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        uniform = self._uniform()
        if uniform is None:
            return None
        t0, h = uniform
        k = self.spline_order
        _, m, lower = self._local(x, t0, h, k - 1)  # order k-1: splines m-k+1..m
        idx, ok = self._slots(m)
        zero = torch.zeros_like(x)
        # d/dx B_{i,k} = (B_{i,k-1} - B_{i+1,k-1}) / h on a uniform grid
        deriv = torch.stack([(lower[r - 1] if r >= 1 else zero) - (lower[r] if r < k else zero)
                             for r in range(k + 1)], dim=1)  # (N, k+1, I)
        return (g.gather(1, idx) * deriv * ok).sum(1) / h.to(x.dtype)


@register_ffn("bspline")
class BSplineFFN(KANFFN):
    """B-spline KAN FFN. Grid: ``update_grid(x)`` (fit to data quantiles), ``extend_grid(G)`` (refine)."""

    basis_cls = BSplineBasis
