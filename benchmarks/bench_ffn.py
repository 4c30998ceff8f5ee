r"""Forward+backward time and activation memory of every registered FFN against the GELU MLP, in one process.

Each FFN gets the hidden width that matches the MLP of width 4*d_model (by parameters, or FLOPs with
``--match flops``). Timings: warm-up excluded, CUDA synchronised; the FFNs take turns, ``--rounds`` times, each turn
one untimed step and the median of ``--repeats`` timed ones, so a machine that drifts (shared CPUs do, by 10-15 %
within an hour) moves every FFN alike; the order of the turns reverses from one round to the next
(:func:`round_order`). A ratio is the median over the rounds of the FFN's time over the MLP's in the
same round, with the lowest and highest round beside it. Activation memory: the bytes of the distinct tensors
autograd saves for backward (parameters excluded), measured with ``torch.autograd.graph.saved_tensors_hooks`` on any
device; on CUDA also the peak allocated above the baseline.

    python -m benchmarks.bench_ffn                          # d_model 384, 2048 tokens, fp32, CPU
    python -m benchmarks.bench_ffn --device cuda --dtype bf16 --d-model 768 --tokens 16384 --json out.json

``--compile-options JSON ...`` times each KAN FFN's step again under each set of compiler options for the fused path's
helpers (layers/compile_options.py; ``--kernel fused`` makes sure they run), interleaved with the rest, and checks its
outputs and gradients against the step without them (``max rel. err``)::

    python -m benchmarks.bench_ffn --device cuda --dtype bf16 --d-model 768 --tokens 16384 --kernel fused \
        --ffns bspline rbf --compile-options '{"cpp_wrapper": true}' '{"triton.cudagraphs": true}'

``--cuda-graphs`` (CUDA only) times each FFN's step, the MLP's too, replayed as CUDA graphs
(``torch.cuda.make_graphed_callables``: the forward's kernels one graph, the backward's another), beside the plain
step: what the kernels cost once the host's launches are gone, graphed against graphed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from kanformer import create_ffn, list_ffns, match_hidden
from kanformer.evaluation.interleaved import machine, round_order, same_round_ratios
from kanformer.evaluation.metrics import median_time, saved_activation_bytes
from kanformer.layers import autotune, gemm
from kanformer.layers.compile_options import compile_options, options_tag, parse
from kanformer.layers.dispatch import get_kernel, kernel, prepare_compile, set_kernel
from kanformer.train.allocator import MALLOC_CHOICES
from kanformer.train.allocator import configure as configure_malloc
from kanformer.train.allocator import current as current_malloc

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile of each FFN, timed beside the rest on request: its reference path (the compiler fuses and rematerialises
# it: what plain torch.compile of the plain layers gives), and "kit", as a compiled model runs it under the benchmark's
# path (layers/dispatch.py's ``traced``)
COMPILED_KINDS = ("reference", "kit")


@dataclasses.dataclass
class OptionRun:
    """One set of compiler options an Arm is timed under (``--compile-options``): its turns' times, its first
    (compiling) step, its outputs' largest relative difference from the plain step's, or why it failed here."""

    options: dict[str, Any]
    times: list[float] = dataclasses.field(default_factory=list)
    first_s: float = 0.0
    max_rel_err: float = 0.0
    error: str | None = None


class Arm:
    """One FFN of the benchmark: its module, inputs and timed steps (forward + backward; forward only)."""

    def __init__(self, name: str, d_model: int, tokens: int, *, device: torch.device, dtype: torch.dtype,
                 autocast: bool, match: str) -> None:
        self.name, self.device, self.hidden = name, device, match_hidden(name, d_model, target=match)
        param_dtype = torch.float32 if autocast else dtype
        self.ffn = create_ffn(name, d_model, self.hidden).to(device=device, dtype=param_dtype)
        self.x = torch.randn(tokens, d_model, device=device, dtype=param_dtype, requires_grad=True)
        self.grad = torch.randn(tokens, d_model, device=device, dtype=dtype)
        self.ctx: Callable[[], Any] = (lambda: torch.autocast(device.type, dtype=dtype)) if autocast \
            else torch.enable_grad
        self.times: dict[str, list[float]] = {"fwd_bwd": [], "fwd": []}
        # what a new user's first call costs on this process's caches (``--cold``: empty ones): the first forward +
        # backward, and under auto the time until it settled on a path (the background compile, then the switch)
        t0 = time.perf_counter()
        self.step()
        self.first_step_s, self.settled_s = time.perf_counter() - t0, None
        self.path = get_kernel()  # auto: the path it settles on for this FFN here (mlp and swiglu: none)
        if self.path == "auto" and hasattr(self.ffn, "_forward") and autotune.enabled():
            with self.ctx():
                self.path = autotune.settle(self.ffn, self.x)
            self.settled_s = time.perf_counter() - t0
        elif name in ("mlp", "swiglu"):
            self.path = "-"
        self.compiled: dict[str, Any] = {}  # kind -> torch.compile of the FFN (COMPILED_KINDS)
        self.compile_s: dict[str, float] = {}
        self.option_runs: list[OptionRun] = []  # compiler options timed beside the plain step (add_options)
        self.graphed: OptionRun | None = None  # the step replayed as CUDA graphs (add_graphed)
        self.graphed_module: Any = None
        # CUDA graphs take autocast without its cast cache (torch.cuda.make_graphed_callables refuses it)
        self.graph_ctx: Callable[[], Any] = (
            (lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=False)) if autocast else torch.enable_grad)

    def add_options(self, options: list[dict[str, Any]]) -> None:
        """Each set of compiler ``options`` gets timed turns of its own (its first step, which compiles, kept apart),
        its outputs and gradients checked against the step without them. Only a KAN FFN's helpers take them."""
        if not hasattr(self.ffn, "_forward"):
            return
        plain = self.outputs()
        for opts in options:
            run = OptionRun(opts)
            self.option_runs.append(run)
            t0 = time.perf_counter()
            try:
                with compile_options(opts):
                    got = self.outputs()
            except Exception as err:  # noqa: BLE001 - an option this machine cannot compile: reported in its row
                run.error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                continue
            run.first_s = time.perf_counter() - t0
            run.max_rel_err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                                  for a, b in zip(got, plain, strict=True))

    def add_graphed(self) -> None:
        """The step replayed as CUDA graphs (``torch.cuda.make_graphed_callables`` of the FFN: its forward's kernels
        one graph, its backward's another, so the host launches two graphs where it launched each kernel and ran the
        Python between them), timed in turns of its own, its capture kept apart, its outputs and gradients checked
        against the plain step's. On a step whose host sets its time (the eager fused KAN FFN on the H200) this is
        what the kernels alone cost; whatever the path records at capture (auto's choice, a grid's check) is fixed
        in the graphs. A failure here (no CUDA, an operation a graph cannot hold) is reported in the row."""
        run = self.graphed = OptionRun({"cuda_graphs": True})
        plain = self.outputs()
        t0 = time.perf_counter()
        try:
            with self.graph_ctx():
                # a shallow copy (the same parameters and submodules): make_graphed_callables replaces a module's
                # forward in place, and on the FFN itself every later plain step, and the saved-activation count, ran
                # the graphs (the first GPU run: the MLP's count read 0). allow_unused_input: a parameter without a
                # gradient in this step is no failure of the graphs
                self.graphed_module = torch.cuda.make_graphed_callables(copy.copy(self.ffn), (self.x,),
                                                                        allow_unused_input=True)
            got = self.outputs(self.graphed_module, self.graph_ctx)
        except Exception as err:  # noqa: BLE001 - reported in its row
            run.error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            self.graphed_module = None
            return
        run.first_s = time.perf_counter() - t0
        run.max_rel_err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                              for a, b in zip(got, plain, strict=True))

    def step_graphed(self) -> None:
        self.step(self.graphed_module, self.graph_ctx)

    def outputs(self, module: Any = None, ctx: Callable[[], Any] | None = None) -> list[torch.Tensor]:
        """y, dL/dx and every parameter's gradient of one step (of ``module``, under ``ctx``: by default the FFN's),
        in fp32."""
        try:
            with (ctx or self.ctx)():
                y = (module if module is not None else self.ffn)(self.x)
            y.backward(self.grad.to(y.dtype))
            grads = [self.x.grad] + [p.grad for p in self.ffn.parameters() if p.grad is not None]
            return [t.detach().to(torch.float32, copy=True) for t in (y, *grads)]  # a replayed graph reuses its own
        finally:  # also after a failure: the next step's gradients start from none
            self.x.grad = None
            for p in self.ffn.parameters():
                p.grad = None

    def compile(self, kind: str) -> None:
        """``torch.compile`` of the FFN, ``kind`` as COMPILED_KINDS says; its first step's seconds kept."""
        prepare_compile(self.ffn)  # as the kit's own compiled helpers have it (a no-op once they ran)
        self.compiled[kind] = torch.compile(self.ffn)
        self.times[f"compiled_{kind}"] = []
        t0 = time.perf_counter()
        self.step_compiled(kind)
        self.compile_s[kind] = time.perf_counter() - t0

    def step_compiled(self, kind: str) -> None:
        with self._path(kind):
            self.step(self.compiled[kind])

    @staticmethod
    def _path(kind: str) -> contextlib.AbstractContextManager[Any]:
        return kernel("reference") if kind == "reference" else contextlib.nullcontext()

    def step(self, module: Any = None, ctx: Callable[[], Any] | None = None) -> None:
        with (ctx or self.ctx)():
            y = (module if module is not None else self.ffn)(self.x)
        y.backward(self.grad.to(y.dtype))
        self.x.grad = None
        for p in self.ffn.parameters():
            p.grad = None

    def forward(self) -> None:
        with torch.no_grad(), self.ctx():
            self.ffn(self.x)

    def time(self, warmup: int, repeats: int) -> None:
        """One turn: the median of ``repeats`` steps of each kind, after ``warmup`` untimed ones."""
        for label, fn in (("fwd_bwd", self.step), ("fwd", self.forward)):
            self.times[label].append(median_time(fn, self.device, warmup=warmup, repeats=repeats))
        for kind in self.compiled:
            self.times[f"compiled_{kind}"].append(median_time(lambda k=kind: self.step_compiled(k), self.device,
                                                              warmup=1, repeats=repeats))
        for run in self.option_runs:
            if run.error is None:
                with compile_options(run.options):
                    run.times.append(median_time(self.step, self.device, warmup=1, repeats=repeats))
        if self.graphed is not None and self.graphed.error is None:
            self.graphed.times.append(median_time(self.step_graphed, self.device, warmup=1, repeats=repeats))

    def row(self) -> dict[str, Any]:
        with self.ctx():
            act = saved_activation_bytes(self.ffn, self.x)
        row = {"ffn": self.name, "hidden": self.hidden, "params": self.ffn.num_params(),
               "flops_per_token": self.ffn.flops_per_token(), "fwd_bwd_s": statistics.median(self.times["fwd_bwd"]),
               "fwd_s": statistics.median(self.times["fwd"]), "saved_activation_bytes": act, "path": self.path,
               "first_step_s": self.first_step_s, "settled_s": self.settled_s}
        for i, run in enumerate(self.option_runs):
            if run.error is not None:
                row[f"options_{i}_error"] = run.error
                continue
            row[f"options_{i}_s"] = statistics.median(run.times)
            row[f"options_{i}_first_step_s"] = run.first_s
            row[f"options_{i}_max_rel_err"] = run.max_rel_err
        if self.graphed is not None:
            if self.graphed.error is not None:
                row["graphed_error"] = self.graphed.error
            else:
                row.update(graphed_s=statistics.median(self.graphed.times), graphed_first_step_s=self.graphed.first_s,
                           graphed_max_rel_err=self.graphed.max_rel_err)
        for kind in self.compiled:
            row[f"compiled_{kind}_s"] = statistics.median(self.times[f"compiled_{kind}"])
            with self.ctx(), self._path(kind):
                row[f"compiled_{kind}_saved_activation_bytes"] = saved_activation_bytes(self.compiled[kind], self.x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            with self.ctx():
                y = self.ffn(self.x)
            row["cuda_peak_activation_bytes"] = torch.cuda.max_memory_allocated(self.device) - base
            del y
        return row


def _ratios(times: list[float], ref: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios ``times[r] / ref[r]``."""
    ratios = same_round_ratios(times, ref)
    return ratios["median"], ratios["low"], ratios["high"]


def _per(value: float, base: float) -> float:
    """``value / base``; NaN where the base is 0 (a table with a ratio of nothing, not a crash of the whole run)."""
    return value / base if base else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    names = args.ffns or list_ffns()
    unknown = sorted(set(names) - set(list_ffns()))
    if unknown:
        raise SystemExit(f"Unknown FFN(s) {', '.join(unknown)}. Available: {', '.join(list_ffns())}")
    names = ["mlp"] + [n for n in names if n != "mlp"]  # the reference runs first
    autocast = dtype != torch.float32 and not args.no_autocast
    rounds = getattr(args, "rounds", 1)
    torch.manual_seed(0)
    arms = [Arm(name, args.d_model, args.tokens, device=device, dtype=dtype, autocast=autocast, match=args.match)
            for name in names]
    kinds = [kind for kind in COMPILED_KINDS if getattr(args, f"compiled_{kind}", False)]
    if kinds:  # every KAN FFN's compiled copies share the code of its class' forward: room for all of them in its cache
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(arms) * len(kinds))
    for kind in kinds:
        for arm in arms:
            arm.compile(kind)
    options = list(getattr(args, "compile_options", None) or [])
    graphs = getattr(args, "cuda_graphs", False)
    for arm in arms:
        arm.add_options(options)
        if graphs:
            arm.add_graphed()
    for r in range(rounds):
        for arm in round_order(arms, r):  # the first round warms each arm up (compilation included); later, one step
            arm.time(args.warmup if r == 0 else 1, args.repeats)
        print(f"  round {r + 1}/{rounds} done", flush=True)
    rows = [arm.row() for arm in arms]
    ref = arms[0]
    for arm, row in zip(arms, rows, strict=True):
        row["time_ratio"], row["time_ratio_low"], row["time_ratio_high"] = _ratios(arm.times["fwd_bwd"],
                                                                                   ref.times["fwd_bwd"])
        row["fwd_time_ratio"] = _ratios(arm.times["fwd"], ref.times["fwd"])[0]
        row["memory_ratio"] = _per(row["saved_activation_bytes"], rows[0]["saved_activation_bytes"])
        for kind in arm.compiled:
            row[f"compiled_{kind}_ratio"] = _ratios(arm.times[f"compiled_{kind}"], ref.times["fwd_bwd"])[0]
            row[f"compiled_{kind}_first_step_s"] = arm.compile_s[kind]
            row[f"compiled_{kind}_memory_ratio"] = _per(row[f"compiled_{kind}_saved_activation_bytes"],
                                                        rows[0]["saved_activation_bytes"])
        if "graphed_s" in row:  # against the MLP's step graphed alike, and against its own plain step
            row["graphed_vs_plain"] = _ratios(arm.graphed.times, arm.times["fwd_bwd"])[0]
            if "graphed_s" in rows[0]:
                row["graphed_ratio"] = _ratios(arm.graphed.times, ref.graphed.times)[0]
        for i, run in enumerate(arm.option_runs):  # against the MLP, and against its own step without the options
            if run.error is None:
                row[f"options_{i}_ratio"] = _ratios(run.times, ref.times["fwd_bwd"])[0]
                row[f"options_{i}_vs_plain"] = _ratios(run.times, arm.times["fwd_bwd"])[0]
    return {
        "benchmark": "ffn", "d_model": args.d_model, "tokens": args.tokens, "dtype": args.dtype,
        "autocast": autocast, "match": args.match, "device": str(device), "repeats": args.repeats,
        "rounds": rounds, "order": "alternating", "machine": machine(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "malloc": current_malloc(), "rows": rows,
        "cold": getattr(args, "cold", False), "gemm": gemm.library(), "gemm_record": gemm.record(),
        "widened": device.type == "cpu" and not gemm.native_low_precision(dtype),
        "compile_options": options, "cuda_graphs": graphs,
    }


@contextlib.contextmanager
def cold_caches(cold: bool) -> Iterator[None]:
    """With ``cold``: the compiler's and the autotuner's caches in a fresh temporary directory for the block (what
    the background compiles inherit too), removed after; else nothing changes."""
    if not cold:
        yield
        return
    root = Path(tempfile.mkdtemp(prefix="kanformer-cold-"))
    fresh = {"TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"), "KANFORMER_CACHE": str(root / "kanformer")}
    autotune.forget()
    try:
        with mock.patch.dict(os.environ, fresh):
            yield
    finally:
        autotune.forget()
        shutil.rmtree(root, ignore_errors=True)


def gemm_note(record: dict[str, Any] | None, widened: str | None = None, whose: str = "the FFNs'") -> str:
    """The header's words on the fp32 CPU matmul library every FFN of the run used (layers/gemm.py), and on the
    ``widened`` low-precision dtype (``bf16``, ``fp16``) whose products (``whose``) were taken in fp32 (no native
    ones)."""
    if not record:
        return ""
    how = record["source"] if "times_ms" not in record or record["source"] == "set" else (
        f"{record['source']}: an MLP's six products {record['times_ms']['onednn']:.0f} ms routed to oneDNN against "
        f"{record['times_ms']['torch']:.0f} ms by PyTorch's own")
    if record["library"] == "onednn" and record.get("transposed"):  # layers/gemm.py: _transposed_class
        how += "; transposed operands of many rows: " + ", ".join(
            f"{kind.replace('_', ' ')} by {lib}" for kind, lib in record["transposed"].items())
    wide = f"{whose} {widened} products in fp32 (this CPU has no native {widened} products), " if widened else ""
    return f"fp32 CPU products by {record['library']} ({how}), {wide}"


def add_gemm_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gemm", choices=gemm.LIBRARIES, default=None,
                   help="fp32 CPU matmul library of every FFN, the MLP's included (kanformer/layers/gemm.py; default: "
                   "KANFORMER_GEMM or auto, measured once per machine)")


def write_result(path: str | None, result: dict[str, Any], quiet: bool = False) -> None:
    """A benchmark's result as JSON at ``path`` (``--json``; None: nothing), its folder made; written beside and
    renamed, so that a run killed mid-write leaves the last whole file."""
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(path + ".tmp", path)
        if not quiet:
            print(f"wrote {path}")


def add_kernel_memory_argument(p: argparse.ArgumentParser) -> None:
    """``--kernel-memory``, applied with ``autotune.set_kernel_memory(args.kernel_memory)``."""
    p.add_argument("--kernel-memory", choices=autotune.MEMORY_RULES, default=autotune.kernel_memory(),
                   help="the memory rule: what auto may choose, and in a compiled model whether the backward "
                   "recomputes the features (lean) or the compiler may keep them (fast); default: "
                   "KANFORMER_KERNEL_MEMORY, else lean")


def add_malloc_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--malloc", choices=MALLOC_CHOICES, default="keep",
                   help="CPU allocator for every arm (kanformer/train/allocator.py): keep freed large blocks for reuse "
                   "(default), or the system's default behaviour")


def format_table(result: dict[str, Any]) -> str:
    head = (f"FFN benchmark: d_model={result['d_model']}, tokens={result['tokens']}, {result['dtype']}"
            f"{' autocast' if result['autocast'] else ''}, {result['device']} [{result['machine']}], "
            f"KAN path {result.get('kernel', 'auto')} (memory rule {result.get('kernel_memory', 'lean')}), "
            f"CPU malloc {result['malloc']}, "
            f"{gemm_note(result.get('gemm_record'), result['dtype'] if result.get('widened') else None)}"
            f"widths matched by {result['match']} to the GELU MLP (4*d), {result.get('rounds', 1)} rounds of "
            f"{result['repeats']} steps per FFN, interleaved, every other round in reverse order (times and ratios: "
            f"medians; range: lowest - highest round). The machine: the GELU MLP's fwd+bwd step takes "
            f"{result['rows'][0]['fwd_bwd_s'] * 1e3:.1f} ms. "
            f"First step and auto's settling on "
            f"{'empty compiler and autotune caches (--cold)' if result.get('cold') else 'the caches this machine has'}")
    kinds = [k for k in COMPILED_KINDS if f"compiled_{k}_ratio" in result["rows"][0]]
    options = result.get("compile_options") or []
    lines = [head, "",
             "| FFN | path | hidden | params | MFLOPs/token | fwd+bwd ms | x MLP | range | fwd ms | x MLP | "
             "saved act. MB | x MLP | first step s | auto settled s |"
             + "".join(f" compiled {k} x MLP | its saved act. x MLP | its first step s |" for k in kinds)
             + "".join(f" with {options_tag(o)} x MLP | x without | max rel. err | its first step s |"
                       for o in options),
             "|---|---|" + "---:|" * (12 + 3 * len(kinds) + 4 * len(options))]
    for r in result["rows"]:
        spread = f"{r['time_ratio_low']:.2f} - {r['time_ratio_high']:.2f}" if "time_ratio_low" in r else ""
        settled = "-" if r["settled_s"] is None else f"{r['settled_s']:.1f}"
        lines.append(
            f"| {r['ffn']} | {r.get('path', '')} | {r['hidden']} | {r['params']:,} | "
            f"{r['flops_per_token'] / 1e6:.2f} | "
            f"{r['fwd_bwd_s'] * 1e3:.1f} | {r['time_ratio']:.2f} | {spread} | "
            f"{r['fwd_s'] * 1e3:.1f} | {r['fwd_time_ratio']:.2f} | "
            f"{r['saved_activation_bytes'] / 2**20:.1f} | {r['memory_ratio']:.2f} | {r['first_step_s']:.2f} | "
            f"{settled} |"
            + "".join(f" {r[f'compiled_{k}_ratio']:.2f} | {r[f'compiled_{k}_memory_ratio']:.2f} | "
                      f"{r[f'compiled_{k}_first_step_s']:.1f} |" for k in kinds)
            + "".join(f" {r[f'options_{i}_ratio']:.2f} | {r[f'options_{i}_vs_plain']:.2f} | "
                      f"{r[f'options_{i}_max_rel_err']:.1e} | {r[f'options_{i}_first_step_s']:.1f} |"
                      if f"options_{i}_ratio" in r else (" failed | - | - | - |" if f"options_{i}_error" in r
                                                         else " - | - | - | - |") for i in range(len(options))))
    failed = [f"- {r['ffn']} with {options_tag(o)}: {r[f'options_{i}_error']}" for r in result["rows"]
              for i, o in enumerate(options) if f"options_{i}_error" in r]
    if failed:
        lines += ["", "Compile options that failed:", *failed]
    if result.get("cuda_graphs"):
        lines += ["", "The step replayed as CUDA graphs (make_graphed_callables of each FFN, the MLP's too):",
                  "", "| FFN | graphed ms | x MLP graphed | x its plain step | max rel. err | capture s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in result["rows"]:
            if "graphed_s" in r:
                ratio = f"{r['graphed_ratio']:.2f}" if "graphed_ratio" in r else "-"
                lines.append(f"| {r['ffn']} | {r['graphed_s'] * 1e3:.2f} | {ratio} | {r['graphed_vs_plain']:.2f} | "
                             f"{r['graphed_max_rel_err']:.1e} | {r['graphed_first_step_s']:.1f} |")
            else:
                lines.append(f"| {r['ffn']} | failed: {r.get('graphed_error', '-')} | - | - | - | - |")
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
    p.add_argument("--rounds", type=int, default=5, help="turns each FFN takes, interleaved (default 5)")
    p.add_argument("--repeats", type=int, default=4, help="timed steps per FFN and round (default 4)")
    p.add_argument("--kernel", choices=["auto", "lean", "fused", "triton", "reference"], default="auto",
                   help="KAN layer path (auto: the path measured fastest for each FFN on this machine, "
                   "kanformer/layers/autotune.py; the table names it)")
    p.add_argument("--compiled-reference", action="store_true",
                   help="also time torch.compile of each FFN (its reference path), interleaved with the rest")
    p.add_argument("--compiled-kit", action="store_true",
                   help="also time torch.compile of each FFN as a compiled model runs it under --kernel (auto, fused, "
                   "lean: the lean two-layer Function traced into the graph where it applies), interleaved")
    p.add_argument("--compile-options", nargs="+", metavar="JSON", default=[],
                   help="also time each KAN FFN's step under each of these sets of compiler options for the fused "
                   "path's helpers (a JSON object each, e.g. '{\"cpp_wrapper\": true}'; layers/compile_options.py), "
                   "interleaved, its outputs and gradients checked against the step without them")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time each FFN's step replayed as CUDA graphs (torch.cuda.make_graphed_callables; the "
                   "MLP's too), interleaved, its outputs and gradients checked against the plain step: what the "
                   "kernels cost without the host's launches (CUDA only)")
    add_kernel_memory_argument(p)
    p.add_argument("--cold", action="store_true",
                   help="start on empty compiler and autotune caches (fresh temporary directories): each FFN's first "
                   "step and auto's settling as a new machine sees them (each KAN FFN's background compile takes "
                   "about a minute on 2 cores)")
    add_malloc_argument(p)
    add_gemm_argument(p)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.gemm:
        gemm.set_library(args.gemm)
    for flag in ("d_model", "tokens", "repeats", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.cuda_graphs and torch.device(args.device).type != "cuda":
        p.error(f"--cuda-graphs replays CUDA graphs: it needs --device cuda (got {args.device})")
    try:
        args.compile_options = [parse(text, "--compile-options") for text in args.compile_options]
    except ValueError as err:
        p.error(str(err))
    set_kernel(args.kernel)
    autotune.set_kernel_memory(args.kernel_memory)
    configure_malloc(args.malloc)
    with cold_caches(args.cold):
        result = run(args)
    result["kernel"], result["kernel_memory"] = args.kernel, args.kernel_memory
    print(format_table(result))
    write_result(args.json, result)


if __name__ == "__main__":
    main()
