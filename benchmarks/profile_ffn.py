r"""Where an FFN's training step spends its time: the GELU MLP and each named FFN (on the KAN path named with it) under
``torch.profiler``, the operators and kernels that took the most device time (self time: CUDA kernels on a GPU, CPU
operators on a CPU), and per step the wall time (median, timed apart from the profiler) beside the busy time the
profiler adds up (on a GPU, a wall time well above it: the step waits on the host, launches and Python, not on the
device). On a GPU also the host's side: kernel launches a step, and the host events by their own CPU time. On every
device the eager operators a step: the ATen calls made outside any compiled graph and outside another operator, each a
dispatch on the host (on a GPU, with its kernels), which the compiled graphs' own operators are not.

    python -m benchmarks.profile_ffn --device cuda --arms bspline:fused rational:triton --json out/prof.json
    python -m benchmarks.profile_ffn --arms rbf:lean --d-model 128 --tokens 1024      # CPU
    python -m benchmarks.profile_ffn --device cuda --compile --arms bspline chebyshev   # as in a compiled model

``--compile-options JSON`` profiles every arm under that set of compiler options for the fused path's helpers
(layers/compile_options.py; ``ffn:fused`` arms), to see what they change on the host.

``--compile`` profiles ``torch.compile`` of each arm's FFN, the MLP's too: on the kit's paths the KAN FFN's lean
Functions are traced into the graph, as ``train.compile=model`` runs them (``ffn:reference``: the compiled reference).

On a CPU, ``--cpu-kernels`` times each compiled C++ loop of the fused graphs under the profiler (the compiler's
``cpp.enable_kernel_profile``), so the table names the loops rather than the graph that calls them; ``--loop-widths``
says, for every compiled CPU loop that touches a bf16 / fp16 value, the vector width the compiler gave it. PyTorch's
C++ code generator gives a fused loop bf16's width (32 lanes on AVX-512) only when every computation fused into it
touches a low-precision value; one that computes in fp32 alone drops the loop to fp32's 16 lanes, where each bf16 load
and store is a masked half-width one (docs/speed.md, *A third machine*: what cost the B-spline FFN 1.18 -> 1.11x the
MLP's step on a Zen 5). Such loops are listed as *mixed*. The arms compile afresh for it (compiler caches off for
their first steps), on the path they name (``bspline:fused``; ``auto`` compiles in a background process it cannot
see)::

    python -m benchmarks.profile_ffn --device cpu --dtype bf16 --d-model 384 --tokens 2048 --arms bspline:fused \
        rbf:fused --cpu-kernels --loop-widths

Each arm is profiled on its own after ``--warmup`` untimed steps (compilation and ``auto``'s choice fall there), over
``--steps`` steps of forward + backward, as bench_ffn times them; the JSON is rewritten after each arm.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_ffn import DTYPES, Arm, write_result
from benchmarks.bench_model import path
from kanformer import list_ffns
from kanformer.evaluation.interleaved import machine
from kanformer.evaluation.metrics import median_time
from kanformer.layers.compile_options import compile_options, options_tag, parse
from kanformer.layers.dispatch import KERNELS
from kanformer.train.allocator import configure as configure_malloc


def parse_arm(spec: str) -> tuple[str, str]:
    """``ffn[:kernel]`` (kernel auto when left out) -> (ffn, kernel); unknown names raise naming the allowed ones."""
    name, _, mode = spec.partition(":")
    mode = mode or "auto"
    if name not in list_ffns():
        raise SystemExit(f"Unknown FFN {name!r} in --arms {spec!r}. Available: {', '.join(list_ffns())}")
    if mode not in KERNELS:
        raise SystemExit(f"Unknown KAN kernel {mode!r} in --arms {spec!r}. Available: {', '.join(KERNELS)}")
    return name, mode


class LoopWidths:
    """Records, while active, each compiled CPU loop's bodies (one per computation fused into it), how many touch a
    bf16 / fp16 value and the vector width chosen (``torch._inductor.codegen.cpp``'s tiling choice; private API: where
    this PyTorch has none of it, ``available`` is False and nothing is recorded)."""

    def __init__(self) -> None:
        try:
            from torch._inductor.codegen import cpp
            self._cpp = cpp
            self.available = all(hasattr(cpp, a) for a in ("TilingSelect", "_get_loop_body", "get_loop_body_lowp_fp"))
        except ImportError:
            self.available = False
        self.loops: list[dict[str, Any]] = []

    def __enter__(self) -> LoopWidths:
        if self.available:
            cpp, original = self._cpp, self._cpp.TilingSelect.select_tiling
            self._original = original

            def select_tiling(tiling: Any, fn_list: Any, var_sizes_list: Any) -> Any:
                chosen = original(tiling, fn_list, var_sizes_list)
                try:
                    low = [cpp.get_loop_body_lowp_fp(b)[0] for b in cpp._get_loop_body(fn_list)]
                except Exception:  # noqa: BLE001 - a diagnostic: a loop it cannot read is left out
                    return chosen
                if any(t is not None for t in low):
                    self.loops.append({"sizes": str(var_sizes_list[0]), "bodies": len(low),
                                       "low_precision_bodies": sum(t is not None for t in low),
                                       "lanes": list(chosen[0])})
                return chosen

            cpp.TilingSelect.select_tiling = select_tiling
        import torch._inductor.config as inductor_config

        self._config = inductor_config
        self._caches = inductor_config.force_disable_caches
        inductor_config.force_disable_caches = True  # a cached graph is not generated again: nothing to see
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.available:
            self._cpp.TilingSelect.select_tiling = self._original
        self._config.force_disable_caches = self._caches

    def summary(self) -> dict[str, Any]:
        """The loops touching low-precision values; ``mixed``: those with a body that does not, vectorised at fewer
        lanes than this CPU's bf16 vectors hold (an fp32 loop's width, or scalar)."""
        lanes = 0
        if self.available:
            from torch._inductor import cpu_vec_isa

            isa = cpu_vec_isa.pick_vec_isa()
            lanes = isa.nelements(dtype=torch.bfloat16) if isa else 0
        mixed = [r for r in self.loops if r["low_precision_bodies"] < r["bodies"]
                 and (not r["lanes"] or max(r["lanes"]) < lanes)]
        return {"available": self.available, "bf16_lanes": lanes, "loops": self.loops, "mixed": mixed}


def format_widths(widths: dict[str, Any]) -> str:
    if not widths["available"]:
        return "loop widths: not readable on this PyTorch (its C++ code generator's tiling choice moved)"
    loops, mixed = widths["loops"], widths["mixed"]
    lines = [f"loop widths: {len(loops)} compiled CPU loops touch low-precision values; {len(mixed)} mixed (a body "
             f"in fp32 alone), at fewer lanes than bf16's {widths['bf16_lanes']}" + (":" if mixed else "")]
    lines += [f"  {r['sizes']}: {r['low_precision_bodies']} of {r['bodies']} bodies low-precision, "
              f"{max(r['lanes']) if r['lanes'] else 'scalar'} lanes" for r in mixed]
    return "\n".join(lines)


def profile_arm(name: str, mode: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One FFN's step under the profiler: wall and device-busy milliseconds per step, and the top operators."""
    dtype = DTYPES[args.dtype]
    # the GPU check (bench_model --gpu) calls this with a namespace of its own, without the CPU-only flags
    widths = LoopWidths() if getattr(args, "loop_widths", False) and name not in ("mlp", "swiglu") else None
    with path(mode):
        with widths or contextlib.nullcontext():  # the compilation: the Arm's first step, the compile, the warm-up
            torch.manual_seed(0)
            arm = Arm(name, args.d_model, args.tokens, device=device, dtype=dtype, autocast=dtype != torch.float32,
                      match="params")
            step = arm.step
            if args.compile:  # its first step (the compilation) falls before the warm-up
                kind = "reference" if mode == "reference" else "kit"
                arm.compile(kind)
                step = lambda: arm.step_compiled(kind)  # noqa: E731
            for _ in range(args.warmup):
                step()
        # the wall time outside the profiler (its own overhead, largest in its first cycle, would swell it), a step
        # synchronised at each end as bench_ffn times it
        wall_ms = median_time(step, device, warmup=0, repeats=args.steps) * 1e3
        cuda = device.type == "cuda"
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    # the self times add up to the busy time: on a GPU the kernels' (and copies') own events, not the operators that
    # launched them, which carry the same time again
    averages = prof.key_averages()
    events = [e for e in averages if getattr(e, key) > 0
              and (not cuda or e.device_type == torch.autograd.DeviceType.CUDA)]
    busy_ms = sum(getattr(e, key) for e in events) / 1e3 / args.steps
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    top = [{"name": e.key, "ms_per_step": getattr(e, key) / 1e3 / args.steps, "calls_per_step": e.count / args.steps,
            "share": getattr(e, key) / 1e3 / args.steps / busy_ms if busy_ms else 0.0} for e in events[: args.top]]
    row = {"ffn": name, "kernel": mode if name not in ("mlp", "swiglu") else "-", "hidden": arm.hidden,
           "path": arm.path, "compiled": bool(args.compile), "wall_ms": wall_ms, "busy_ms": busy_ms,
           "busy_kind": "device" if cuda else "cpu", "top": top}
    row["eager_ops_per_step"], row["eager_ops"] = eager_operators(prof.events(), args.steps)
    if widths is not None:
        row["loop_widths"] = widths.summary()
    if cuda:  # where a step that waits on the host spends the host's time
        row["host"] = host_summary(averages, args.steps, args.top)
    return row


