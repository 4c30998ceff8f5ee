"""The KAN paper's grid-refinement experiment, printed as a table and saved as a plot.

    python -m evals.toy_fit                      # [2, 5, 1] KAN, grids 3 5 10 20, plot in evals/out/
"""

from __future__ import annotations

import argparse
import os

import torch

from kanformer.toy import grid_refinement


def plot(result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = result.model
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    ax.loglog(result.params, result.train_rmse, "o-", label="train")
    ax.loglog(result.params, result.test_rmse, "s-", label="test")
    for g, p, r in zip(result.grids, result.params, result.test_rmse, strict=True):
        ax.annotate(f"G={g}", (p, r), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("parameters")
    ax.set_ylabel("RMSE")
    ax.set_title("grid extension: error vs size")
    ax.legend()
    first = model.layers[0]
    xs = torch.linspace(-1, 1, 200, dtype=torch.float64)[:, None].expand(-1, first.in_features)
    with torch.no_grad():
        edges = first.edge_values(xs)  # (N, I, O), spline part
        if first.base_weight is not None:
            edges = edges + torch.nn.functional.silu(xs)[:, :, None] * first.base_weight.T[None]
    for i, ax in enumerate(axes[1:]):
        for o in range(first.out_features):
            ax.plot(xs[:, i], edges[:, i, o], lw=1)
        ax.set_title(f"layer 0: edges from input x{i}")
        ax.set_xlabel(f"x{i}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[3, 5, 10, 20])
    p.add_argument("--widths", type=int, nargs="+", default=[2, 5, 1])
    p.add_argument("--steps", type=int, default=20, help="L-BFGS steps per grid")
    p.add_argument("--out", default="evals/out")
    args = p.parse_args(argv)
    if args.widths[0] != 2 or args.widths[-1] != 1:
        p.error(f"the target f(x, y) takes 2 inputs and gives 1 output; --widths must start at 2 and end at 1, "
                f"got {args.widths}")
    print(f"KAN {args.widths} fitting exp(sin(pi x) + y^2), L-BFGS {args.steps} steps per grid")
    print("| grid | train RMSE | test RMSE |\n|---:|---:|---:|")
    result = grid_refinement(widths=args.widths, grids=args.grids, steps=args.steps,
                             on_grid=lambda g, tr, te: print(f"| {g} | {tr:.2e} | {te:.2e} |", flush=True))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "toy_fit.png")
    plot(result, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
