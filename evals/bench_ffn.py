"""Forward+backward time and activation memory of every registered FFN against the GELU MLP, in one process.

Each FFN gets the hidden width that matches the MLP of width 4*d_model (by parameters, or FLOPs with
``--match flops``). Timings: warm-up excluded, CUDA synchronised, median of ``--repeats``. Activation memory: the
bytes of the distinct tensors autograd saves for backward (parameters excluded), measured with
``torch.autograd.graph.saved_tensors_hooks`` on any device; on CUDA also the peak allocated above the baseline.

    python -m evals.bench_ffn                          # d_model 384, 2048 tokens, fp32, CPU
    python -m evals.bench_ffn --device cuda --dtype bf16 --d-model 768 --tokens 16384 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

import torch

from kanformer import create_ffn, list_ffns, match_hidden
from kanformer.allocator import MALLOC_CHOICES
from kanformer.allocator import configure as configure_malloc
from kanformer.evaluation import median_time, saved_activation_bytes
from kanformer.layers.lean import set_kernel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench_one(name: str, d_model: int, tokens: int, *, device: torch.device, dtype: torch.dtype,
              autocast: bool, match: str, warmup: int, repeats: int) -> dict[str, Any]:
    hidden = match_hidden(name, d_model, target=match)
    param_dtype = torch.float32 if autocast else dtype
    ffn = create_ffn(name, d_model, hidden).to(device=device, dtype=param_dtype)
    x = torch.randn(tokens, d_model, device=device, dtype=param_dtype, requires_grad=True)
    grad = torch.randn(tokens, d_model, device=device, dtype=dtype)
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if autocast else torch.enable_grad

    def step() -> None:
        with ctx():
            y = ffn(x)
        y.backward(grad.to(y.dtype))
        x.grad = None
        for p in ffn.parameters():
            p.grad = None

    def forward() -> None:
        with torch.no_grad(), ctx():
            ffn(x)

    timings = {label: median_time(fn, device, warmup=warmup, repeats=repeats)
               for label, fn in (("fwd_bwd", step), ("fwd", forward))}

    with ctx():
        act = saved_activation_bytes(ffn, x)
    row = {"ffn": name, "hidden": hidden, "params": ffn.num_params(), "flops_per_token": ffn.flops_per_token(),
           "fwd_bwd_s": timings["fwd_bwd"], "fwd_s": timings["fwd"], "saved_activation_bytes": act}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with ctx():
            y = ffn(x)
        row["cuda_peak_activation_bytes"] = torch.cuda.max_memory_allocated(device) - base
        del y
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    names = args.ffns or list_ffns()
    unknown = sorted(set(names) - set(list_ffns()))
    if unknown:
        raise SystemExit(f"Unknown FFN(s) {', '.join(unknown)}. Available: {', '.join(list_ffns())}")
    names = ["mlp"] + [n for n in names if n != "mlp"]  # the reference runs first
    autocast = dtype != torch.float32 and not args.no_autocast
    torch.manual_seed(0)
    rows = []
    for name in names:
        rows.append(bench_one(name, args.d_model, args.tokens, device=device, dtype=dtype, autocast=autocast,
                              match=args.match, warmup=args.warmup, repeats=args.repeats))
        print(f"  {name:<10} done", flush=True)
    ref = rows[0]
    for row in rows:
        row["time_ratio"] = row["fwd_bwd_s"] / ref["fwd_bwd_s"]
        row["fwd_time_ratio"] = row["fwd_s"] / ref["fwd_s"]
        row["memory_ratio"] = row["saved_activation_bytes"] / ref["saved_activation_bytes"]
    return {
        "benchmark": "ffn", "d_model": args.d_model, "tokens": args.tokens, "dtype": args.dtype,
        "autocast": autocast, "match": args.match, "device": str(device), "repeats": args.repeats,
        "machine": machine(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "rows": rows,
    }


def machine(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count: what a benchmark table names as its machine."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def add_malloc_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--malloc", choices=MALLOC_CHOICES, default="keep",
                   help="CPU allocator for every arm (kanformer/allocator.py): keep freed large blocks for reuse "
                   "(default), or the system's default behaviour")


def format_table(result: dict[str, Any]) -> str:
    head = (f"FFN benchmark: d_model={result['d_model']}, tokens={result['tokens']}, {result['dtype']}"
            f"{' autocast' if result['autocast'] else ''}, {result['device']} [{result['machine']}], "
            f"KAN path {result.get('kernel', 'auto')}, CPU malloc {result.get('malloc', 'system')}, "
            f"widths matched by {result['match']} to the GELU MLP (4*d), median of {result['repeats']}")
    lines = [head, "",
             "| FFN | hidden | params | MFLOPs/token | fwd+bwd ms | x MLP | fwd ms | x MLP | saved act. MB | x MLP |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['ffn']} | {r['hidden']} | {r['params']:,} | {r['flops_per_token'] / 1e6:.2f} | "
            f"{r['fwd_bwd_s'] * 1e3:.1f} | {r['time_ratio']:.2f} | "
            f"{r['fwd_s'] * 1e3:.1f} | {r['fwd_time_ratio']:.2f} | "
            f"{r['saved_activation_bytes'] / 2**20:.1f} | {r['memory_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--no-autocast", action="store_true", help="cast the modules to --dtype instead of autocasting")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--match", choices=["params", "flops"], default="params")
    p.add_argument("--ffns", nargs="*", help=f"subset of: {', '.join(list_ffns())} (default: all)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--kernel", choices=["auto", "lean", "fused", "triton", "reference"], default="auto",
                   help="KAN layer path (auto, when training: Triton kernels where they apply, else "
                   "the compiled lean path)")
    add_malloc_argument(p)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    for flag in ("d_model", "tokens", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    set_kernel(args.kernel)
    kept = configure_malloc(args.malloc)
    result = run(args)
    result["kernel"], result["malloc"] = args.kernel, "keep" if kept else "system"
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