COMPILED_REGIONS = ("Torch-Compiled Region", "CompiledFxGraph", "CompiledFunction")  # a compiled graph's events


def eager_operators(events: Any, steps: int) -> tuple[float, dict[str, float]]:
    """ATen calls a step made eagerly (``events``: the profiler's, with their parents): those with no ATen call and no
    compiled graph among their parents, and per name, most first."""
    counts: dict[str, int] = {}
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        while parent is not None and not (parent.name.startswith("aten::")
                                          or any(k in parent.name for k in COMPILED_REGIONS)):
            parent = parent.cpu_parent
        if parent is None:
            counts[e.name] = counts.get(e.name, 0) + 1
    per_step = {k: v / steps for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return sum(per_step.values()), per_step


LAUNCHES = ("LaunchKernel", "cuLaunch", "cudaLaunch")  # the runtime's and the driver's kernel launch calls


def host_summary(averages: Any, steps: int, top: int) -> dict[str, Any]:
    """The host side of a profiled step: kernel launches a step (the CUDA runtime's and driver's launch calls,
    Triton's included), and the host events (operators, compiled regions, autograd Functions, runtime calls) by self
    CPU time a step. Their self times add up to the host time spent inside profiled events; the rest of a step's wall
    time is Python between them, or waiting."""
    events = [e for e in averages if e.device_type == torch.autograd.DeviceType.CPU and e.self_cpu_time_total > 0]
    launches = sum(e.count for e in averages if any(k in e.key for k in LAUNCHES)) / steps
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"launches_per_step": launches,
            "self_ms_per_step": sum(e.self_cpu_time_total for e in events) / 1e3 / steps,
            "top": [{"name": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                     "calls_per_step": e.count / steps} for e in events[:top]]}


