"""A comparison's speed columns: every arm's trained model timed in one process, the arms taking turns.

Each run's own evaluation times its model once, a few steps, at its own moment: on a shared machine those moments
differ by more than the arms do (the README's demo read the B-spline GPT-2's training at 0.73x the MLP GPT-2's where
``benchmarks/bench_model.py``, interleaved, read 0.94x within the hour). Here every arm's final checkpoint (of its
first seed: every seed has the same architecture) takes a turn in each of ``eval.speed_rounds`` rounds, every other
round in reverse order (evaluation/interleaved.py), and an arm's speed is the median of its same-round ratios to the
reference arm (the parameter-matched GELU MLP where the comparison has one), with the lowest and highest round.

A turn loads its arm's checkpoint, times ``eval.speed_steps`` training steps on random tokens as the run trained (its
``train.kernel``, ``kernel_memory``, ``compile``, ``adamw``, ``cpu_malloc`` and mixed precision) and, for a causal LM,
a greedy generation, then frees the model: one arm's model at a time is resident, however many arms the comparison
has. The result is written to ``<out_dir>/<name>/speed.json`` and reused while the arms' checkpoints, the rounds, the
steps, that training set-up and the machine are the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..data.device import batch_to_device
from ..evaluation.interleaved import machine, round_order, same_round_ratios
from ..evaluation.metrics import measure_training
from ..evaluation.validation import measure_generation
from ..layers import autotune
from ..layers.dispatch import set_kernel
from ..layers.gemm import MIXED_PRECISION_DTYPES
from ..layers.widen import widened_autocast
from ..tasks import CausalLM, Task, task_for
from ..train.allocator import configure as configure_malloc
from ..train.model_factory import compile_for_training

SPEED_FILE = "speed.json"


def reference_arm(names_roles: list[tuple[str, str]]) -> str:
    """The arm the others are compared to: the parameter-matched GELU MLP, else the first baseline, else the first
    arm."""
    names = [n for n, _ in names_roles]
    if "mlp@params" in names:
        return "mlp@params"
    return next((n for n, role in names_roles if role == "baseline"), names[0])


def comparison_speed(root: Path, finals: dict[str, Path], reference: str, cfg: RunConfig, *, rounds: int, steps: int,
                     report_only: bool = False, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The speed of each arm's checkpoint in ``finals`` (name -> final checkpoint), interleaved; ``speed.json`` under
    ``root`` when it holds this measurement already. None where nothing is timed: ``rounds`` 0, the reference arm
    not trained yet, or ``report_only`` without a stored measurement."""
    if rounds <= 0 or reference not in finals:
        return None
    missing = [name for name, path in finals.items() if not (path / "config.json").is_file()]
    if missing:
        log(f"speed: no final checkpoint for {', '.join(missing)} (deleted?): left out of the speed columns")
        finals = {name: path for name, path in finals.items() if name not in missing}
        if reference not in finals:
            return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key = {"arms": {name: str(path) for name, path in finals.items()}, "reference": reference, "rounds": rounds,
           "steps": steps, "training": training_setup(cfg), "machine": machine(device)}
    path = root / SPEED_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored
    if report_only:
        return None
    order = [reference] + [name for name in finals if name != reference]
    try:
        result = time_checkpoints({name: finals[name] for name in order}, cfg, device, rounds=rounds, steps=steps,
                                  log=log)
    except Exception as e:  # the trained runs are safe on disk: the table falls back to their own timings
        log(f"speed: the timing in turns failed ({type(e).__name__}: {e}); the table shows each run's own timing "
            f"(run the command again to retry, or set eval.speed_rounds: 0)")
        return None
    result["key"] = key
    from ..train.metrics import dumps

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(result, indent=2))
    os.replace(tmp, path)
    return result


def training_setup(cfg: RunConfig) -> dict[str, Any]:
    """What of the run's training the speed turns reproduce."""
    t = cfg.train
    return {"kernel": t.kernel, "kernel_memory": t.kernel_memory, "compile": t.compile, "adamw": t.adamw,
            "mixed_precision": t.mixed_precision, "cpu_malloc": t.cpu_malloc}


