"""Comparison plots: validation quality against tokens, FLOPs and wall-clock, and final quality against throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _eval_curves(run_dir: str) -> list[dict[str, Any]]:
    from ..train.metrics import read_metrics

    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl")
            if r.get("type") == "eval" and r.get("val_loss") is not None]


def _save(fig: Any, ax: Any, path: Path, *, title: str, xlabel: str, ylabel: str, written: list[str]) -> None:
    """Label, save and close one figure; record its path."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))


def comparison_plots(summary: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "val_loss"
    written = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for x_key, label, fname in (("tokens", "training tokens", "loss_vs_tokens.png"),
                                ("flops", "training FLOPs (3 x forward)", "loss_vs_flops.png"),
                                ("wall_s", "training wall-clock (s)", "loss_vs_time.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for i, row in enumerate(summary["arms"]):
            style = "-" if row["role"] == "kan" else "--"
            for j, run_dir in enumerate(row["run_dirs"]):
                curve = _eval_curves(run_dir)
                if curve:
                    ax.plot([r[x_key] for r in curve], [r[metric] for r in curve], style, color=colors[i % 10],
                            alpha=0.9 if j == 0 else 0.4, label=row["arm"] if j == 0 else None)
        if x_key == "flops":
            ax.set_xscale("log")
        _save(fig, ax, out / fname, title=f"{summary['name']}: validation loss vs {label}", xlabel=label,
              ylabel="validation loss (nats)", written=written)

    quality = "val_ppl" if summary["quality_metric"] == "val_nll" else "val_acc"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    speed = summary.get("speed")  # the interleaved timing (studies/speed.py): ratios to its reference arm
    for i, row in enumerate(summary["arms"]):
        if quality not in row:
            continue
        if speed and "speed" in row:
            x = row["speed"]["train_x_reference"]
            at, err = x["median"], [[x["median"] - x["low"]], [x["high"] - x["median"]]]
        elif not speed and "train_tokens_per_s" in row:
            at, err = row["train_tokens_per_s"]["mean"], row["train_tokens_per_s"]["std"]
        else:
            continue
        ax.errorbar(at, row[quality]["mean"], xerr=err, yerr=row[quality]["std"],
                    fmt="o" if row["role"] == "kan" else "s", color=colors[i % 10], label=row["arm"], capsize=3)
    xlabel = (f"training tokens/s x {speed['reference']} (median of rounds; bars: lowest - highest)"
              if speed else "training throughput (tokens/s)")
    _save(fig, ax, out / "quality_vs_throughput.png", title=f"{summary['name']}: quality vs speed", xlabel=xlabel,
          ylabel="validation perplexity" if quality == "val_ppl" else "validation accuracy", written=written)
    return written


def scaling_plots(summary: dict[str, Any], fits: dict[str, dict[str, Any]], out: Path) -> list[str]:
    """Loss vs FLOPs / params / wall-clock with each arm's fitted law, and IsoFLOP curves in isoflop mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    points = summary["points"]
    written = []
    for x_key, fit_key, label, fname in (("flops", "vs_flops", "training FLOPs", "loss_vs_flops.png"),
                                         ("params", "vs_params", "non-embedding parameters", "loss_vs_params.png"),
                                         ("wall_s", "vs_wall", "training wall-clock (s)", "loss_vs_wallclock.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for i, arm in enumerate(fits):
            pts = [p for p in points if p["arm"] == arm and p.get(x_key)]
            if not pts:
                continue
            xs = np.array([p[x_key] for p in pts], dtype=float)
            ax.scatter(xs, [p["loss"] for p in pts], color=colors[i % 10], s=18)
            law = fits[arm].get(fit_key)
            if law is not None:
                grid = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 100)
                ax.plot(grid, law(grid), color=colors[i % 10],
                        label=f"{arm}: alpha={law.alpha:.3f}")
            else:
                ax.plot([], [], color=colors[i % 10], label=arm)
        ax.set_xscale("log")
        _save(fig, ax, out / fname, title=f"{summary['name']}: loss vs {label}", xlabel=label,
              ylabel="final validation loss (nats)", written=written)
    if summary["mode"] == "isoflop":
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        budgets = sorted({p["budget"] for p in points if p["budget"] is not None})
        for i, arm in enumerate(fits):
            for j, budget in enumerate(budgets):
                pts = sorted((p for p in points if p["arm"] == arm and p["budget"] == budget),
                             key=lambda p: p["params"])
                if pts:
                    ax.plot([p["params"] for p in pts], [p["loss"] for p in pts], "o-", color=colors[i % 10],
                            alpha=0.4 + 0.6 * (j + 1) / len(budgets), label=f"{arm} C={budget:.2g}")
        ax.set_xscale("log")
        _save(fig, ax, out / "isoflop.png", title=f"{summary['name']}: IsoFLOP curves",
              xlabel="non-embedding parameters", ylabel="final validation loss (nats)", written=written)
    return written