def format_arm(row: dict[str, Any], mlp: dict[str, Any] | None) -> str:
    ratio = "" if mlp is None or mlp is row else (f", {row['wall_ms'] / mlp['wall_ms']:.2f}x the MLP's wall time, "
                                                 f"{row['busy_ms'] / mlp['busy_ms']:.2f}x its busy time")
    compiled = ", torch.compile of it" if row.get("compiled") else ""
    lines = [f"{row['ffn']} (path {row['path']}{compiled}, hidden {row['hidden']}): "
             f"{row['wall_ms']:.2f} ms a step wall, "
             f"{row['busy_ms']:.2f} ms {row['busy_kind']} busy{ratio}", "",
             "| operator / kernel | ms a step | calls a step | share |", "|---|---:|---:|---:|"]
    for t in row["top"]:
        lines.append(f"| `{_short(t['name'])}` | {t['ms_per_step']:.3f} | {t['calls_per_step']:.0f} | "
                     f"{t['share']:.0%} |")
    if "eager_ops_per_step" in row:
        names = ", ".join(f"{k.removeprefix('aten::')} {v:.3g}" for k, v in list(row["eager_ops"].items())[:8])
        lines += ["", f"eager operators (outside compiled graphs): {row['eager_ops_per_step']:.0f} a step ({names})"]
    if "loop_widths" in row:
        lines += ["", format_widths(row["loop_widths"])]
    host = row.get("host")
    if host:
        lines += ["", f"host: {host['launches_per_step']:.0f} kernel launches a step; "
                  f"{host['self_ms_per_step']:.2f} ms a step inside profiled host events", "",
                  "| host event | self ms a step | calls a step |", "|---|---:|---:|"]
        lines += [f"| `{_short(t['name'])}` | {t['ms_per_step']:.3f} | {t['calls_per_step']:.0f} |"
                  for t in host["top"]]
    return "\n".join(lines)


