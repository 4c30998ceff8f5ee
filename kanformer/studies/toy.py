"""The KAN paper's toy experiments (Liu et al. 2024) on f(x, y) = exp(sin(pi x) + y^2):

- grid refinement (Sec. 2.5, Fig. 2.3): train a small B-spline KAN with L-BFGS, extend its grid, train again,
  recording train and test RMSE per grid (the scaling exponent of error vs parameters);
- symbolic recovery (Sec. 2.5.1): sparsify, prune, snap each edge to an elementary function, compose the formula.

Used by ``benchmarks/toy_kan.py`` (tables, fitted exponent, plot) and by the test suite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sympy
import torch

from ..interpret import drop_units, edge_activity, kan_formula, snap_kan, unit_scores
from ..interpret.symbolic import SymbolicFit
from ..layers import KAN


def paper_target(x: torch.Tensor) -> torch.Tensor:
    """f(x, y) = exp(sin(pi x) + y^2), the paper's running example. ``(N, 2) -> (N, 1)``."""
    return torch.exp(torch.sin(math.pi * x[:, :1]) + x[:, 1:] ** 2)


def sparsity_penalty(model: KAN, x: torch.Tensor, mu: float = 1.0) -> torch.Tensor:
    """The KAN paper's sparsification regulariser (Sec. 2.5.1): per layer, the L1 norm of the edge activities
    ``|A|_1 = sum_oi mean_n |phi_oi|`` plus ``mu`` times the entropy of ``A / |A|_1``."""
    total = x.new_zeros(())
    for layer in model.layers:
        act = edge_activity(layer, x, differentiable=True)  # (O, I)
        l1 = act.sum()
        p = act / l1.clamp_min(1e-12)
        total = total + l1 + mu * -(p * torch.log(p + 1e-12)).sum()
        x = layer(x)
    return total


def fit_lbfgs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *, lamb: float = 0.0) -> float:
    """Full-batch L-BFGS on the mean squared error (plus ``lamb`` x the sparsity penalty); returns the final
    training MSE."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-32, tolerance_change=1e-32)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        if lamb:
            loss = loss + lamb * sparsity_penalty(model, x)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    with torch.no_grad():
        return (model(x) - y).square().mean().item()


@torch.no_grad()
def prune_kan(model: KAN, x: torch.Tensor, threshold: float = 0.05) -> list[int]:
    """Remove the hidden units of a KAN net whose score (``interpret.unit_scores``) is below ``threshold`` x the
    best unit of their layer; returns the new widths (at least one unit per layer stays)."""
    acts, h = [], x
    for layer in model.layers:
        acts.append(edge_activity(layer, h))
        h = layer(h)
    for k in range(len(model.layers) - 1):
        scores = unit_scores(acts[k], acts[k + 1])
        keep = (scores >= threshold * scores.max()).nonzero().flatten()
        if len(keep) < len(scores):
            drop_units(model.layers[k], model.layers[k + 1], keep)
            acts[k + 1] = acts[k + 1][:, keep]
            model.widths[k + 1] = len(keep)
    return list(model.widths)


@dataclass
class Recovery:
    widths_before: list[int]
    widths_after: list[int]
    rmse_dense: float  # test RMSE of the sparsified net before pruning
    rmse_pruned: float  # after pruning and retraining
    fits: list[list[list[SymbolicFit]]]  # fits[layer][out][in] of the pruned net
    formula: sympy.Expr
    rmse_formula: float  # test RMSE of the formula itself


def symbolic_recovery(target: Callable[[torch.Tensor], torch.Tensor] = paper_target, widths: Sequence[int] = (2, 5, 1),
                      *, grid: int = 5, lamb: float = 0.01, sparse_steps: int = 50, steps: int = 50,
                      threshold: float = 0.3, n_train: int = 1000, n_test: int = 1000, seed: int = 0,
                      names: Sequence[str] | None = None) -> Recovery:
    """The KAN paper's discovery pipeline: train with the sparsity penalty, prune units, retrain, snap every edge
    to its best elementary function and compose the formula; report how well the formula itself fits."""
    gen = torch.Generator().manual_seed(seed)
    x_train = torch.rand(n_train, widths[0], generator=gen, dtype=torch.float64) * 2 - 1
    x_test = torch.rand(n_test, widths[0], generator=gen, dtype=torch.float64) * 2 - 1
    y_train, y_test = target(x_train), target(x_test)
    torch.manual_seed(seed)
    model = KAN(widths, basis="bspline", grid_size=grid, grid_range=(-1, 1)).double()
    fit_lbfgs(model, x_train, y_train, sparse_steps, lamb=lamb)

    def rmse() -> float:
        with torch.no_grad():
            return (model(x_test) - y_test).square().mean().sqrt().item()

    dense = rmse()
    before = list(model.widths)
    after = prune_kan(model, x_train, threshold)
    model.update_grid(x_train)
    fit_lbfgs(model, x_train, y_train, steps)
    pruned = rmse()
    fits = snap_kan(model, x_train, names)
    (formula,) = kan_formula(model, fits, [f"x{i + 1}" for i in range(widths[0])][: widths[0]])
    fn = sympy.lambdify(sorted(formula.free_symbols, key=lambda v: v.name), formula, "math")
    order = [int(v.name[1:]) - 1 for v in sorted(formula.free_symbols, key=lambda v: v.name)]
    pred = torch.tensor([float(sympy.re(fn(*(row[i] for i in order)))) for row in x_test.tolist()],
                        dtype=torch.float64)
    err = (pred - y_test[:, 0]).square().mean().sqrt().item()
    return Recovery(before, after, dense, pruned, fits, formula, err)


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
