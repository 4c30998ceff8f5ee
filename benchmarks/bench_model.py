"""Whole-model training step: tokens/s, activation memory and peak memory of a KAN GPT-2 against the GELU-MLP and
SwiGLU GPT-2 with the same number of parameters, in one process.

Every arm is the same GPT-2 with its FFNs replaced by ``kanify(match="params")`` (the MLP arm too, so all run the
same code path); the step is forward + backward + AdamW. Ratios are against the MLP arm measured in the same run.

    python -m benchmarks.bench_model                                  # CPU: 4 layers, d_model 384, 4 x 256 tokens
    python -m benchmarks.bench_model --gpu --json benchmarks/out/gpu.json  # every GPU check in one go (see below)
    python -m benchmarks.bench_model --generate 32                     # generation (greedy, KV cache) instead

``--generate N`` times generation instead of training: each arm's GPT-2 generates N tokens greedily with its KV cache
after a prompt of ``--seq`` - N tokens, ``--batch`` sequences at a time (``measure_inference``: tokens/s of the
generation alone, the prompt's forward apart); under ``auto`` after the training steps that let it choose its paths,
as a model generates after training.

``--gpu`` runs, on CUDA: the auto / lean / fused / Triton paths against the reference (outputs and gradients) on random
and out-of-range inputs, and a compiled model's path (torch.compile of B-spline, RBF, GR-KAN and wavelet FFNs; the
wavelet's as the graph's operator); the FFN benchmark at d_model 768, 16k tokens, bf16 autocast for each KAN path; this
benchmark on GPT-2 small (12 x 768, 4 x 1024 tokens, bf16) for each path, eager, compiled, and compiled with CUDA
graphs (``--compile-mode reduce-overhead``, every arm alike: where the host's launches rather than the GPU set a step's
time, as they did for the eager KAN FFNs on the H200); the trainer's exact resume, and ``kanformer compare``'s
time-matched baseline planned on the GPU (stage ``time_match``); the targets evaluated; one JSON.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import signal
import statistics
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks.bench_ffn import (
    add_gemm_argument,
    add_kernel_memory_argument,
    add_malloc_argument,
    gemm_note,
    write_result,
)
from kanformer import kanify
from kanformer.data.device import to_device
from kanformer.evaluation.interleaved import machine, round_order, same_round_ratios
from kanformer.evaluation.metrics import measure_inference, measure_training, settle
from kanformer.layers import autotune, gemm
from kanformer.layers.dispatch import default_kernel, kernel, prepare_compile
from kanformer.layers.widen import widened_autocast
from kanformer.train.allocator import configure as configure_malloc
from kanformer.train.allocator import current as current_malloc
from kanformer.train.optim import ADAMW

DEFAULT_ARMS = ["mlp", "swiglu", "bspline", "chebyshev", "rational", "rbf"]
CONTROL = "mlp (control)"


def build_gpt2(ffn: str, *, n_layer: int, d_model: int, n_head: int, seq: int, vocab: int, device: torch.device):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # the special tokens inside the benchmark's vocabulary (GPT-2's 50256 is not, and transformers warns of it)
    config = GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=n_head, n_positions=seq, vocab_size=vocab,
                        bos_token_id=vocab - 1, eos_token_id=vocab - 1, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    kanify(model, ffn, match="params")
    return model.to(device)


def path(mode: str) -> Any:
    """``auto`` as training runs it (the process default: measured per FFN), any other path forced."""
    return default_kernel("auto") if mode == "auto" else kernel(mode)


class ModelArm:
    """One GPT-2 of the benchmark (its FFN kind), built once and timed a turn per round."""

    def __init__(self, ffn: str, args: argparse.Namespace, device: torch.device, label: str | None = None) -> None:
        self.ffn, self.args, self.device = ffn, args, device
        self.label = label or ffn  # the row's name: "mlp (control)" for the control arm
        self.model = build_gpt2(ffn, n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head, seq=args.seq,
                                vocab=args.vocab, device=device)
        if getattr(args, "compile", False):  # as train.compile=model runs it
            mode = getattr(args, "compile_mode", "default")
            prepare_compile(self.model)  # as train.compile does
            self.model = torch.compile(self.model, mode=None if mode == "default" else mode)
        self.gen = torch.Generator().manual_seed(0)
        self.rounds: list[dict[str, Any]] = []

    def batch(self) -> dict[str, torch.Tensor]:
        ids = to_device(torch.randint(0, self.args.vocab, (self.args.batch, self.args.seq), generator=self.gen),
                        self.device)  # without draining a GPU's queue inside the timed steps
        return {"input_ids": ids, "labels": ids}

    def train_step(self) -> None:
        self.model(**self.batch()).loss.backward()
        self.model.zero_grad(set_to_none=True)

    def _contexts(self) -> contextlib.ExitStack:
        """What a turn runs under: bf16 autocast where asked, the path, and on a CPU without native bf16 products the
        model's products in fp32, as training does (layers/widen.py)."""
        a, stack = self.args, contextlib.ExitStack()
        stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=a.bf16))
        stack.enter_context(path(a.kernel))
        stack.enter_context(widened_autocast(torch.bfloat16 if a.bf16 and self.device.type == "cpu" else None))
        return stack

    def syncs(self) -> dict[str, Any] | None:
        """The synchronising operations of one training step's forward and backward (``count_syncs``; None off
        CUDA): what the model itself, the FFNs and the attention included, makes the host wait for. After one step
        uncounted: the turns ran copies of this model, and a module's one-off checks (the B-spline's uniform grid,
        read once per grid) fall there."""
        with self._contexts():
            return count_syncs(self.device, self.train_step, warmup=1)

    def turn(self, first: bool) -> None:
        a = self.args
        with self._contexts():
            if first and a.kernel == "auto" and getattr(a, "generate", 0):  # a model generates after training:
                settle(self.train_step, "training")  # the training steps let auto settle first (as they did there)
            warmup = a.warmup if first else 1
            if getattr(a, "generate", 0):
                self.rounds.append(measure_inference(self.model, vocab_size=a.vocab, batch_size=a.batch,
                                                     prompt_len=a.seq - a.generate, new_tokens=a.generate,
                                                     warmup=warmup, repeats=a.steps))
            else:
                self.rounds.append(measure_training(self.model, self.batch, a.batch * a.seq, steps=a.steps,
                                                    warmup=warmup, adamw=getattr(a, "adamw", "auto")))