def time_checkpoints(finals: dict[str, Path], cfg: RunConfig, device: torch.device, *, rounds: int, steps: int,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Interleaved training (and generation) tokens/s of each checkpoint; the first is the reference."""
    task = task_for(cfg)
    m, batch_size = cfg.model, cfg.train.batch_size
    seq = task.seq_len(m)
    generates = isinstance(task, CausalLM)
    t = cfg.train
    turns: dict[str, dict[str, list[float]]] = {name: {"train": [], "generate": []} for name in finals}
    log(f"speed: {len(finals)} arms x {rounds} rounds of {steps} training steps"
        + (" and a generation" if generates else "") + f", taking turns ({machine(device)})")
    if device.type == "cpu":  # as the trainer sets it (for the process, for good): a process that trained nothing had
        configure_malloc(t.cpu_malloc)  # the system's, and its steps faulted their transients' pages in each time
    memory_rule = autotune.kernel_memory()
    autotune.set_kernel_memory(t.kernel_memory)  # for the process, as the trainer sets it; restored below
    try:
        for r in range(rounds):
            for name in round_order(list(finals), r):
                _turn(finals[name], cfg, device, task, r, steps, turns[name])
            log(f"speed round {r + 1}/{rounds}: " + ", ".join(f"{name} {turns[name]['train'][-1]:,.0f}"
                                                              for name in finals) + " training tokens/s")
    finally:
        autotune.set_kernel_memory(memory_rule)
    reference = next(iter(finals))
    arms = {}
    for name, times in turns.items():
        arm: dict[str, Any] = {"checkpoint": str(finals[name])}
        for kind in ("train", "generate"):
            if times[kind]:
                arm[f"{kind}_tokens_per_s"] = statistics.median(times[kind])
                arm[f"{kind}_rounds"] = times[kind]
                arm[f"{kind}_x_reference"] = same_round_ratios(times[kind], turns[reference][kind])
        arms[name] = arm
    return {"reference": reference, "device": str(device), "machine": machine(device), "rounds": rounds,
            "steps": steps, "tokens_per_step": batch_size * seq, **training_setup(cfg), "arms": arms}


def _turn(final: Path, cfg: RunConfig, device: torch.device, task: Task, r: int, steps: int,
          times: dict[str, list[float]]) -> None:
    """One arm's turn in round ``r``: its checkpoint loaded, set up as its run trained, timed, freed."""
    t, m, batch_size = cfg.train, cfg.model, cfg.train.batch_size
    seq = task.seq_len(m)
    with _quiet_loading():
        model = task.auto().from_pretrained(final).to(device)
    if t.kernel is not None:
        set_kernel(model, t.kernel)
    vocab = getattr(model.config, "vocab_size", 0)  # an image classifier's inputs are pixels, its channels its own
    images = {} if task.text else {"channels": getattr(model.config, "num_channels", 1)}
    batch = batch_to_device(task.random_batch(m, vocab, batch_size, torch.Generator().manual_seed(r), **images),
                            device)
    with run_precision(cfg, device):
        trained = measure_training(compile_for_training(model, t.compile), lambda b=batch: b, batch_size * seq,
                                   steps=steps, warmup=2 if r == 0 else 1, adamw=t.adamw, details=False)
        times["train"].append(trained["train_tokens_per_s"])
        if isinstance(task, CausalLM):
            eos = model.config.eos_token_id
            made = measure_generation(model, seq, vocab_size=vocab, pad_token_id=eos if isinstance(eos, int) else 0)
            times["generate"].append(made["generate_tokens_per_s"])
    del model, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No weight-loading progress bar for each turn's checkpoint (the rounds' lines report progress)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def run_precision(cfg: RunConfig, device: torch.device) -> contextlib.ExitStack:
    """The run's mixed precision, as its training took it (on a CPU without native products for it, widened)."""
    dtype = MIXED_PRECISION_DTYPES.get(cfg.train.mixed_precision)
    stack = contextlib.ExitStack()
    if dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
        stack.enter_context(widened_autocast(cfg.train.mixed_precision if device.type == "cpu" else None))
    return stack