def _short(name: str) -> str:
    return name if len(name) <= 90 else name[:87] + "..."


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=["bspline:auto"],
                   help=f"ffn[:kernel] each (kernel: one of {', '.join(KERNELS)}; default auto); the GELU MLP is "
                   "profiled first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="bf16 / fp16: autocast over fp32 parameters (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--compile", action="store_true",
                   help="profile torch.compile of each arm's FFN (the MLP's too): what a compiled model runs")
    p.add_argument("--compile-options", metavar="JSON", default="",
                   help="compiler options for the fused path's helpers, a JSON object (e.g. '{\"cpp_wrapper\": "
                   "true}'; layers/compile_options.py), in force for every arm")
    p.add_argument("--cpu-kernels", action="store_true",
                   help="on a CPU, time each compiled C++ loop (cpp.enable_kernel_profile), not only the graphs")
    p.add_argument("--loop-widths", action="store_true",
                   help="on a CPU, the vector width of each compiled loop touching bf16 / fp16 values; mixed loops "
                   "listed (compiles each KAN arm afresh; name its path, e.g. bspline:fused)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation falls here)")
    p.add_argument("--steps", type=int, default=5, help="profiled steps per arm")
    p.add_argument("--top", type=int, default=15, help="operators listed per arm")
    p.add_argument("--json", help="also write the results to this JSON file (after each arm)")
    args = p.parse_args(argv)
    for flag in ("d_model", "tokens", "steps", "top"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    try:
        options = parse(args.compile_options, "--compile-options")
    except ValueError as err:
        p.error(str(err))
    device = torch.device(args.device)
    if (args.cpu_kernels or args.loop_widths) and device.type != "cpu":
        p.error("--cpu-kernels and --loop-widths read the compiler's C++ loops: CPU only (--device cpu)")
    if args.loop_widths and args.warmup < 1:
        p.error("--loop-widths reads the loops compiled in the warm-up: --warmup must be >= 1")
    if args.cpu_kernels:
        torch._inductor.config.cpp.enable_kernel_profile = True
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    arms = [("mlp", "auto")] + [arm for arm in map(parse_arm, args.arms) if arm[0] != "mlp"]
    configure_malloc("keep")
    result: dict[str, Any] = {"benchmark": "profile_ffn", "device": str(device), "machine": machine(device),
                              "torch": torch.__version__, "d_model": args.d_model, "tokens": args.tokens,
                              "dtype": args.dtype, "steps": args.steps, "compiled": args.compile,
                              "compile_options": options, "cpu_kernels": args.cpu_kernels, "rows": []}
    print(f"FFN fwd+bwd{' compiled' if args.compile else ''} under torch.profiler: d_model {args.d_model}, "
          f"{args.tokens} tokens, {args.dtype}, "
          f"{device} [{result['machine']}], {args.steps} steps per arm after {args.warmup} untimed"
          f"{f', compile options {options_tag(options)}' if options else ''}", flush=True)
    with compile_options(options):
        for name, mode in arms:
            row = profile_arm(name, mode, args, device)
            result["rows"].append(row)
            print("\n" + format_arm(row, result["rows"][0]), flush=True)
            write_result(args.json, result, quiet=True)


if __name__ == "__main__":
    main()