def run_model_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every arm takes a turn (``--steps`` timed steps) in each of ``--rounds`` rounds, interleaved as in bench_ffn
    (every other round in reverse order): a machine that drifts moves every arm alike. A throughput ratio is the
    median of the same-round ratios, with the lowest and highest round."""
    device = torch.device(args.device)
    rounds = getattr(args, "rounds", 1)
    names = ["mlp"] + [a for a in args.arms if a != "mlp"]
    if getattr(args, "compile", False):  # the arms' compiled models share their class' code: room for all in its cache
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(names))
    arms = [ModelArm(ffn, args, device) for ffn in names]
    if getattr(args, "control", False):  # the MLP GPT-2 again, last: what an arm equal to the reference reads
        arms.append(ModelArm("mlp", args, device, label=CONTROL))
    generate = getattr(args, "generate", 0)
    metric = "generate_tokens_per_s" if generate else "train_tokens_per_s"
    for r in range(rounds):
        for arm in round_order(arms, r):
            arm.turn(first=r == 0)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{a.label} {a.rounds[-1][metric]:.0f} tok/s"
                                                       for a in arms), flush=True)
    ref = arms[0]
    # CUDA's allocator peak per arm over what was allocated when its timed steps began (every arm's model stays
    # resident); on CPU the resident peak is the process's, which the interleaved arms share (what one arm freed stays
    # resident for the next, CPU malloc keep above all), so no per-arm figure: see activations
    peak_key = "peak_allocated_growth_bytes" if device.type == "cuda" else None
    rows = []
    for arm in arms:
        tps = [s[metric] for s in arm.rounds]
        ratios = same_round_ratios(tps, [m[metric] for m in ref.rounds])
        row = {**arm.rounds[-1], "ffn": arm.label, "params": sum(p.numel() for p in arm.model.parameters()),
               metric: statistics.median(tps), "throughput_ratio": ratios["median"],
               "throughput_ratio_low": ratios["low"], "throughput_ratio_high": ratios["high"]}
        if not generate and not getattr(args, "compile", False):  # eager: a compiled model's own copy would compile
            row["syncs"] = arm.syncs()
        rows.append(row)
    for r in rows:
        if not generate:
            r["activation_ratio"] = r["activation_bytes"] / rows[0]["activation_bytes"]
        if peak_key and r.get(peak_key) and rows[0].get(peak_key):
            r["peak_ratio"] = r[peak_key] / rows[0][peak_key]
    del arms
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"benchmark": "model", "device": str(device), "machine": machine(device), "torch": torch.__version__,
            "kernel": args.kernel, "kernel_memory": autotune.kernel_memory(), "adamw": getattr(args, "adamw", "auto"),
            "bf16": args.bf16,
            "compiled": getattr(args, "compile", False),
            "compile_mode": getattr(args, "compile_mode", "default") if getattr(args, "compile", False) else None,
            "n_layer": args.n_layer, "generate": generate,
            "d_model": args.d_model, "seq": args.seq, "batch": args.batch, "steps": args.steps, "rounds": rounds,
            "order": "alternating",
            "peak_key": peak_key, "malloc": current_malloc(), "rows": rows, "autotune": autotune.decisions(),
            "gemm": gemm.library(), "gemm_record": gemm.record(),
            "widened": args.bf16 and device.type == "cpu" and not gemm.native_low_precision(torch.bfloat16)}


def format_table(result: dict[str, Any]) -> str:
    if result.get("generate"):
        return format_generation_table(result)
    products = gemm_note(result.get("gemm_record"), "bf16" if result.get("widened") else None, "all the model's")
    head = (f"GPT-2 train step ({result['n_layer']} x {result['d_model']}, {result['batch']} x {result['seq']} tokens"
            f"{', bf16' if result['bf16'] else ''}{', torch.compile of each model' if result.get('compiled') else ''}"
            f"{' (mode ' + result['compile_mode'] + ')' if result.get('compile_mode') not in (None, 'default') else ''}"
            f"), {result['device']} [{result['machine']}], KAN path "
            f"{result['kernel']} (memory rule {result.get('kernel_memory', 'lean')}), "
            f"AdamW {result.get('adamw', 'auto')}, CPU malloc {result['malloc']}, "
            f"{products}"
            f"parameters matched to the GELU MLP, "
            f"{result.get('rounds', 1)} rounds of {result['steps']} timed steps per arm, interleaved, every other "
            f"round in reverse order (ratios: medians of the same-round ratios; range: lowest - highest round)")
    lines = [head, "", "| FFN | params | tokens/s | x MLP | range | activations MB | x MLP | step peak MB | x MLP |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    key = result["peak_key"]
    for r in result["rows"]:
        peak = f"{r[key] / 2**20:.0f} | {r['peak_ratio']:.2f}" if key and r.get(key) and "peak_ratio" in r else "- | -"
        spread = f"{r.get('throughput_ratio_low', 1):.2f} - {r.get('throughput_ratio_high', 1):.2f}"
        lines.append(f"| {r['ffn']} | {r['params']:,} | {r['train_tokens_per_s']:.0f} | {r['throughput_ratio']:.2f} | "
                     f"{spread} | "
                     f"{r['activation_bytes'] / 2**20:.1f} | {r['activation_ratio']:.2f} | {peak} |")
    if not key:
        lines += ["", "step peak MB: CUDA only (on CPU the process's resident peak is shared by the interleaved arms)"]
    else:
        lines += ["", "step peak MB: the allocator's peak during the timed steps over what was allocated as they began "
                  "(activations, gradients, temporaries; every arm's weights and optimizer states left out)"]
    waits = [f"{r['ffn']} {r['syncs']['syncs']} (at {r['syncs']['at']})" for r in result["rows"]
             if (r.get("syncs") or {}).get("syncs")]
    if any(r.get("syncs") is not None for r in result["rows"]):
        lines.append("synchronising CUDA operations in a training step's forward and backward: "
                     + ("; ".join(waits) if waits else "none, in any arm"))
    return "\n".join(lines)


def format_generation_table(result: dict[str, Any]) -> str:
    products = gemm_note(result.get("gemm_record"), "bf16" if result.get("widened") else None, "all the model's")
    n = result["generate"]
    head = (f"GPT-2 generation ({result['n_layer']} x {result['d_model']}, {result['batch']} sequences, {n} tokens "
            f"each greedily with the KV cache after a prompt of {result['seq'] - n}"
            f"{', bf16' if result['bf16'] else ''}), {result['device']} [{result['machine']}], KAN path "
            f"{result['kernel']}, CPU malloc {result['malloc']}, {products}parameters matched to the GELU MLP, "
            f"{result.get('rounds', 1)} rounds of {result['steps']} timed generations per arm, interleaved, every "
            f"other round in reverse order (ratios: medians of the same-round ratios; range: lowest - highest round)")
    lines = [head, "", "| FFN | params | generated tokens/s | x MLP | range | prompt tokens/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['ffn']} | {r['params']:,} | {r['generate_tokens_per_s']:.0f} | {r['throughput_ratio']:.2f} "
                     f"| {r['throughput_ratio_low']:.2f} - {r['throughput_ratio_high']:.2f} | "
                     f"{r['prefill_tokens_per_s']:.0f} |")
    return "\n".join(lines)


LEAN_FFNS = ["bspline", "rbf", "chebyshev", "jacobi", "fourier", "wavelet", "rational", "multkan"]
GPU_TARGETS = ["bspline", "rbf", "chebyshev", "rational"]  # the FFNs with GPU targets (<= 1.3x MLP time, memory)
FEW_TOKENS = 4  # the correctness check's call without autograd of a generation step's few tokens (its first rows,
# far-out-of-range ones included): at most the hidden width, so the fused path takes its graph of few tokens


def count_syncs(device: torch.device, fn: Callable[[], Any], warmup: int = 0) -> dict[str, Any] | None:
    """The synchronising CUDA operations ``fn()`` makes (``torch.cuda.set_sync_debug_mode("warn")``'s warnings: a
    value read back, a copy from pageable host memory, an explicit synchronize), each of which drains the GPU's queue
    and stalls a step whose host runs ahead of its kernels: ``{"syncs": n, "at": {Python line: how many it made}}``,
    the five lines that made the most, after ``warmup`` calls uncounted. None off CUDA, where nothing is queued (and
    nothing is called)."""
    if device.type != "cuda":
        return None
    for _ in range(warmup):
        fn()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    found = collections.Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchronizing" in str(w.message))
    return {"syncs": sum(found.values()), "at": dict(found.most_common(5))}


# FFNs checked again with their grids fitted to data (``update_grid``: unequal knot steps, which the fused path takes in
# a form of its own), in fp32 alone: under bf16 autocast data-fitted knots can lie closer than the bf16 hidden's
# resolution, where the reference (its knots rounded to bf16) and the fused path (fp32 knots) part by several percent
ADAPTED = " (adapted grid)"
GRID_ADAPTED = ["bspline"]


def check_fast_paths(device: torch.device, modes: tuple[str, ...] = ("lean", "fused"),
                     compiled: tuple[str, ...] = (), rows: list[dict[str, Any]] | None = None
                     ) -> list[dict[str, Any]]:
    """Relative error of each fast path against the reference (output, input gradient, every parameter gradient;
    and the output of a forward without autograd, as evaluation runs it, and of one of ``FEW_TOKENS`` tokens, as a
    generation step runs it) on random and far-out-of-range inputs, fp32 and bf16 autocast; the FFNs in
    ``GRID_ADAPTED`` again with their grids fitted to data, fp32 (row ``<name> (adapted grid)``). For the FFNs in
    ``compiled`` also a compiled model's path (mode ``compiled``: ``torch.compile(ffn, fullgraph=True)`` under
    ``auto``, the lean Functions traced into its graph). On CUDA each pinned path's row also counts the synchronising
    operations of one more training step and generation call (``syncs``: ``count_syncs``; eager ``auto``, which may
    still be timing its candidates, is not counted). The rows are appended to ``rows`` as they come (a check cut
    short keeps those), and returned."""
    from kanformer import create_ffn

    rows = [] if rows is None else rows
    cases = [(name, autocast, False) for name in LEAN_FFNS for autocast in (False, True)]
    cases += [(name, False, True) for name in GRID_ADAPTED]  # fp32: see GRID_ADAPTED
    for name, autocast, adapted in cases:
        torch.manual_seed(0)
        ffn = create_ffn(name, 64, 96).to(device)
        x = torch.randn(512, 64, device=device) * 1.5
        x[:8, :8] = 40.0
        if adapted:  # both grids fitted to spread data: unequal knot steps (the fused path's knot form)
            ffn.fc1.update_grid(torch.randn(512, 64, device=device) * 2)
            ffn.fc2.update_grid(torch.randn(512, 96, device=device) * 2)
        runs = [(mode, mode, ffn) for mode in ("reference", *modes)]
        if name in compiled and not adapted:
            runs.append(("compiled", "auto", torch.compile(ffn, fullgraph=True)))
        results: dict[str, list[torch.Tensor]] = {}
        syncs: dict[str, dict[str, Any] | None] = {}
        for label, mode, fn in runs:
            xr = x.clone().requires_grad_(True)
            ffn.zero_grad()
            with kernel(mode), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                y = fn(xr)
            y.float().square().mean().backward()
            with torch.no_grad(), kernel(mode), torch.autocast(device.type, dtype=torch.bfloat16,
                                                               enabled=autocast):
                y_eval = fn(x)
                y_few = fn(x[:FEW_TOKENS])  # a generation step's call: the fused path's graph of few tokens
            results[label] = [y.detach().float(), xr.grad.float(), *(p.grad.float() for p in ffn.parameters()),
                              y_eval.float(), y_few.float()]
            if label != "reference" and (mode != "auto" or label == "compiled"):
                ffn.zero_grad()  # new gradients: the results hold this run's (``float`` of fp32 is no copy)
                syncs[label] = count_syncs(device, lambda fn=fn, mode=mode, x=x, bf16=autocast: _step_and_few(
                    fn, x, mode, bf16))
        for label, _, _ in runs[1:]:
            errs = [((a - b).norm() / b.norm().clamp_min(1e-12)).item()
                    for a, b in zip(results[label], results["reference"], strict=True)]
            tol = 2e-2 if autocast else 1e-4
            rows.append({"ffn": name + ADAPTED if adapted else name, "mode": label, "bf16": autocast,
                         "max_rel_err": max(errs), "eval_rel_err": errs[-2], "few_tokens_rel_err": errs[-1],
                         "ok": max(errs) <= tol, "syncs": syncs.get(label)})
    return rows


def _step_and_few(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str, autocast: bool) -> None:
    """One forward + backward on ``mode`` and one call of ``FEW_TOKENS`` tokens without autograd, as a training step
    and a generation step make them (nothing read back)."""
    with kernel(mode), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        y = fn(x.clone().requires_grad_(True))
        with torch.no_grad():
            fn(x[:FEW_TOKENS])
    y.float().square().mean().backward()


def check_evaluation_choices(device: torch.device, ffn_shape: dict[str, int], names: list[str],
                             timeout_s: float = 300.0) -> dict[str, Any]:
    """``auto`` as a process that only evaluates meets it (this process's training choices forgotten; compiles from
    the first call, ``KANFORMER_EVAL_COMPILE_AFTER_S=0``): each FFN's forward without autograd, bf16 autocast, until
    its path is timed (against the reference) or ``timeout_s``; the decisions, None where none came."""
    from kanformer import create_ffn, match_hidden

    d, tokens = ffn_shape["d_model"], ffn_shape["tokens"]
    before = os.environ.get("KANFORMER_EVAL_COMPILE_AFTER_S")
    os.environ["KANFORMER_EVAL_COMPILE_AFTER_S"] = "0"
    autotune.forget()
    out: dict[str, Any] = {}
    try:
        for name in names:
            torch.manual_seed(0)
            ffn = create_ffn(name, d, match_hidden(name, d)).to(device)
            x = torch.randn(tokens, d, device=device)
            deadline = time.monotonic() + timeout_s
            with torch.no_grad(), default_kernel("auto"), torch.autocast(device.type, dtype=torch.bfloat16):
                while not autotune.decisions(ffn) and time.monotonic() < deadline:
                    ffn(x)
                    time.sleep(0.2)
            out[name] = next(iter(autotune.decisions(ffn).values()), None)
    finally:
        autotune.forget()
        if before is None:
            os.environ.pop("KANFORMER_EVAL_COMPILE_AFTER_S")
        else:
            os.environ["KANFORMER_EVAL_COMPILE_AFTER_S"] = before
    return out


# the kinds of stage of the GPU check, in order (model_compiled: the whole model under torch.compile, as
# train.compile=model runs it, on auto: the configuration a GPU wants, the eager step's launches being host-bound;
# generate: the eager models' generation tokens/s, a few tokens per FFN call, on auto (what a process that trained
# takes, its graph of few tokens included) or else the first path checked; model_cudagraphs: the same with
# torch.compile's mode reduce-overhead, each graph's kernels replayed as a CUDA graph,
# for a model too small for its host to keep the GPU busy; profile: profile_ffn of the MLP and each FFN with a GPU
# target on auto, eager and then compiled, its kernels by time)
# ffn_options: the fused FFN step of GPU_OPTION_FFNS under each of GPU_COMPILE_OPTIONS against the default (its host's
# launches: layers/compile_options.py), outputs and gradients checked
# train: the trainer itself (benchmarks/check_training.py): the debug GPT-2 trained, resumed exactly, and the
# synchronising operations a step makes
# ffn_graphed: the FFN step of the MLP and each of GPU_TARGETS replayed as CUDA graphs (bench_ffn --cuda-graphs)
# beside the plain step: what the kernels cost once the host's launches are gone
GPU_STAGES = ("correctness", "train", "ffn", "model", "generate", "time_match", "ffn_options", "ffn_graphed",
              "model_compiled", "model_cudagraphs", "profile", "evaluation_auto")
# the GPT-2 a time-matched baseline is planned for on a GPU (stage time_match; a CPU: the debug preset's): 16 x 256
# tokens a step, wide enough that a step's time grows with the FFN's width there
GPU_TIME_MATCH_MODEL = {"n_layer": 4, "n_embd": 256, "n_head": 4, "block_size": 256}
GPU_COMPILE_OPTIONS = ({"cpp_wrapper": True}, {"triton.cudagraphs": True})
GPU_OPTION_FFNS = ["bspline", "rbf"]
# torch.compile's modes the benchmark offers: reduce-overhead adds CUDA graphs (a CPU's graphs run as in default)
COMPILE_MODES = ("default", "reduce-overhead")
GPU_FFN_SHAPE = {"d_model": 768, "tokens": 16384}
GPU_MODEL_SHAPE = {"n_layer": 12, "d_model": 768, "n_head": 12, "seq": 1024, "batch": 4, "vocab": 50257}


class BudgetSpent(BaseException):
    """Raised in the check in flight when the GPU check's time budget runs out. A BaseException, so that no
    ``except Exception`` on the way (a stage's own, the recorder's) takes it for the check's failure."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`BudgetSpent` in this (the main) thread once ``seconds`` have passed, wherever it runs (between
    two bytecodes: a call into C returns first)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("a time budget needs the main thread (it is kept by SIGALRM)")

    def spent(signum: int, frame: Any) -> None:
        raise BudgetSpent

    previous = signal.signal(signal.SIGALRM, spent)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        try:  # an alarm due just now may still raise here: the handler is put back whatever happens
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)


