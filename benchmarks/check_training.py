"""The trainer on a device, as the GPU check runs it (``bench_model --gpu``, stage ``train``): the debug GPT-2 with a
KAN FFN trained a few steps, resumed exactly from a checkpoint, and the synchronising operations a training step makes.

    python -m benchmarks.check_training            # on CUDA where there is one, else on the CPU

On a GPU every read of a device value by the host (a loss printed, a flag tested) waits for the queue to drain, so the
host cannot queue the next kernels while the device runs; the trainer reads the step's numbers once, after its last
backward (``Trainer._forward_backward``). What a step costs is counted as the difference between two runs of different
lengths, so what a run does once (evaluation, checkpoint, export) cancels out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_model import count_syncs


def _config(root: Path, name: str, ffn: str, steps: int, kernel: str, **over: Any) -> Any:
    from kanformer.config import load_config

    settings = {"ffn.name": ffn, "train.max_steps": steps, "train.log_every": 1, "train.save_every": 1000,
                "train.eval_every": 1000, "train.kernel": kernel, **over}
    return load_config(preset="debug", overrides=[f"out_dir={root}", f"name={name}", "log.wandb=disabled",
                                                 *(f"{k}={v}" for k, v in settings.items())])


def _losses(run_dir: Path) -> list[float | None]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


# the grid schedule the trained and resumed runs follow where the FFN has grids (the B-spline): updates from data
# every 4 steps and an extension 5 -> 8 intervals at step 5, so the resumed part starts after both (an adapted,
# extended grid in its checkpoint) and meets one more update
GRID_SCHEDULE = {"kan.grid_update_every": 4, "kan.grid_extend": "{5: 8}"}
GRID_EVENTS = [[4, "update"], [5, "extend"], [8, "update"]]


def check_training(device: torch.device, ffn: str = "bspline", steps: int = 12, stop: int = 6,
                   kernel: str = "lean", precision: str | None = None) -> dict[str, Any]:
    """Train the debug GPT-2 with ``ffn`` FFNs for ``steps`` steps straight, and again stopped at ``stop`` and
    resumed from its checkpoint: whether the losses match (``resume_max_abs_diff``), the loss's fall, the throughput
    of the straight run, and for a B-spline FFN the grid work of ``GRID_SCHEDULE`` done on the device (``grid_events``:
    fitted to data, extended, fitted again; the resumed part loads the adapted, extended grids); and, on CUDA, the
    synchronising operations a training step makes (``syncs_per_step``: those of a run of 2k steps less those of one
    of k, over k, without grid work). ``kernel``: the KAN path (pinned, so that no choice is timed inside the counted
    steps); ``precision``: ``train.mixed_precision`` (default: bf16 on CUDA, as a GPU run trains, else no). The
    trainer picks its device as a run does (accelerate: a GPU where there is one); ``device`` says which device's
    synchronisations to count."""
    from kanformer.train import train

    precision = precision or ("bf16" if device.type == "cuda" else "no")
    grids = GRID_SCHEDULE if ffn == "bspline" else {}
    out: dict[str, Any] = {"ffn": ffn, "kernel": kernel, "steps": steps, "mixed_precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        over = {"train.mixed_precision": precision, **grids}
        straight = _config(root, "straight", ffn, steps, kernel, **over)
        summary = train(straight)
        part = _config(root, "parts", ffn, steps, kernel, **over)
        train(part, stop_at=stop)
        train(part, resume="auto")
        a, b = _losses(straight.run_dir), _losses(part.run_dir)
        finite = all(x is not None for x in a + b) and len(a) == len(b) == steps
        out.update(finished=bool(summary.get("finished")), losses=a,
                   resume_max_abs_diff=max(abs(x - y) for x, y in zip(a, b, strict=True)) if finite else None)
        records = [json.loads(line) for line in (straight.run_dir / "metrics.jsonl").read_text().splitlines()]
        if grids:
            out["grid_events"] = [[r["step"], r["event"]] for r in records if r["type"] == "grid"]
        last = [r for r in records if r["type"] == "train"][-1]
        out.update(tokens_per_s=last.get("tokens_per_s"), compile_s=last.get("compile_s"))
        counts = []
        for n in (stop, 2 * stop):  # steps alone: no record a step (a record reads the loss it logs)
            run = _config(root, f"syncs{n}", ffn, n, kernel, **{"train.log_every": 1000,
                                                                 "train.mixed_precision": precision})
            counts.append(count_syncs(device, lambda run=run: train(run)))
        if counts[0] is not None:  # the lines whose count grew with the steps
            out["syncs_per_step"] = (counts[1]["syncs"] - counts[0]["syncs"]) / stop
            out["syncs_at"] = {k: (v - counts[0]["at"].get(k, 0)) / stop for k, v in counts[1]["at"].items()
                               if v > counts[0]["at"].get(k, 0)}
    # a CPU resumes to the last bit; a GPU's kernels may sum in a different order from run to run (atomics in an
    # embedding's backward), so there the losses are held to 1e-2 (not measured on a GPU yet: the figure is in the
    # result, to set the bound from). A run on another seed (its data order and initialisation) differs by up to
    # 0.057 from the straight run in these 12 steps (development CPU, B-spline, fp32)
    out["resume_tolerance"] = tolerance = 1e-5 if device.type == "cpu" else 1e-2
    out["ok"] = bool(out["finished"] and out["resume_max_abs_diff"] is not None
                     and out["resume_max_abs_diff"] <= tolerance and a[-1] < a[0]
                     and out.get("grid_events", GRID_EVENTS) == GRID_EVENTS)
    return out


def check_time_matching(device: torch.device, ffn: str = "bspline", baseline: str = "mlp",
                        model: dict[str, Any] | None = None, batch_size: int = 8, *, kernel: str | None = None,
                        rounds: int = 3, turn_s: float = 0.05) -> dict[str, Any]:
    """``kanformer compare``'s time-matched baseline planned on ``device`` (studies/time_match.py), as a comparison
    with ``baselines.match: [time]`` plans it before training: the width of a ``baseline`` FFN whose training step
    takes the ``ffn`` arm's time, the GPT-2 of the debug preset with ``model``'s settings over it, each width timed in
    ``rounds`` turns of about ``turn_s`` with the stock model (run precision: bf16 on CUDA, as a GPU run trains;
    ``kernel``: ``train.kernel``, default the run's ``auto``).
    Returns the width, both step times, the widths timed, the seconds the planning took and its log; ``capped``: no
    width up to ``time_match.WIDEST`` x d_model was as slow (a step of fixed costs, where the width weighs little)."""
    from kanformer.studies import compare

    precision = "bf16" if device.type == "cuda" else "no"
    base = {"preset": "debug", "model": dict(model or {}),
            "train": {"batch_size": batch_size, "mixed_precision": precision,
                      **({"kernel": kernel} if kernel else {})}, "log": {"wandb": "disabled"}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "time.yaml"
        path.write_text(json.dumps({"name": "time", "out_dir": tmp, "base": base, "seeds": [0],
                                    "arms": [{"name": ffn, "ffn": {"name": ffn}}],
                                    "baselines": {"ffns": [baseline], "match": ["time"]}}))
        cfg = compare.load_compare_config(path)
        timer, logs = compare.step_timer(cfg, rounds=rounds, turn_s=turn_s, device=device), []
        t0 = time.perf_counter()
        arms = compare.plan_arms(cfg, step_time=timer, log=logs.append)
        seconds = time.perf_counter() - t0
    kan, matched = arms[0], next(a for a in arms if a.role == "baseline")
    kan_s, matched_s = timer(kan.ffn), timer(matched.ffn)
    d = compare.stock_ffn(compare.base_run_config(cfg)).d_model
    return {"device": str(device), "mixed_precision": precision, "kernel": kernel or "auto", "ffn": ffn,
            "baseline": baseline, "d_model": d,
            "width": matched.hidden, "kan_step_ms": kan_s * 1e3, "baseline_step_ms": matched_s * 1e3,
            "capped": matched_s < kan_s, "widths_timed": len(timer.cache),  # as compare's log says it
            "seconds": seconds, "log": logs}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ffn", default="bspline")
    p.add_argument("--kernel", default="lean", help="the KAN path, pinned (default lean: nothing compiles)")
    p.add_argument("--precision", choices=["no", "bf16", "fp16"],
                   help="train.mixed_precision (default: bf16 on CUDA, else no)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = check_training(device, args.ffn, kernel=args.kernel, precision=args.precision)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
