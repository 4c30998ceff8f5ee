"""AdamW's implementations (``train.adamw``: fused, foreach, loop) on GPT-2s with each FFN, in one process.

For each FFN (``--arms``), a GPT-2 built as ``bench_model`` builds it, and one AdamW per implementation over its
parameters. The implementations take turns, ``--rounds`` times: each turn ``--steps`` training steps (forward, backward,
the optimizer's step) on the same batches, then the same number of optimizer steps alone (gradients in place). A figure
is the median over the rounds, and a ratio the median of the same-round ratios to the ``loop`` (PyTorch's default on
CPU), so a machine that drifts moves the implementations alike. The parameter tensors' count is printed beside: the
loop's cost grows with it.

    python -m benchmarks.bench_adamw                              # the demo's GPT-2 shape (4 x 128), CPU
    python -m benchmarks.bench_adamw --arms mlp rbf --device cuda --d-model 768 --n-layer 12
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from kanformer.evaluation.interleaved import machine, round_order
from kanformer.train.allocator import configure as configure_malloc
from kanformer.train.optim import adamw

from .bench_ffn import add_malloc_argument, write_result
from .bench_model import build_gpt2

IMPLS = ("loop", "foreach", "fused")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_arm(ffn: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The optimizer's step and the training step of one FFN's GPT-2 under each implementation, interleaved."""
    model = build_gpt2(ffn, n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head, seq=args.seq,
                       vocab=args.vocab, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opts = {impl: adamw(params, impl=impl, lr=1e-4) for impl in IMPLS}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    times: dict[str, dict[str, list[float]]] = {impl: {"train": [], "optimizer": []} for impl in IMPLS}

    def train_step(opt: torch.optim.Optimizer) -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for opt in opts.values():  # warm-up: every path compiled or chosen, every optimizer's state made
        for _ in range(2):
            train_step(opt)
    for r in range(args.rounds + 1):  # the first round warms up
        for impl, opt in round_order(list(opts.items()), r):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                train_step(opt)
            _sync(device)
            t1 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()  # gradients in place for the optimizer alone
            _sync(device)
            t2 = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            _sync(device)
            t3 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            if r:
                times[impl]["train"].append((t1 - t0) / args.steps * 1e3)
                times[impl]["optimizer"].append((t3 - t2) / args.steps * 1e3)
    row: dict[str, Any] = {"ffn": ffn, "tensors": len(params), "params": sum(p.numel() for p in params)}
    for impl in IMPLS:
        for what in ("train", "optimizer"):
            ts, base = times[impl][what], times["loop"][what]
            row[f"{impl}_{what}_ms"] = statistics.median(ts)
            row[f"{impl}_{what}_x_loop"] = statistics.median(t / b for t, b in zip(ts, base, strict=True))
    return row


def format_table(result: dict[str, Any]) -> str:
    head = (f"AdamW implementations, GPT-2 ({result['n_layer']} x {result['d_model']}, {result['batch']} x "
            f"{result['seq']} tokens), {result['device']} [{result['machine']}], {result['rounds']} rounds of "
            f"{result['steps']} steps per implementation, interleaved, every other round in reverse order (medians; x "
            f"loop: median same-round ratio)")
    lines = [head, "", "| FFN | tensors | impl | optimizer step ms | x loop | training step ms | x loop |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        for impl in IMPLS:
            lines.append(f"| {row['ffn']} | {row['tensors']} | {impl} | {row[f'{impl}_optimizer_ms']:.2f} | "
                         f"{row[f'{impl}_optimizer_x_loop']:.2f} | {row[f'{impl}_train_ms']:.1f} | "
                         f"{row[f'{impl}_train_x_loop']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="*", default=["mlp", "rbf"])
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10, help="steps per implementation and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_malloc_argument(p)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    configure_malloc(args.malloc)
    device = torch.device(args.device)
    rows = [bench_arm(ffn, args, device) for ffn in args.arms]
    result = {"benchmark": "adamw", "device": str(device), "machine": machine(device), "torch": torch.__version__,
              **{k: getattr(args, k) for k in ("n_layer", "d_model", "seq", "batch", "steps", "rounds")}, "rows": rows}
    print(format_table(result))
    write_result(args.json, result)


if __name__ == "__main__":
    main()
