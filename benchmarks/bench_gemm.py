"""PyTorch's own fp32 products against oneDNN's, on the products of an FFN step: what layers/gemm.py decides from.

For the GELU MLP and a parameter-matched B-spline KAN FFN (the RBF's shapes are the same) at one width, each of the
six products of a training step (per layer: forward ``x @ W^T``, input gradient ``gy @ W``, weight gradient
``gy^T @ x``), timed both ways in turns, ``--rounds`` rounds of ``--repeats`` calls (medians). Printed: each product's
two times, which one ``gemm.mm`` takes under oneDNN, and per FFN the step's six products by PyTorch alone against
``mm``'s routing, as a ratio measured in this process.

Then whole training steps (forward + backward) of the FFNs named by ``--ffns`` (default: the MLP, RBF and B-spline;
KAN FFNs on the ``fused`` path, which ``auto`` takes at these widths), each under both libraries in turns: each
FFN's step on oneDNN against its step on PyTorch's products, and each KAN FFN against the MLP on the same library
(medians of same-round ratios, with the lowest and highest round). With ``--gpt2``, whole GPT-2 training steps
instead (forward + backward + AdamW; 4 layers of ``--d-model``, 64-token sequences, ``--tokens`` a step, vocabulary
1024, the FFNs' parameters matched to the MLP's: at d 128 / 1024 tokens, the demo's GPT-2 as ``bench_model`` times it),
where the rest of the model keeps PyTorch's products under either library.

    python -m benchmarks.bench_gemm                        # d_model 384, 2048 tokens
    python -m benchmarks.bench_gemm --d-model 128 --tokens 1024 --ffns mlp rbf
    python -m benchmarks.bench_gemm --d-model 128 --tokens 1024 --gpt2 --ffns mlp bspline rbf wavelet --rounds 8
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch

from kanformer.evaluation.interleaved import machine, round_order
from kanformer.layers import gemm
from kanformer.layers.budget import match_hidden
from kanformer.layers.dispatch import kernel
from kanformer.train.allocator import configure as configure_malloc
from kanformer.train.allocator import current as current_malloc
from kanformer.train.optim import adamw

from .bench_ffn import Arm, add_malloc_argument, write_result


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
    # the library chosen (the machine's timing, from the cache or made now) before any row reads its routing: each
    # class of transposed products goes where that timing sent it (unresolved, every class read as PyTorch's)
    library = gemm.record()
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
    steps = _steps(args) if args.ffns else {}
    return {"benchmark": "gemm", "machine": machine(torch.device("cpu")), "torch": torch.__version__,
            "d_model": d, "tokens": n, "kan_hidden": hidden, "rows": rows, "totals": totals,
            "library": library, "malloc": current_malloc(), "steps": steps, "steps_of": "gpt2" if args.gpt2 else "ffn"}


class GPT2Arm:
    """A GPT-2 whose FFNs are ``name``'s (``bench_model.build_gpt2``), with its AdamW: ``step`` trains one batch."""

    SEQ = 64

    def __init__(self, name: str, d_model: int, tokens: int) -> None:
        from .bench_model import build_gpt2

        heads = math.gcd(d_model, max(1, d_model // 32))  # 32-wide heads where the width allows (d 128: 4)
        self.model = build_gpt2(name, n_layer=4, d_model=d_model, n_head=heads, seq=self.SEQ, vocab=1024,
                                device=torch.device("cpu"))
        self.optimizer = adamw(self.model.parameters(), lr=1e-4)  # the implementation training runs here
        self.gen = torch.Generator().manual_seed(0)
        self.shape = (tokens // self.SEQ, self.SEQ)

    def step(self) -> None:
        ids = torch.randint(0, 1024, self.shape, generator=self.gen)
        self.model(input_ids=ids, labels=ids).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _steps(args: argparse.Namespace) -> dict[str, Any]:
    """Each FFN's training step (``--gpt2``: its GPT-2's) under both libraries, in turns (``--rounds`` rounds, median
    of ``--repeats``)."""
    before = gemm.setting()
    names = ["mlp"] + [f for f in args.ffns if f != "mlp"]
    libs = ("torch", "onednn")
    arms = {}
    times: dict[str, list[float]] = {f"{name} {lib}": [] for name in names for lib in libs}
    try:
        with kernel("fused"):
            for lib in libs:  # each library's compiled graphs (guarded on it) before anything is timed
                gemm.set_library(lib)
                for name in names:
                    if name not in arms:
                        arms[name] = (GPT2Arm(name, args.d_model, args.tokens) if args.gpt2 else
                                      Arm(name, args.d_model, args.tokens, device=torch.device("cpu"),
                                          dtype=torch.float32, autocast=False, match="params"))
                    arms[name].step()
            for r in range(args.rounds):  # every other round in reverse order, as bench_ffn's rounds
                for lib in round_order(list(libs), r):
                    gemm.set_library(lib)
                    for name in round_order(names, r):
                        arms[name].step()
                        times[f"{name} {lib}"].append(_time(arms[name].step, args.repeats))
    finally:
        gemm.set_library(before)

    def ratios(num: list[float], den: list[float]) -> list[float]:
        r = [a / b for a, b in zip(num, den, strict=True)]
        return [statistics.median(r), min(r), max(r)]

    out = {}
    for name in names:
        t, o = times[f"{name} torch"], times[f"{name} onednn"]
        out[name] = {"torch_ms": statistics.median(t) * 1e3, "onednn_ms": statistics.median(o) * 1e3,
                     "onednn_over_torch": ratios(o, t)}
        if name != "mlp":  # the FFNs' step times over the MLP's; the GPT-2s' throughputs (tokens/s) over its
            for lib, mine in (("torch", t), ("onednn", o)):
                mlp = times[f"mlp {lib}"]
                out[name][f"x_mlp_{lib}"] = ratios(mlp, mine) if args.gpt2 else ratios(mine, mlp)
    return out


def format_table(result: dict[str, Any]) -> str:
    lib = result["library"]
    lines = [f"fp32 products of an FFN step, d_model={result['d_model']}, {result['tokens']} tokens, "
             f"[{result['machine']}], torch {result['torch']} (the B-spline's hidden width "
             f"{result['kan_hidden']}; medians; CPU malloc {result['malloc']}). This process's library: "
             f"{lib['library']} ({lib['source']}"
             + (f", auto's timing {lib['times_ms']}" if "times_ms" in lib else "") + ")", "",
             "| FFN | product | PyTorch ms | oneDNN ms | oneDNN / PyTorch | mm takes |", "|---|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['ffn']} | {r['product']} | {r['torch_ms']:.2f} | {r['onednn_ms']:.2f} | "
                     f"{r['onednn_ms'] / r['torch_ms']:.2f} | {r['routed']} |")
    lines.append("")
    for ffn, t in result["totals"].items():
        lines.append(f"{ffn}: six products {t['torch_ms']:.1f} ms by PyTorch, {t['routed_ms']:.1f} ms routed as "
                     f"gemm.mm routes them under oneDNN ({t['ratio']:.2f}x)")
    if result["steps"]:
        def span(r: list[float]) -> str:
            return f"{r[0]:.2f} ({r[1]:.2f} - {r[2]:.2f})"

        gpt2 = result.get("steps_of") == "gpt2"
        what = ("GPT-2 training steps (4 layers, forward + backward + AdamW; KAN FFNs on the fused path)" if gpt2
                else "FFN training steps (fused path)")
        vs_mlp = "tokens/s x MLP" if gpt2 else "x MLP"
        lines += ["", f"{what}, each library in turn (ratios: median (lowest - highest round)):",
                  "", f"| FFN | PyTorch ms | oneDNN ms | oneDNN / PyTorch | {vs_mlp}, PyTorch | {vs_mlp}, oneDNN |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, r in result["steps"].items():
            vs = (f"{span(r['x_mlp_torch'])} | {span(r['x_mlp_onednn'])}" if "x_mlp_torch" in r else "- | -")
            lines.append(f"| {name} | {r['torch_ms']:.1f} | {r['onednn_ms']:.1f} | {span(r['onednn_over_torch'])} | "
                         f"{vs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ffns", nargs="*", default=["mlp", "rbf", "bspline"],
                   help="FFNs whose whole training steps are timed under both libraries (none: products only)")
    p.add_argument("--gpt2", action="store_true",
                   help="time the --ffns' GPT-2s (4 layers, 64-token sequences) instead of the FFNs alone")
    add_malloc_argument(p)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    for flag in ("d_model", "tokens", "rounds", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.gpt2 and args.tokens % GPT2Arm.SEQ:
        p.error(f"--gpt2 takes --tokens in whole {GPT2Arm.SEQ}-token sequences, got {args.tokens}")
    # as bench_ffn and bench_model run: under glibc's defaults a d 768 KAN layer's 113 MB of features (and a
    # product's output that size) are faulted in afresh on every call
    configure_malloc(args.malloc)
    result = run(args)
    print(format_table(result))
    write_result(args.json, result)


if __name__ == "__main__":
    main()
