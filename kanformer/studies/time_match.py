"""Time-matched baselines: the width of a baseline FFN whose training step takes a KAN arm's time.

Each candidate model is timed as its run would train (device, kernel path, mixed precision, ``train.compile``,
AdamW, CPU allocator: studies/speed.py's set-up), in turns with the stock model (the anchor): its step time is the
median of its same-round ratios to the anchor times the anchor's own step time as first measured. Timed one after the
other, a machine's drift between the KAN arm's timing and a width's moved the width (2-core Zen 5, debug GPT-2,
B-spline arm: its step read 22.3 ms in one process and 8.4 ms in the next; timed for about a second each, the planned
MLP widths read 896, 1648 and 1700 in three processes; in turns 2044, 2048 and 2048, where 2048 is the widest tried;
at the demo's size, d 128, in turns 660 and 644 in two). A comparison run again keeps the width its runs trained at
(:func:`trained_width`).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, read_yaml
from ..data.device import batch_to_device
from ..evaluation.interleaved import round_order
from ..evaluation.metrics import settle
from ..layers import autotune
from ..layers.dispatch import set_kernel
from ..tasks import task_for
from ..train.allocator import configure as configure_malloc
from ..train.model_factory import build_model, compile_for_training
from ..train.optim import adamw as build_adamw
from .speed import run_precision

WIDEST = 64  # a time-matched width is sought up to this many times d_model


def in_turns(anchor: Callable[[], float], candidate: Callable[[], float], rounds: int) -> tuple[float, list[float]]:
    """The median of ``candidate()``'s per-round ratios to ``anchor()`` (each a turn's seconds per step), the two
    taking turns, every other round in reverse order; and the anchor's turns."""
    ratios, anchors = [], []
    for r in range(rounds):
        times = {}
        for name in round_order(["anchor", "candidate"], r):
            times[name] = anchor() if name == "anchor" else candidate()
        ratios.append(times["candidate"] / times["anchor"])
        anchors.append(times["anchor"])
    return statistics.median(ratios), anchors


class StepTimer:
    """``timer(ffn)``: seconds of one training step of the run ``config_for(ffn)`` (``ffn``: an FFNConfig's fields;
    None: the stock model's own FFN), in turns with the stock model; ``rounds`` turns each, each turn about
    ``turn_s`` of steps; on ``device`` (default: where the runs train)."""

    def __init__(self, config_for: Callable[[dict[str, Any] | None], RunConfig], *, rounds: int = 5,
                 turn_s: float = 0.1, device: torch.device | None = None) -> None:
        self.config_for, self.rounds, self.turn_s = config_for, rounds, turn_s
        self.cfg = config_for(None)
        # where the runs train: a GPU where there is one (as the trainer's accelerate picks)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cache: dict[str, float] = {}
        self.anchor: Callable[[], float] | None = None
        self.anchor_s = 0.0

    def __call__(self, ffn: dict[str, Any]) -> float:
        key = json.dumps(ffn, sort_keys=True)
        if key not in self.cache:
            t = self.cfg.train
            if self.device.type == "cpu":  # as the trainer sets it, for the process
                configure_malloc(t.cpu_malloc)
            rule = autotune.kernel_memory()
            autotune.set_kernel_memory(t.kernel_memory)
            try:
                if self.anchor is None:
                    self.anchor = self._turns(None)
                    self.anchor_s = statistics.median(self.anchor() for _ in range(self.rounds))
                ratio, _ = in_turns(self.anchor, self._turns(ffn), self.rounds)
            finally:
                autotune.set_kernel_memory(rule)
            self.cache[key] = ratio * self.anchor_s
        return self.cache[key]

    def _turns(self, ffn: dict[str, Any] | None) -> Callable[[], float]:
        """A turn of the model with ``ffn`` (None: the stock model's own): its steps' mean seconds, over as many
        steps as fill ``turn_s`` (sized once, after it settled)."""
        cfg = self.config_for(ffn)
        t, task = cfg.train, task_for(cfg)
        vocab = cfg.data.vocab_size
        model, _ = build_model(cfg, vocab_size=vocab, eos_token_id=0, labels=[str(i) for i in range(10)])
        model = model.to(self.device).train()
        if t.kernel is not None:
            set_kernel(model, t.kernel)
        images = {} if task.text else {"channels": getattr(model.config, "num_channels", 1)}
        batch = batch_to_device(task.random_batch(cfg.model, vocab, t.batch_size, torch.Generator().manual_seed(0),
                                                  **images), self.device)
        trained = compile_for_training(model, t.compile)
        opt = build_adamw(model.parameters(), impl=t.adamw, lr=1e-4)

        def step() -> None:
            with run_precision(cfg, self.device):
                trained(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def timed(steps: int) -> float:
            self._sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            self._sync()
            return (time.perf_counter() - t0) / steps

        step()
        settle(step, "the time-matched widths", first_call=False)
        steps = max(1, min(200, round(self.turn_s / max(timed(2), 1e-6))))
        return lambda: timed(steps)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def match_width(name: str, kw: dict[str, Any], target_s: float, step_time: Callable[[dict[str, Any]], float],
                d: int) -> int:
    """Bisection on the width of FFN ``name`` whose training step takes ``target_s`` (time grows with width): the
    first width found at least as slow, up to ``WIDEST`` x ``d``."""
    lo, hi = 1, 4 * d
    while step_time({"name": name, "match": None, "hidden": hi, "kwargs": kw}) < target_s and hi < WIDEST * d:
        lo, hi = hi, hi * 2
    for _ in range(8):
        if hi - lo <= max(1, d // 32):
            break
        mid = (lo + hi) // 2
        t = step_time({"name": name, "match": None, "hidden": mid, "kwargs": kw})
        lo, hi = (mid, hi) if t < target_s else (lo, mid)
    return hi


def trained_width(runs: Path, slug: str, seeds: list[int]) -> int | None:
    """The width of a time-matched baseline where a run of it (``<runs>/<slug>-s<seed>``, any seed) exists: an
    interrupted or repeated comparison goes on at that width. Timed again, the width would move with the machine's
    noise, and the run directory, holding a run of another width, would be an error (``config.check_reusable``)."""
    for seed in seeds:
        path = runs / f"{slug}-s{seed}" / "config.yaml"
        if path.is_file():
            hidden = ((read_yaml(path.read_text()) or {}).get("ffn") or {}).get("hidden")
            if isinstance(hidden, int) and hidden > 0:
                return hidden
    return None