def gpu_checks(args: argparse.Namespace, save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every GPU check in one go, at the sizes of the targets (FFN: d_model 768, 16k tokens, bf16 autocast; model:
    GPT-2 small)."""
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA; this machine has none (run the CPU benchmarks without --gpu)")
    return all_checks(args, torch.device("cuda"), GPU_FFN_SHAPE, GPU_MODEL_SHAPE, save=save,
                      modes=tuple(args.gpu_kernels) if getattr(args, "gpu_kernels", None) else None,
                      stages=tuple(getattr(args, "gpu_stages", None) or GPU_STAGES),
                      budget_s=getattr(args, "gpu_budget_s", None))


def all_checks(args: argparse.Namespace, device: torch.device, ffn_shape: dict[str, int],
               model_shape: dict[str, int], *, repeats: int = 10, steps: int = 5, rounds: int = 3,
               modes: tuple[str, ...] | None = None,
               compiled: tuple[str, ...] = ("bspline", "rbf", "rational", "wavelet"),
               save: Callable[[dict[str, Any]], None] | None = None,
               evaluation_timeout_s: float = 120.0, stages: tuple[str, ...] = (),
               budget_s: float | None = None) -> dict[str, Any]:
    """Correctness of the fast paths, the FFN benchmark per KAN path, the whole-model benchmark, and the targets
    (<= 1.3x MLP time and activation memory per FFN, >= 0.85x MLP model throughput) evaluated; one dict. ``modes``:
    the KAN paths to check (default: auto, lean, fused, and triton where Triton runs on ``device``); ``compiled``: the
    FFNs whose compiled model's path is checked too (check_fast_paths).

    The checks run in stages, cheapest and most telling first (the eager paths before anything that compiles), and
    ``save(result)`` is called after each: a run cut short by its time limit keeps what it measured. A stage that
    raises is recorded under ``errors`` (its traceback) and the next one runs: on a machine nothing has run on yet,
    one broken path must not hide the others' figures. ``stages``: the kinds of stage to run (``GPU_STAGES``; empty:
    all), so that a short lease can go straight to the figures it lacks.

    ``budget_s``: the checks' time limit. When it runs out, the stage in flight is cut (``cut``: its name; what it had
    stored stays), the stages left are listed under ``skipped``, and the targets and ``auto``'s choices are still
    written: a machine lent for minutes ends with a complete record, not a process killed mid-stage."""
    from benchmarks import bench_ffn
    from kanformer.layers import triton_kan

    out: dict[str, Any] = {"machine": machine(device), "torch": torch.__version__, "errors": {}, "stage_seconds": {},
                           "budget_s": budget_s, "cut": None, "skipped": []}
    triton = triton_kan.triton_available(torch.zeros(1, device=device))
    fast = modes or ("auto", "lean", "fused", *(("triton",) if triton else ()))
    out["kernels"] = list(fast)
    # the paths that compile nothing before any that compiles, auto (what training runs) as soon as it can
    eager = [m for m in ("lean", "triton", "auto") if m in fast]
    order = eager + [m for m in fast if m not in eager]
    out["correctness"], out["ffn"], out["model"] = [], {}, {}
    start = time.perf_counter()
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"the GPU check's budget must be a positive number of seconds, got {budget_s!r}")

    def left() -> float:
        return math.inf if budget_s is None else budget_s - (time.perf_counter() - start)

    def stage(name: str, fn: Callable[[], None]) -> None:
        if stages and name.split("/")[0] not in stages and name not in stages:
            return
        if left() <= 0:
            out["skipped"].append(name)
            print(f"== {name}: skipped (the {budget_s:g} s budget is spent)", flush=True)
            return
        began = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            with deadline(left()) if budget_s is not None else contextlib.nullcontext():
                fn()
        except BudgetSpent:
            out["cut"] = name
            print(f"{name}: cut after {time.perf_counter() - began:.0f} s (the {budget_s:g} s budget is spent)",
                  flush=True)
        except Exception:  # noqa: BLE001 - recorded with its traceback; the run ends non-zero (main)
            out["errors"][name] = traceback.format_exc()
            print(f"{name} FAILED:\n{out['errors'][name]}", flush=True)
        out["stage_seconds"][name] = round(time.perf_counter() - began, 2)
        out["seconds"] = time.perf_counter() - start
        if save:
            save(out)

    def correctness(modes_: tuple[str, ...], compiled_: tuple[str, ...]) -> None:
        rows: list[dict[str, Any]] = []
        try:
            rows = check_fast_paths(device, modes_, compiled_, rows=rows)
        finally:  # a stage cut by the budget keeps the rows it checked
            if compiled_:  # only the compiled model's rows: the others were checked in the first stage
                rows = [r for r in rows if r["mode"] == "compiled"]
            out["correctness"] += rows
        print(f"correctness: {sum(r['ok'] for r in rows)}/{len(rows)} within tolerance", flush=True)
        for r in rows:  # on CUDA: what drains the GPU's queue in a step of a pinned path
            if r.get("syncs") and r["syncs"]["syncs"]:
                print(f"  {r['ffn']} {r['mode']} {'bf16' if r['bf16'] else 'fp32'}: {r['syncs']['syncs']} "
                      f"synchronising operations a step, at {r['syncs']['at']}", flush=True)

    def ffn(mode: str, options: tuple[dict[str, Any], ...] = (), graphed: bool = False) -> None:
        ns = argparse.Namespace(device=str(device), dtype="bf16", no_autocast=False, match="params",
                                ffns=GPU_OPTION_FFNS if options else GPU_TARGETS if graphed else None, warmup=2,
                                repeats=repeats, rounds=rounds, compile_options=list(options), cuda_graphs=graphed,
                                **ffn_shape)
        with path(mode):
            res = bench_ffn.run(ns)
        res["kernel"] = mode
        print(bench_ffn.format_table(res), flush=True)
        if options:
            out["ffn_options"] = res
        elif graphed:
            out["ffn_graphed"] = res
        else:
            out["ffn"][mode] = res

    def model(mode: str, compiled_: bool = False, compile_mode: str = "default", generate: int = 0) -> None:
        ns = argparse.Namespace(**{**vars(args), **model_shape, "bf16": True, "kernel": mode, "device": str(device),
                                   "steps": steps, "rounds": rounds, "arms": ["mlp", "swiglu", *GPU_TARGETS],
                                   "compile": compiled_, "compile_mode": compile_mode, "generate": generate})
        res = run_model_bench(ns)
        print(format_table(res), flush=True)
        if generate:
            out["generate"] = res
        elif compile_mode == "reduce-overhead":
            out["model_cudagraphs"] = res
        elif compiled_:
            out["model_compiled"] = res
        else:
            out["model"][mode] = res

    def profile(compiled_: bool) -> None:
        from benchmarks import profile_ffn

        ns = argparse.Namespace(**ffn_shape, dtype="bf16", warmup=3, steps=5, top=15, compile=compiled_)
        rows = out.setdefault("profile", {})["compiled" if compiled_ else "eager"] = []
        for name in ("mlp", *GPU_TARGETS):
            rows.append(profile_ffn.profile_arm(name, "auto", ns, device))
            print("\n" + profile_ffn.format_arm(rows[-1], rows[0]), flush=True)

    def training() -> None:
        from benchmarks.check_training import check_training

        out["train"] = check_training(device)
        print(json.dumps({k: v for k, v in out["train"].items() if k != "losses"}), flush=True)

    def time_matching() -> None:
        from benchmarks.check_training import check_time_matching

        gpu = device.type == "cuda"
        out["time_match"] = check_time_matching(device, model=GPU_TIME_MATCH_MODEL if gpu else None,
                                                batch_size=16 if gpu else 8,
                                                kernel=None if "auto" in fast else order[0])  # as a run trains
        print(json.dumps({k: v for k, v in out["time_match"].items() if k != "log"}), flush=True)

    def evaluation() -> None:  # last: it forgets this process's choices
        out["evaluation_auto"] = check_evaluation_choices(device, ffn_shape, GPU_TARGETS, evaluation_timeout_s)
        print(json.dumps({k: v and {"path": v["path"], "times_ms": v["times_ms"]}
                          for k, v in out["evaluation_auto"].items()}), flush=True)

    stage("correctness/paths", lambda: correctness(tuple(fast), ()))
    stage("train", training)
    for mode in ("reference", *order):
        stage(f"ffn/{mode}", lambda mode=mode: ffn(mode))
    for mode in order:
        stage(f"model/{mode}", lambda mode=mode: model(mode))
    # generation after the training benchmarks, whose steps settled auto's choices (a process that trained generates
    # on them): 32 new tokens (at most half the sequence) after the rest of it as the prompt
    stage("generate", lambda: model("auto" if "auto" in fast else order[0],
                                    generate=min(32, model_shape.get("seq", 64) // 2)))
    # after the benchmarks: on auto it waits for the B-spline arm's background compile (a pinned path compiles nothing)
    stage("time_match", time_matching)
    if "fused" in fast:
        stage("ffn_options", lambda: ffn("fused", GPU_COMPILE_OPTIONS))
    # the eager step with the host's launches gone: each FFN's step (the MLP's too) replayed as CUDA graphs
    stage("ffn_graphed", lambda: ffn("auto" if "auto" in fast else order[0], graphed=True))
    if "auto" in fast:
        stage("model_compiled", lambda: model("auto", compiled_=True))
        stage("model_cudagraphs", lambda: model("auto", compiled_=True, compile_mode="reduce-overhead"))
        stage("profile/eager", lambda: profile(False))
        stage("profile/compiled", lambda: profile(True))
    if compiled:
        stage("correctness/compiled", lambda: correctness((), compiled))
    out["targets"] = targets(out, fast)
    out["autotune"] = autotune.decisions()  # what auto measured and chose for each FFN on this machine
    if "auto" in fast:
        stage("evaluation_auto", evaluation)
    print(json.dumps(out["targets"], indent=2))
    if out["cut"] or out["skipped"]:
        print(f"the {budget_s:g} s budget ran out: cut {out['cut'] or '-'}; skipped "
              f"{', '.join(out['skipped']) or '-'} (--gpu-stages runs them alone)", flush=True)
    return out


def targets(out: dict[str, Any], modes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The targets per path and FFN with GPU targets, for the paths whose FFN and model benchmarks both ran. The model
    throughput counts eager or, for auto, compiled (both models compiled, ``model_compiled``; and with CUDA graphs,
    ``model_cudagraphs``), whichever is highest: ``model_throughput_from`` says which."""
    met = {}
    compiled_rows = {r["ffn"]: r for r in (out.get("model_compiled") or {}).get("rows", [])}
    graphed_rows = {r["ffn"]: r for r in (out.get("model_cudagraphs") or {}).get("rows", [])}
    for mode in modes:
        if mode not in out["ffn"] or mode not in out["model"]:
            continue
        rows = {r["ffn"]: r for r in out["ffn"][mode]["rows"]}
        model_rows = {r["ffn"]: r for r in out["model"][mode]["rows"]}
        for name in GPU_TARGETS:
            eager = model_rows[name]["throughput_ratio"]
            compiled = compiled_rows[name]["throughput_ratio"] if mode == "auto" and name in compiled_rows else None
            graphed = graphed_rows[name]["throughput_ratio"] if mode == "auto" and name in graphed_rows else None
            ratios = {"eager": eager, "compiled": compiled, "cudagraphs": graphed}
            best = max(r for r in ratios.values() if r is not None)
            met[f"{mode}/{name}"] = {
                "time_ratio": rows[name]["time_ratio"], "memory_ratio": rows[name]["memory_ratio"],
                "model_throughput_ratio": eager, "compiled_model_throughput_ratio": compiled,
                "cudagraphs_model_throughput_ratio": graphed,
                "model_throughput_from": next(k for k, r in ratios.items() if r == best),
                "met": rows[name]["time_ratio"] <= 1.3 and rows[name]["memory_ratio"] <= 1.3 and best >= 0.85}
    return met


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="*", default=DEFAULT_ARMS)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=5, help="timed steps per arm and round")
    p.add_argument("--rounds", type=int, default=3, help="turns each arm takes, interleaved (default 3)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--control", action="store_true",
                   help="also time a second MLP GPT-2, identical to the reference, as the last arm: its ratio is what "
                   "this run's noise alone reads (ideally 1.00)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="time generation instead of training: N new tokens a sequence, greedy, with the KV cache, "
                   "after a prompt of --seq - N tokens")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each arm's model, as train.compile=model does (under auto, fused and lean the "
                   "KAN FFNs' lean Functions are traced into its graph; --kernel reference: the compiled reference)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="with --compile: torch.compile's mode (reduce-overhead: each graph's kernels replayed as one "
                   "CUDA graph, the MLP's model too; on a CPU the graphs run as in default)")
    p.add_argument("--kernel", choices=["auto", "lean", "fused", "triton", "reference"], default="auto")
    p.add_argument("--adamw", choices=ADAMW, default="auto",
                   help="the AdamW implementation, as training's train.adamw (auto: fused on CPU and CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpu", action="store_true", help="run every GPU check (needs CUDA) and write one JSON")
    p.add_argument("--gpu-stages", nargs="+", choices=GPU_STAGES + ("correctness/paths", "correctness/compiled"),
                   help="with --gpu: only these kinds of check, in their usual order (default: all; e.g. --gpu-stages "
                   "model for the whole-model benchmark alone, generate for the models' generation tokens/s, "
                   "model_compiled for it compiled whole, "
                   "model_cudagraphs for it compiled with CUDA graphs, profile for where the FFN step's time goes, "
                   "time_match for compare's time-matched baseline planned on the device)")
    p.add_argument("--gpu-kernels", nargs="+", choices=["auto", "lean", "fused", "triton"],
                   help="with --gpu: only these KAN paths (default: auto, lean, fused, and triton where it runs)")
    p.add_argument("--gpu-budget-s", type=float, metavar="S",
                   help="with --gpu: stop the checks after S seconds: the stage in flight is cut, the rest skipped, "
                   "the targets and auto's choices still written (for a machine lent for minutes; default: no limit)")
    add_kernel_memory_argument(p)
    add_malloc_argument(p)
    add_gemm_argument(p)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.compile_mode != "default" and not args.compile:
        p.error(f"--compile-mode {args.compile_mode} compiles each model: add --compile")
    if args.generate and not 0 < args.generate < args.seq:
        p.error(f"--generate takes 1 - {args.seq - 1} new tokens (fewer than --seq {args.seq}, which the prompt and "
                f"the new tokens share), got {args.generate}")
    if args.gpu_budget_s is not None and not (args.gpu and args.gpu_budget_s > 0):
        p.error(f"--gpu-budget-s takes a positive number of seconds, with --gpu (got {args.gpu_budget_s:g}"
                f"{'' if args.gpu else ', without --gpu'})")
    if args.generate and (args.compile or args.gpu):
        p.error("--generate times the eager models' generate(): not with --compile or --gpu (the GPU check's own "
                "generation stage: --gpu --gpu-stages generate)")
    for flag in ("n_layer", "d_model", "n_head", "seq", "batch", "vocab", "steps", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    autotune.set_kernel_memory(args.kernel_memory)
    configure_malloc(args.malloc)
    if args.gemm:
        gemm.set_library(args.gemm)
    if args.gpu:
        result = gpu_checks(args, save=lambda r: write_result(args.json, r, quiet=True))
    else:
        start = time.perf_counter()
        result = run_model_bench(args)
        result["seconds"] = time.perf_counter() - start
        print(format_table(result))
    write_result(args.json, result)
    if result.get("errors"):
        raise SystemExit(f"{len(result['errors'])} check(s) failed: {', '.join(result['errors'])} (tracebacks in the "
                         f"output{' and ' + args.json if args.json else ''})")


if __name__ == "__main__":
    main()
