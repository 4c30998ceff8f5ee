"""``kanformer inspect`` and ``kanformer prune``: a saved KAN checkpoint looked at on real inputs.

inspect -> ``<out>/summary.json`` and one PNG per KAN layer: its most active edge functions drawn over the range
their inputs cover, with the input distribution underneath (GR-KAN: each group's rational function).
prune   -> the pruned checkpoint (loadable with ``from_pretrained``) and ``prune_report.json`` with the parameters
removed and the quality before and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..layers import KANFFN, KANLinear
from .activity import edge_activity, edge_function, unit_scores
from .prune import prune_model
from .symbolic import fit_symbolic
from .telemetry import InputRecorder, kan_modules


def _safe(name: str) -> str:
    return name.replace(".", "_")


def _curve_over_inputs(ax, inputs: torch.Tensor, grid: torch.Tensor, values: torch.Tensor, color: str) -> None:
    """A function's curve with the histogram of the inputs it sees drawn underneath (on its own hidden y-axis)."""
    hist = ax.twinx()
    hist.hist(inputs.numpy(), bins=50, color="0.85", density=True)
    hist.set_yticks([])
    ax.set_zorder(hist.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(grid.numpy(), values.numpy(), color=color)


def _panels(n: int, max_cols: int, width: float, height: float) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(max_cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def _finish(fig: Any, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _input_range(xs: torch.Tensor, *, rel: float = 0.0, absolute: float = 0.0) -> torch.Tensor:
    """200 points over the central 99% of ``xs``, widened on each side by ``rel`` of that span plus ``absolute``."""
    lo, hi = torch.quantile(xs, 0.005).item(), torch.quantile(xs, 0.995).item()
    pad = rel * (hi - lo + 1e-6) + absolute
    return torch.linspace(lo - pad, hi + pad, 200)


def _plot_edges(layer: KANLinear, x2: torch.Tensor, edges: list[tuple[int, int, float]], title: str,
                path: Path) -> None:
    fig, axes = _panels(len(edges), 3, 4, 3)
    for ax, (o, i, act) in zip(axes, edges, strict=True):
        xi = x2[:, i]
        grid = _input_range(xi, rel=0.1)
        probe = torch.zeros(len(grid), layer.in_features)
        probe[:, i] = grid
        with torch.no_grad():
            phi = edge_function(layer, probe)[:, i, o]
        _curve_over_inputs(ax, xi, grid, phi, "C0")
        ax.set_title(f"in {i} -> out {o}  (activity {act:.3g})", fontsize=9)
        ax.set_xlabel(f"x_{i}")
    _finish(fig, title, path)


def _plot_curves(curves: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], title: str, path: Path) -> None:
    """A module's own curves (``curves(x2)``: label, its inputs, grid, values), one panel each."""
    fig, axes = _panels(len(curves), 4, 3.5, 2.8)
    for ax, (label, xs, grid, y) in zip(axes, curves, strict=True):
        _curve_over_inputs(ax, xs, grid, y, "C1")
        ax.set_title(label, fontsize=9)
    _finish(fig, title, path)


def _record(model: nn.Module, calibration: list[dict[str, torch.Tensor]], modules: dict[str, nn.Module],
            max_rows: int) -> dict[str, torch.Tensor]:
    with torch.no_grad(), InputRecorder(modules, max_rows=max_rows) as rec:
        for batch in calibration:
            rec.mask(batch.get("attention_mask"))
            model(**{k: v for k, v in batch.items() if k != "labels"})
    return rec.rows()


def _snap(layer: KANLinear, x2: torch.Tensor, o: int, i: int, rows: int = 512) -> dict[str, Any]:
    """Best symbolic fit of edge (o, i) on (a subsample of) its real inputs, with the runner-up."""
    xs = x2[torch.linspace(0, len(x2) - 1, min(rows, len(x2))).long(), i]
    probe = torch.zeros(len(xs), layer.in_features)
    probe[:, i] = xs
    with torch.no_grad():
        phi = edge_function(layer, probe)[:, i, o]
    fits = fit_symbolic(xs, phi)
    return {"best": fits[0].name, "r2": fits[0].r2, "params": [fits[0].a, fits[0].b, fits[0].c, fits[0].d],
            "runner_up": fits[1].name, "runner_up_r2": fits[1].r2}


def inspect_model(model: nn.Module, calibration: list[dict[str, torch.Tensor]], out: str | Path, *, top_k: int = 9,
                  max_rows: int = 2048, symbolic: bool = False) -> dict[str, Any]:
    """Rank every KAN layer's edges (and every KAN FFN's hidden units) by activity on ``calibration`` batches,
    plot the top ``top_k`` edge functions per layer, write ``summary.json`` under ``out``; returns the summary.
    ``symbolic``: also snap each top edge to its best elementary function (``fit_symbolic``), with R^2."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    modules = kan_modules(model)
    if not modules:
        raise ValueError("the model has no KAN layers to inspect (it holds the stock MLP or a baseline FFN)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    rows = _record(model, calibration, modules, max_rows)
    summary: dict[str, Any] = {"rows_per_layer": {n: len(r) for n, r in rows.items()}, "layers": {}, "units": {}}
    activity: dict[str, torch.Tensor] = {}
    for name, module in tqdm(modules.items(), desc="inspect", leave=False):
        x2 = rows[name]
        png = out / f"{_safe(name)}.png"
        if isinstance(module, KANLinear):
            act = edge_activity(module, x2)  # (O, I)
            activity[name] = act
            flat = act.flatten()
            order = flat.argsort(descending=True)[:top_k]
            top = [(int(k) // module.in_features, int(k) % module.in_features, float(flat[k])) for k in order]
            _plot_edges(module, x2, top, f"{name}: top {len(top)} of {flat.numel()} edges ({module.basis.name})", png)
            qs = torch.quantile(flat.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
            summary["layers"][name] = {
                "kind": "kan", "basis": module.basis.name, "in": module.in_features, "out": module.out_features,
                "activity_mean": flat.mean().item(), "activity_max": flat.max().item(),
                "activity_p10_p50_p90": qs,
                "edges_below_1pct_of_max": (flat < 0.01 * flat.max()).float().mean().item(),
                "top_edges": [{"out": o, "in": i, "activity": a, **({"symbolic": _snap(module, x2, o, i)}
                                                                      if symbolic else {})} for o, i, a in top],
                "plot": png.name}
        else:  # functions without edges to rank (GR-KAN's groups): the module draws its own curves
            curves = module.curves(x2)
            _plot_curves(curves, f"{name}: {len(curves)} {type(module).__name__} functions", png)
            summary["layers"][name] = {"kind": type(module).__name__, "functions": len(curves),
                                       "width": x2.shape[1], "input_abs_mean": x2.abs().mean().item(),
                                       "plot": png.name}
    for name, ffn in ((n, m) for n, m in model.named_modules() if isinstance(m, KANFFN)):
        scores = unit_scores(activity[f"{name}.fc1"], activity[f"{name}.fc2"])
        ranked = scores.argsort(descending=True)
        summary["units"][name] = {
            "hidden": ffn.hidden, "score_max": scores.max().item(), "score_median": scores.median().item(),
            "units_below_5pct_of_max": (scores < 0.05 * scores.max()).float().mean().item(),
            "top_units": [{"unit": int(j), "score": float(scores[j])} for j in ranked[:top_k]],
            "bottom_units": [{"unit": int(j), "score": float(scores[j])} for j in ranked.flip(0)[:top_k]]}
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")
    return summary


def inspect_checkpoint(checkpoint: str | Path, out: str | Path | None = None, *, config: str | Path | None = None,
                       text: str = "pydoc", batches: int = 4, top_k: int = 9, symbolic: bool = False
                       ) -> dict[str, Any]:
    from ..surgery.pretrained import load_probe

    checkpoint = Path(checkpoint)
    probe = load_probe(checkpoint, config=config, text=text, calibration_batches=batches, eval_tokens=1)
    summary = inspect_model(probe.model, probe.calibration, out or checkpoint / "inspect", top_k=top_k,
                            symbolic=symbolic)
    return {"checkpoint": str(checkpoint), **summary}


def prune_checkpoint(checkpoint: str | Path, out: str | Path, *, unit_threshold: float | None = None,
                     edge_threshold: float | None = None, config: str | Path | None = None, text: str = "pydoc",
                     batches: int = 8, eval_tokens: int = 32768) -> dict[str, Any]:
    """Prune a saved KAN checkpoint by activity, measure quality before and after, save the pruned model."""
    from ..surgery.pretrained import copy_side_files, load_probe

    if unit_threshold is None and edge_threshold is None:
        raise ValueError("give unit_threshold and/or edge_threshold (fractions of each layer's largest score)")
    checkpoint, out = Path(checkpoint), Path(out)
    probe = load_probe(checkpoint, config=config, text=text, calibration_batches=batches, eval_tokens=eval_tokens)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "before": probe.quality(probe.model)}
    report = prune_model(probe.model, probe.calibration, unit_threshold=unit_threshold, edge_threshold=edge_threshold)
    result["after"] = probe.quality(probe.model)
    result["prune"] = report.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    probe.model.save_pretrained(out)
    copy_side_files(checkpoint, out, probe.run_config)
    (out / "prune_report.json").write_text(json.dumps(result, indent=2, default=str))
    return result
