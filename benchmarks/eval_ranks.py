"""``auto`` in a distributed evaluation: several local ranks evaluate one KAN FFN without grad, stepping together as a
DDP evaluation does; the first local rank times the forward paths, the others run the reference until its choice is in
the disk cache and then take it, so the machine's ranks run one path.

    python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.eval_ranks --seconds 150

Set ``KANFORMER_EVAL_COMPILE_AFTER_S`` (the wait before the background compile; default 30 s) and a fresh
``KANFORMER_CACHE`` to watch the whole sequence. Each rank prints when it first ran each path, its last call times and
its output's largest distance from the reference forward (same autocast dtype).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from kanformer import create_ffn, match_hidden
from kanformer.layers import autotune
from kanformer.layers.dispatch import default_kernel, kernel


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ffn", default="bspline")
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--seconds", type=float, default=150.0, help="how long every rank evaluates")
    args = p.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        p.error("run under torch.distributed.run (torchrun), e.g. python -m torch.distributed.run "
                "--nproc_per_node 2 -m benchmarks.eval_ranks")
    local = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    torch.manual_seed(0)
    ffn = create_ffn(args.ffn, args.d_model, match_hidden(args.ffn, args.d_model)).to(device).eval()
    x = torch.randn(args.tokens, args.d_model, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    first_seen: dict[str, tuple[float, float]] = {}
    last: list[float] = []
    with torch.no_grad(), autocast:
        with kernel("reference"):
            ref = ffn(x).float()
        t0 = time.monotonic()  # after the reference (and the matmul library's choice): auto's calls, at least one
        with default_kernel("auto"):
            while True:
                # the ranks stop together (each rank's own clock would end one loop a call before another's, which
                # then waited for it); the vote also steps them together, as a DDP evaluation's collectives do
                done = torch.tensor([float(time.monotonic() - t0 >= args.seconds)], device=device)
                dist.all_reduce(done, op=dist.ReduceOp.MAX)
                if done.item():
                    break
                start = time.perf_counter()
                y = ffn(x)
                if cuda:
                    torch.cuda.synchronize(device)
                ms = (time.perf_counter() - start) * 1e3
                chosen = [d["path"] for k, d in autotune.decisions(ffn).items() if k.endswith(" | eval")]
                first_seen.setdefault(chosen[0] if chosen else "reference", (time.monotonic() - t0, ms))
                last = (last + [ms])[-5:]
    err = (y.float() - ref).abs().max().item()
    seen = ", ".join(f"{path} from {s:.1f} s (that call {ms:.0f} ms)" for path, (s, ms) in first_seen.items())
    print(f"rank {dist.get_rank()} (local {local}): {seen}; last calls {', '.join(f'{t:.1f}' for t in last)} ms; "
          f"max |y - reference| {err:.3g}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
