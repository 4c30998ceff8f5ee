"""The KAN paper's claims on f(x, y) = exp(sin(pi x) + y^2), measured here.

1. Scaling: [2, 5, 1] and [2, 1, 1] B-spline KANs trained with L-BFGS and grid extension; the exponent of test RMSE
   vs parameter count, fitted on the grids before the error stops falling (``fit_exponent``). The paper reports
   about -4 for cubic splines (RMSE ~ G^-(k+1)).
2. Symbolic recovery: sparsify, prune to [2, 1, 1], snap every edge, print the recovered formula and its test RMSE.

    python -m benchmarks.toy_kan                       # both: tables, benchmarks/out/toy_kan.{png,json}
    python -m benchmarks.toy_kan --grids 3 5 10 20     # a quicker scaling run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from kanformer import KAN
from kanformer.studies.toy import grid_refinement, symbolic_recovery


def fit_exponent(params: list[int], rmse: list[float], *, plateau: float = 0.2) -> tuple[float, int]:
    """Least-squares slope of log RMSE vs log params over the leading points that still improve: the fit stops
    before the first grid whose RMSE falls by less than ``plateau`` (20%) - past it the error is set by the
    optimiser or by interpolating the training set, not by the grid. Returns (slope, points used)."""
    stop = 1
    while stop < len(rmse) and rmse[stop] < (1 - plateau) * rmse[stop - 1]:
        stop += 1
    if stop < 2:
        return float("nan"), stop
    lx = torch.tensor(params[:stop], dtype=torch.float64).log()
    ly = torch.tensor(rmse[:stop], dtype=torch.float64).log()
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / (lx - lx.mean()).square().sum()
    return slope.item(), stop


def plot(scalings: dict, recovery, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for k, (name, (sc, slope, used)) in enumerate(scalings.items()):
        ax.loglog(sc.params, sc.test_rmse, "s-", color=f"C{k}", label=f"{name} test")
        ax.loglog(sc.params, sc.train_rmse, "o:", color=f"C{k}", alpha=0.6, label=f"{name} train")
        ps = torch.tensor(sc.params[:used], dtype=torch.float64)
        ax.loglog(ps, sc.test_rmse[0] * (ps / sc.params[0]) ** slope, "--", color="0.3", lw=1)
        ax.annotate(f"N^{slope:.2f}", (sc.params[used - 1], sc.test_rmse[used - 1]), textcoords="offset points",
                    xytext=(4, -10), fontsize=8)
    sc = next(iter(scalings.values()))[0]
    ps = torch.tensor(sc.params, dtype=torch.float64)
    ax.loglog(ps, sc.test_rmse[0] * (ps / sc.params[0]) ** -4.0, ":", color="0.6", label="N^-4 (paper)")
    ax.set_xlabel("parameters")
    ax.set_ylabel("RMSE")
    ax.set_title("grid extension 3 -> ... (L-BFGS per grid)")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.axis("off")
    lines = [f"pruned {recovery.widths_before} -> {recovery.widths_after}",
             f"test RMSE: sparse net {recovery.rmse_dense:.2e}, pruned {recovery.rmse_pruned:.2e}",
             "edges snapped (best fit, R^2):"]
    for li, layer in enumerate(recovery.fits):
        for o, row in enumerate(layer):
            lines += [f"  layer {li} in {i} -> out {o}: {f.name}  R^2={f.r2:.5f}" for i, f in enumerate(row)]
    lines += ["recovered formula:", f"  {recovery.formula}", f"formula test RMSE {recovery.rmse_formula:.2e}"]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8, wrap=True)
    ax.set_title("symbolic recovery")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[3, 5, 10, 20, 50, 100])
    p.add_argument("--steps", type=int, default=200, help="L-BFGS steps per grid")
    p.add_argument("--lamb", type=float, default=0.01, help="sparsity penalty weight for the recovery")
    p.add_argument("--threshold", type=float, default=0.3, help="unit pruning threshold (fraction of the best unit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out")
    args = p.parse_args(argv)
    start = time.perf_counter()
    scalings = {}
    for widths in ([2, 5, 1], [2, 1, 1]):
        print(f"1. scaling: {widths} KAN on exp(sin(pi x) + y^2), L-BFGS {args.steps} steps per grid")
        print("| grid | params | train RMSE | test RMSE |\n|---:|---:|---:|---:|")

        def row(g: int, train: float, test: float, widths: list[int] = widths) -> None:
            n = sum(p.numel() for p in KAN(widths, grid_size=g).parameters())
            print(f"| {g} | {n} | {train:.2e} | {test:.2e} |", flush=True)

        sc = grid_refinement(widths=widths, grids=args.grids, steps=args.steps, seed=args.seed, on_grid=row)
        slope, used = fit_exponent(sc.params, sc.test_rmse)
        print(f"test RMSE ~ params^{slope:.2f} (fitted on grids {sc.grids[:used]}, before the error stops falling); "
              f"paper: about -4\n")
        scalings[str(widths)] = (sc, slope, used)
    print(f"\n2. symbolic recovery: sparsify (lambda {args.lamb}), prune (threshold {args.threshold}), snap")
    rec = symbolic_recovery(lamb=args.lamb, threshold=args.threshold, seed=args.seed)
    print(f"widths {rec.widths_before} -> {rec.widths_after}; test RMSE sparse {rec.rmse_dense:.2e}, "
          f"pruned {rec.rmse_pruned:.2e}")
    for li, layer in enumerate(rec.fits):
        for o, row in enumerate(layer):
            for i, f in enumerate(row):
                print(f"  layer {li} in {i} -> out {o}: {f.name} (R^2 {f.r2:.6f})")
    print(f"formula: {rec.formula}\nformula test RMSE {rec.rmse_formula:.2e}")
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "toy_kan.png")
    plot(scalings, rec, png)
    result = {"scaling": {w: {"grids": sc.grids, "params": sc.params, "train_rmse": sc.train_rmse,
                              "test_rmse": sc.test_rmse, "test_exponent": sl, "test_exponent_grids": sc.grids[:u]}
                          for w, (sc, sl, u) in scalings.items()}, "recovery": {
                  "widths_before": rec.widths_before, "widths_after": rec.widths_after, "formula": str(rec.formula),
                  "rmse_formula": rec.rmse_formula, "rmse_pruned": rec.rmse_pruned,
                  "edges": [[[{"name": f.name, "r2": f.r2} for f in row] for row in layer] for layer in rec.fits]},
              "settings": vars(args), "seconds": time.perf_counter() - start}
    with open(os.path.join(args.out, "toy_kan.json"), "w") as f:
        json.dump(result, f, indent=2, default=lambda v: v if math.isfinite(v) else None)
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
