"""Ranges over repeated runs of the FFN benchmark or the GPT-2 benchmark: what the README's figures are.

One run of ``benchmarks.bench_ffn`` on a shared machine moves by 10 - 20 % with the hour (the GELU MLP against
itself, or SwiGLU, which should read ~1.0, reads 0.9 - 1.1), so a figure is the range over several runs, each in a
process of its own:

    for i in 1 2 3; do python -m benchmarks.bench_ffn --compiled-reference --json run$i.json; done
    python -m benchmarks.bench_ranges run1.json run2.json run3.json

Runs of ``benchmarks.bench_model --json`` (the whole GPT-2) give, per arm, the range of its median same-round ratio
of training tokens/s to the MLP GPT-2's over the runs that had the arm, their number, and how many fell under the
KAN arms' target (0.85x; bold where none did); the control arm (``--control``) is a baseline like SwiGLU.

For each FFN: the range (lowest - highest) over the runs of its median same-round ratio to the GELU MLP, forward +
backward (bold where every run is within the target: 1.15x the MLP's step, the wavelet 1.5x), of its compiled
reference's where the runs timed it, and of its forward without autograd; its saved activations against the MLP's and
the paths ``auto`` chose. The runs must share their settings (width, tokens, dtype, device, width matching, path
rule, allocator, matmul library): a range over different settings would mean nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TARGET = 1.15  # the KAN FFNs' target: forward + backward within 1.15x the MLP's time
TARGETS = {"wavelet": 1.5}
MODEL_TARGET = 0.85  # the KAN GPT-2s' target: training tokens/s at least 0.85x the MLP GPT-2's
BASELINES = ("mlp", "swiglu", "mlp (control)")  # the last: bench_model --control's arm (bench_model.CONTROL)
SETTINGS = {"ffn": ("d_model", "tokens", "dtype", "autocast", "device", "match", "kernel", "malloc", "gemm"),
            "model": ("n_layer", "d_model", "seq", "batch", "bf16", "compiled", "device", "kernel", "kernel_memory",
                      "adamw", "malloc", "gemm", "generate")}


def load(paths: list[str]) -> list[dict[str, Any]]:
    """The runs' JSON results, checked to be runs of one benchmark (bench_ffn or bench_model) and one setting."""
    runs = []
    for p in paths:
        try:
            run = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{p}: not a readable JSON result of benchmarks.bench_ffn or bench_model ({e})") from None
        if not isinstance(run, dict) or run.get("benchmark") not in SETTINGS or not run.get("rows"):
            raise SystemExit(f"{p}: not a result of benchmarks.bench_ffn or benchmarks.bench_model --json (no "
                             f"'benchmark': 'ffn' or 'model', and rows)")
        runs.append(run)
    kind = runs[0]["benchmark"]
    for p, run in zip(paths[1:], runs[1:], strict=True):
        if run["benchmark"] != kind:
            raise SystemExit(f"{p}: a {run['benchmark']!r} benchmark's result among {kind!r} ones ({paths[0]}); "
                             "ranges need runs of one benchmark")
        diff = [f"{k} {runs[0].get(k)!r} in {paths[0]}, {run.get(k)!r} here" for k in SETTINGS[kind]
                if run.get(k) != runs[0].get(k)]
        if diff:
            raise SystemExit(f"{p}: the runs' settings differ ({'; '.join(diff)}); ranges need runs of one setting")
    return runs


def _span(values: list[float]) -> str:
    """"lowest - highest" to two decimals, one number where they agree, "-" where there are none."""
    if not values:
        return "-"
    lo, hi = f"{min(values):.2f}", f"{max(values):.2f}"
    return lo if lo == hi else f"{lo} - {hi}"


def _ratio_cells(values: list[float], within: bool) -> tuple[str, str]:
    """A row's range cell (bold where every run met the target) and its per-run cell."""
    span = _span(values)
    return (f"**{span}**" if within else span), " / ".join(f"{v:.2f}" for v in values)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of FFN benchmark runs (:func:`summarize_ffn`) or GPT-2 benchmark runs (:func:`summarize_model`)."""
    return summarize_model(runs) if runs[0]["benchmark"] == "model" else summarize_ffn(runs)


def summarize_ffn(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per FFN present in every run: the ranges (as numbers), the per-run ratios and whether each met its target."""
    names = [r["ffn"] for r in runs[0]["rows"] if all(any(x["ffn"] == r["ffn"] for x in run["rows"]) for run in runs)]
    rows = []
    for name in names:
        mine = [next(x for x in run["rows"] if x["ffn"] == name) for run in runs]
        target = None if name in BASELINES else TARGETS.get(name, TARGET)
        ratios = [x["time_ratio"] for x in mine]
        rows.append({
            "ffn": name, "target": target, "time_ratio": ratios,
            "within_target": target is not None and max(ratios) <= target,
            "compiled_reference_ratio": [x["compiled_reference_ratio"] for x in mine
                                         if "compiled_reference_ratio" in x],
            "fwd_time_ratio": [x["fwd_time_ratio"] for x in mine],
            "round_range": [min(x.get("time_ratio_low", x["time_ratio"]) for x in mine),
                            max(x.get("time_ratio_high", x["time_ratio"]) for x in mine)],
            "memory_ratio": [x["memory_ratio"] for x in mine],
            "paths": sorted({x.get("path", "") for x in mine} - {""}),
        })
    return {"benchmark": "ffn", **{k: runs[0].get(k) for k in SETTINGS["ffn"]}, "runs": len(runs),
            "machines": sorted({run.get("machine", "?") for run in runs}),
            "mlp_step_ms": [run["rows"][0]["fwd_bwd_s"] * 1e3 for run in runs], "rows": rows}


