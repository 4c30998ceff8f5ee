"""The KAN paper's function-fitting experiment (Liu et al. 2024, Sec. 2.5 and Fig. 2.3): train a small B-spline KAN
with L-BFGS on a symbolic target, then extend its grid and train again, recording train and test RMSE per grid.

Used by ``evals/toy_fit.py`` (table and plot) and by the test suite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .layers import KAN


def paper_target(x: torch.Tensor) -> torch.Tensor:
    """f(x, y) = exp(sin(pi x) + y^2), the paper's running example. ``(N, 2) -> (N, 1)``."""
    return torch.exp(torch.sin(math.pi * x[:, :1]) + x[:, 1:] ** 2)


def fit_lbfgs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Full-batch L-BFGS on the mean squared error; returns the final training loss."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-32, tolerance_change=1e-32)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    loss = float("nan")
    for _ in range(steps):
        loss = opt.step(closure).item()
    return loss


@dataclass
class GridRefinement:
    grids: list[int] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    train_rmse: list[float] = field(default_factory=list)
    test_rmse: list[float] = field(default_factory=list)
    model: KAN | None = None


def grid_refinement(
    target: Callable[[torch.Tensor], torch.Tensor] = paper_target,
    widths: Sequence[int] = (2, 5, 1),
    grids: Sequence[int] = (3, 5, 10),
    *,
    steps: int = 20,
    n_train: int = 1000,
    n_test: int = 1000,
    seed: int = 0,
    on_grid: Callable[[int, float, float], None] | None = None,
) -> GridRefinement:
    """Train at ``grids[0]``; for each later grid size, adapt the grid to the data, extend it (preserving the
    function on the training inputs) and train again. Inputs are uniform on [-1, 1]^d; float64 throughout."""
    if not grids or any(g < 1 for g in grids):
        raise ValueError(f"grids must be a non-empty list of sizes >= 1, got {list(grids)!r}")
    gen = torch.Generator().manual_seed(seed)
    x_train = torch.rand(n_train, widths[0], generator=gen, dtype=torch.float64) * 2 - 1
    x_test = torch.rand(n_test, widths[0], generator=gen, dtype=torch.float64) * 2 - 1
    y_train, y_test = target(x_train), target(x_test)
    torch.manual_seed(seed)
    model = KAN(widths, basis="bspline", grid_size=grids[0], grid_range=(-1, 1)).double()
    out = GridRefinement(model=model)
    for i, grid in enumerate(grids):
        if i > 0:
            model.update_grid(x_train)
            model.extend_grid(grid, x_train)
        fit_lbfgs(model, x_train, y_train, steps)
        with torch.no_grad():
            train = (model(x_train) - y_train).square().mean().sqrt().item()
            test = (model(x_test) - y_test).square().mean().sqrt().item()
        out.grids.append(grid)
        out.params.append(sum(p.numel() for p in model.parameters()))
        out.train_rmse.append(train)
        out.test_rmse.append(test)
        if on_grid is not None:
            on_grid(grid, train, test)
    return out
