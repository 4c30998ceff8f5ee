"""PyTorch's own fp32 products against oneDNN's, on the products of an FFN step: what layers/gemm.py decides from.

For the GELU MLP and a parameter-matched B-spline KAN FFN (the RBF's shapes are the same) at one width, each of the
six products of a training step (per layer: forward ``x @ W^T``, input gradient ``gy @ W``, weight gradient
``gy^T @ x``), timed both ways in turns, ``--rounds`` rounds of ``--repeats`` calls (medians). Printed: each product's
two times, which one ``gemm.mm`` takes under oneDNN, and per FFN the step's six products by PyTorch alone against
``mm``'s routing, as a ratio measured in this process.

    python -m benchmarks.bench_gemm                        # d_model 384, 2048 tokens
    python -m benchmarks.bench_gemm --d-model 128 --tokens 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from kanformer.layers import gemm
from kanformer.layers.budget import match_hidden

from .bench_ffn import machine


def _products(n: int, widths: list[tuple[int, int]], g: torch.Generator) -> list[tuple[str, Any, Any]]:
    out = []
    for layer, (i, o) in enumerate(widths, 1):
        x, w, gy = (torch.randn(*s, generator=g) for s in ((n, i), (o, i), (n, o)))
        out += [(f"layer {layer} forward {n}x{i} @ {i}x{o}", x, w.t()),
                (f"layer {layer} input grad {n}x{o} @ {o}x{i}", gy, w),
                (f"layer {layer} weight grad {o}x{n} @ {n}x{i}", gy.t(), x)]
    return out


def _time(fn: Any, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not gemm.onednn_available():
        raise SystemExit("this PyTorch has no oneDNN (mkldnn): nothing to compare")
    d, n = args.d_model, args.tokens
    hidden = match_hidden("bspline", d)  # parameters matched to the GELU MLP of 4 d hidden units
    feats = 9  # a B-spline's default grid (5 intervals, cubic: 8 splines) and its SiLU base branch
    pad = -hidden % 16 if hidden % 4 else 0  # as the fused path pads the output width (lean.output_pad)
    ffns = {"mlp": [(d, 4 * d), (4 * d, d)], "bspline": [(feats * d, hidden + pad), (feats * hidden, d)]}
    g = torch.Generator().manual_seed(0)
    rows = []
    for ffn, widths in ffns.items():
        for name, a, b in _products(n, widths, g):
            both = {"torch": lambda a=a, b=b: a @ b, "onednn": lambda a=a, b=b: gemm._onednn_linear(a, b.t(), None)}
            for fn in both.values():
                fn()
            times: dict[str, list[float]] = {k: [] for k in both}
            for _ in range(args.rounds):
                for k, fn in both.items():
                    times[k].append(_time(fn, args.repeats))
            ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            rows.append({"ffn": ffn, "product": name, "torch_ms": ms["torch"], "onednn_ms": ms["onednn"],
                         "routed": "onednn" if gemm._suits(a, b) else "torch"})
    totals = {}
    for ffn in ffns:
        mine = [r for r in rows if r["ffn"] == ffn]
        torch_ms = sum(r["torch_ms"] for r in mine)
        routed_ms = sum(r[f"{r['routed']}_ms"] for r in mine)
        totals[ffn] = {"torch_ms": torch_ms, "routed_ms": routed_ms, "ratio": routed_ms / torch_ms}
    return {"benchmark": "gemm", "machine": machine(torch.device("cpu")), "torch": torch.__version__,
            "d_model": d, "tokens": n, "kan_hidden": hidden, "rows": rows, "totals": totals,
            "library": gemm.record()}


def format_table(result: dict[str, Any]) -> str:
    lib = result["library"]
    lines = [f"fp32 products of an FFN step, d_model={result['d_model']}, {result['tokens']} tokens, "
             f"[{result['machine']}], torch {result['torch']} (the B-spline's hidden width "
             f"{result['kan_hidden']}; medians). This process's library: {lib['library']} ({lib['source']}"
             + (f", auto's timing {lib['times_ms']}" if "times_ms" in lib else "") + ")", "",
             "| FFN | product | PyTorch ms | oneDNN ms | oneDNN / PyTorch | mm takes |", "|---|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['ffn']} | {r['product']} | {r['torch_ms']:.2f} | {r['onednn_ms']:.2f} | "
                     f"{r['onednn_ms'] / r['torch_ms']:.2f} | {r['routed']} |")
    lines.append("")
    for ffn, t in result["totals"].items():
        lines.append(f"{ffn}: six products {t['torch_ms']:.1f} ms by PyTorch, {t['routed_ms']:.1f} ms routed as "
                     f"gemm.mm routes them under oneDNN ({t['ratio']:.2f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    for flag in ("d_model", "tokens", "rounds", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    result = run(args)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