def summarize_model(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm of any run, over the runs that had it: the median same-round throughput ratios to the MLP GPT-2, their
    single rounds' range, how many runs fell under the target, and the saved activations' ratio."""
    names: list[str] = []
    for run in runs:
        names += [r["ffn"] for r in run["rows"] if r["ffn"] not in names]
    rows = []
    for name in names:
        mine = [x for run in runs for x in run["rows"] if x["ffn"] == name]
        target = None if name in BASELINES or runs[0].get("generate") else MODEL_TARGET  # a target for training
        ratios = [x["throughput_ratio"] for x in mine]
        rows.append({
            "ffn": name, "target": target, "throughput_ratio": ratios,
            "under_target": 0 if target is None else sum(r < target for r in ratios),
            "within_target": target is not None and min(ratios) >= target,
            "round_range": [min(x.get("throughput_ratio_low", x["throughput_ratio"]) for x in mine),
                            max(x.get("throughput_ratio_high", x["throughput_ratio"]) for x in mine)],
            "activation_ratio": [x["activation_ratio"] for x in mine if "activation_ratio" in x],
        })
    metric = "generate_tokens_per_s" if runs[0].get("generate") else "train_tokens_per_s"
    return {"benchmark": "model", **{k: runs[0].get(k) for k in SETTINGS["model"]}, "runs": len(runs),
            "machines": sorted({run.get("machine", "?") for run in runs}),
            "mlp_tokens_per_s": [run["rows"][0][metric] for run in runs], "rows": rows}


def format_table(s: dict[str, Any]) -> str:
    if s.get("benchmark") == "model":
        return format_model_table(s)
    head = (f"FFN benchmark over {s['runs']} runs: d_model={s['d_model']}, tokens={s['tokens']}, {s['dtype']}"
            f"{' autocast' if s['autocast'] else ''}, {s['device']} [{', '.join(s['machines'])}], widths matched by "
            f"{s['match']}; the GELU MLP's fwd+bwd step "
            f"{' / '.join(f'{t:.1f}' for t in s['mlp_step_ms'])} ms. Ranges: lowest - highest of the runs' median "
            f"ratios to the MLP; bold: every run within the target ({TARGET}x"
            + "".join(f", {name} {t}x" for name, t in TARGETS.items()) + ")")
    lines = [head, "", "| FFN | path | fwd+bwd x MLP | per run | single rounds | compiled reference x MLP | "
             "forward x MLP | saved act. x MLP |", "|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['ffn']} | {', '.join(r['paths']) or '-'} | "
                     f"{' | '.join(_ratio_cells(r['time_ratio'], r['within_target']))} | {_span(r['round_range'])} | "
                     f"{_span(r['compiled_reference_ratio'])} | {_span(r['fwd_time_ratio'])} | "
                     f"{_span(r['memory_ratio'])} |")
    return "\n".join(lines)


def format_model_table(s: dict[str, Any]) -> str:
    what = f" (generation, {s['generate']} new tokens a sequence)" if s.get("generate") else ""
    head = (f"GPT-2 benchmark{what} over {s['runs']} runs: {s['n_layer']} x {s['d_model']}, {s['batch']} x "
            f"{s['seq']} tokens{', bf16' if s['bf16'] else ''}{', compiled' if s['compiled'] else ''}, {s['device']} "
            f"[{', '.join(s['machines'])}]; the MLP GPT-2's tokens/s "
            f"{' / '.join(f'{t:,.0f}' for t in s['mlp_tokens_per_s'])}. Ranges: lowest - highest of the runs' median "
            f"same-round ratios to the MLP GPT-2, over the runs that had the arm"
            + ("" if s.get("generate") else f"; bold: every run at or above the target ({MODEL_TARGET}x)"))
    lines = [head, "", "| arm | tokens/s x MLP | runs | under the target | per run | single rounds | "
             "activations x MLP |", "|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        span, per_run = _ratio_cells(r["throughput_ratio"], r["within_target"])
        lines.append(f"| {r['ffn']} | {span} | {len(r['throughput_ratio'])} | "
                     f"{'-' if r['target'] is None else r['under_target']} | {per_run} | {_span(r['round_range'])} | "
                     f"{_span(r['activation_ratio'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+",
                   help="JSON results of python -m benchmarks.bench_ffn --json or bench_model --json (one per run)")
    p.add_argument("--json", help="also write the summary to this JSON file")
    args = p.parse_args(argv)
    summary = summarize(load(args.results))
    print(format_table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
