"""Scaling sweeps: arms x model sizes x seeds, at a fixed tokens-per-parameter ratio or at IsoFLOP budgets.

Token budgets come from each arm's own forward FLOPs per token (``model_flops_per_token``; training = 3x forward),
not from 6N: at an IsoFLOP budget C a KAN arm whose basis evaluation costs extra FLOPs trains on fewer tokens than
an MLP arm of the same size. Runs execute sequentially in-process (resumable: finished runs are skipped, crashed ones
resume from their checkpoint) or are emitted as one ``accelerate launch`` command each (plus a wandb sweep config);
``report`` then fits and plots whatever has finished.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import RunConfig, _build, check_reusable, load_yaml_config, run_config_from, save_config
from ..tasks import task_for
from .compare import ArmSpec, RunEvalSpec, _slug, check_arm_names

MODES = ("tokens_per_param", "isoflop")


@dataclass
class SweepConfig:
    name: str = "sweep"
    out_dir: str = "runs/sweeps"
    base: dict[str, Any] = field(default_factory=dict)  # a run config (may name a preset); model size and ffn vary
    arms: list[ArmSpec] = field(default_factory=list)
    sizes: list[dict[str, Any]] = field(default_factory=list)  # model overrides: n_layer, n_embd, n_head, ...
    mode: str = "tokens_per_param"
    tokens_per_param: float = 20.0  # tokens per non-embedding parameter
    budgets: list[float] = field(default_factory=list)  # isoflop: training FLOPs per run
    seeds: list[int] = field(default_factory=lambda: [0])
    world_size: int = 1  # processes per run when launched on a cluster: sets steps from the global batch
    reference: str | None = None  # arm the compute multipliers are relative to (default: the first arm)
    # each run's evaluation; a comparison's own columns (speed rounds, extra data, harness tasks) are not a sweep's
    eval: RunEvalSpec = field(default_factory=RunEvalSpec)

    def __post_init__(self) -> None:
        self.arms = [a if isinstance(a, ArmSpec) else _build(ArmSpec, a, f"arms[{i}]") for i, a in enumerate(self.arms)]
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if len(self.arms) < 1 or len(self.sizes) < 3:
            raise ValueError(f"a sweep needs >= 1 arm and >= 3 sizes (>= 4 for a fit worth reading), got "
                             f"{len(self.arms)} arms and {len(self.sizes)} sizes")
        if self.mode == "isoflop" and not self.budgets:
            raise ValueError("mode isoflop needs budgets: [training FLOPs, ...]")
        names = [a.name for a in self.arms]
        check_arm_names(names)
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not an arm; arms: {', '.join(names)}")

    @property
    def root(self) -> Path:
        return Path(self.out_dir) / self.name


def load_sweep_config(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    return load_yaml_config(SweepConfig, path, overrides)


@dataclass
class SweepRun:
    arm: str
    size: int  # index into cfg.sizes
    seed: int
    budget: float | None
    params: int  # non-embedding
    flops_per_token: int  # forward
    tokens: int
    steps: int
    config: RunConfig

    @property
    def name(self) -> str:
        tag = f"-C{self.budget:.2g}" if self.budget is not None else ""
        return f"{_slug(self.arm)}-n{self.size}{tag}-s{self.seed}"


def _vocab(run: RunConfig) -> int:
    return {"char": 257, "gpt2": 50257}.get(run.data.tokenizer, run.data.vocab_size)


def _measure(run: RunConfig) -> tuple[int, int]:
    """(non-embedding params, forward FLOPs per token) of the model ``run`` builds, on the meta device."""
    from ..evaluation.metrics import param_counts
    from ..layers.budget import model_flops_per_token
    from ..train.model_factory import build_model

    with torch.device("meta"):
        model, _ = build_model(run, vocab_size=_vocab(run), eos_token_id=0, labels=[str(i) for i in range(10)])
    seq = task_for(run).seq_len(run.model)
    return param_counts(model)["non_embedding_params"], model_flops_per_token(model, seq)


def plan_sweep(cfg: SweepConfig) -> list[SweepRun]:
    runs = []
    for arm in cfg.arms:
        for i, size in enumerate(cfg.sizes):
            probe = run_config_from(cfg.base, model=size, ffn=arm.ffn)
            params, fpt = _measure(probe)  # once per (arm, size): budgets and seeds share the model shape
            for budget in (cfg.budgets if cfg.mode == "isoflop" else [None]):
                for seed in cfg.seeds:
                    tokens = (cfg.tokens_per_param * params if budget is None else budget / (3 * fpt))
                    t = probe.train
                    seq = task_for(probe).seq_len(probe.model)
                    per_step = t.batch_size * t.grad_accum * cfg.world_size * seq
                    steps = max(1, math.ceil(tokens / per_step))
                    train = {"seed": seed, "max_steps": steps, "warmup_steps": min(t.warmup_steps, max(1, steps // 10)),
                             "eval_every": max(1, steps // 5), "save_every": max(1, steps // 4)}
                    run = SweepRun(arm.name, i, seed, budget, params, fpt, steps * per_step, steps, probe)
                    log = {"group": cfg.name, "tags": [arm.name, f"size{i}", f"seed{seed}"]}
                    run.config = run_config_from(cfg.base, model=size, ffn=arm.ffn, name=run.name,
                                                 out_dir=str(cfg.root / "runs"), train=train, log=log)
                    runs.append(run)
    return runs


def run_sweep(cfg: SweepConfig, *, log=print) -> dict[str, Any]:
    from ..evaluation.validation import evaluate_checkpoint
    from ..train import train

    runs = plan_sweep(cfg)
    log(f"sweep {cfg.name}: {len(runs)} runs -> {cfg.root}")
    for r in runs:
        check_reusable(r.config)  # a directory of another config is never resumed or reported as this run
        path = r.config.run_dir / "results.json"
        if path.exists():
            log(f"-- {r.name}: done, skipped")
            continue
        log(f"-- {r.name}: {r.params:,} non-embedding params, {r.tokens:,} tokens, {r.steps} steps")
        if not train(r.config, resume="auto")["finished"]:
            raise RuntimeError(f"{r.name} stopped before the end; rerun to resume it")
        e = cfg.eval
        evaluate_checkpoint(r.config.run_dir / "final", r.config, tokens=e.tokens, context=e.context, stride=e.stride,
                            throughput_steps=e.throughput_steps, out=path)
    return report(cfg, runs)


def emit_commands(cfg: SweepConfig, path: str | Path, *, accelerate_config: str | None = None) -> list[str]:
    """One ``accelerate launch`` line per run (configs written under ``<root>/configs``) and ``wandb_sweep.yaml``."""
    runs = plan_sweep(cfg)
    conf_dir = cfg.root / "configs"
    conf_dir.mkdir(parents=True, exist_ok=True)
    launcher = "accelerate launch" + (f" --config_file {shlex.quote(accelerate_config)}" if accelerate_config else "")
    lines = []
    for r in runs:
        conf = conf_dir / f"{r.name}.yaml"
        save_config(r.config, conf)
        lines.append(f"{launcher} scripts/train.py --config {shlex.quote(str(conf))} --resume auto")
    Path(path).write_text("\n".join(lines) + "\n")
    sweep = {"name": cfg.name, "method": "grid", "program": "scripts/train.py",
             "parameters": {"config": {"values": [str(conf_dir / f"{r.name}.yaml") for r in runs]}},
             "command": ["accelerate", "launch", "${program}", "--resume", "auto", "${args}"]}
    (cfg.root / "wandb_sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return lines


# -- reporting --------------------------------------------------------------------------------------------------
def _collect(cfg: SweepConfig, runs: list[SweepRun]) -> list[dict[str, Any]]:
    points = []
    for r in runs:
        path = r.config.run_dir / "results.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())["metrics"]
        state_files = sorted((r.config.run_dir / "checkpoints").glob("step_*/trainer_state.json"))
        state = json.loads(state_files[-1].read_text()) if state_files else {}
        loss = m.get("val_nll", m.get("val_loss"))
        points.append({"run": r.name, "arm": r.arm, "size": r.size, "seed": r.seed, "budget": r.budget,
                       "params": m["non_embedding_params"], "flops_per_token": m["flops_per_token"],
                       "tokens": state.get("tokens_seen", r.tokens), "flops": state.get("flops_seen"),
                       "wall_s": state.get("wall_s"), "loss": loss})
    return points


def report(cfg: SweepConfig, runs: list[SweepRun] | None = None) -> dict[str, Any]:
    """Fit, tabulate and plot the finished runs: scaling.md, scaling.json and PNGs under the sweep directory."""
    from ..train.metrics import dumps
    from .scaling import fit_power_law, frontier_multiplier, isoflop_minimum

    runs = runs if runs is not None else plan_sweep(cfg)
    points = _collect(cfg, runs)
    arms = [a.name for a in cfg.arms]
    reference = cfg.reference or arms[0]
    fits: dict[str, dict[str, Any]] = {}
    for arm in arms:
        pts = [p for p in points if p["arm"] == arm and p["flops"]]
        entry: dict[str, Any] = {"points": len(pts)}
        for key, x_key in (("vs_flops", "flops"), ("vs_params", "params"), ("vs_wall", "wall_s")):
            xs = [p[x_key] for p in pts if p[x_key]]
            if len({round(x, 6) for x in xs}) >= 3:
                entry[key] = fit_power_law(xs, [p["loss"] for p in pts if p[x_key]])
        fits[arm] = entry
    reachable = [min(p["loss"] for p in points if p["arm"] == a) for a in arms if any(p["arm"] == a for p in points)]
    target = max(reachable) if reachable else None  # a loss every arm reached
    def frontier(arm: str, x_key: str) -> tuple[list[float], list[float]]:
        pts = [p for p in points if p["arm"] == arm and p.get(x_key)]
        return [p[x_key] for p in pts], [p["loss"] for p in pts]

    for arm in arms:
        for x_key, out in (("flops", "compute_multiplier"), ("wall_s", "time_multiplier")):
            if target is not None and frontier(arm, x_key)[0] and frontier(reference, x_key)[0]:
                fits[arm][out] = frontier_multiplier(frontier(arm, x_key), frontier(reference, x_key), target)
    isoflop = {}
    if cfg.mode == "isoflop":
        for arm in arms:
            for budget in cfg.budgets:
                pts = [p for p in points if p["arm"] == arm and p["budget"] == budget]
                isoflop[f"{arm}@{budget:.3g}"] = isoflop_minimum([p["params"] for p in pts], [p["loss"] for p in pts])
    summary = {"name": cfg.name, "mode": cfg.mode, "reference": reference, "target_loss": target, "points": points,
               "fits": {a: {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in f.items()}
                        for a, f in fits.items()},
               "isoflop": isoflop}
    cfg.root.mkdir(parents=True, exist_ok=True)
    (cfg.root / "scaling.json").write_text(dumps(summary, indent=2, default=str))
    (cfg.root / "scaling.md").write_text(_markdown(summary))
    from .plots import scaling_plots

    summary["plots"] = scaling_plots(summary, fits, cfg.root)
    _tracker_outputs(cfg, summary)
    return summary


def _ci(ci: Any) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _markdown(summary: dict[str, Any]) -> str:
    lines = [f"# {summary['name']}\n",
             f"L(C) = E + A C^-alpha fitted per arm on final validation loss (nats) against training FLOPs; 95% "
             f"bootstrap intervals in brackets. Multipliers (from the measured frontiers, interpolated in log "
             f"compute): FLOPs (or seconds) an arm needs to reach loss "
             f"{summary['target_loss'] if summary['target_loss'] is None else round(summary['target_loss'], 4)}, "
             f"relative to {summary['reference']}.\n",
             "| arm | runs | alpha (FLOPs) | E | A | alpha (params) | compute multiplier | wall-clock multiplier |",
             "|---|---:|---|---:|---:|---|---:|---:|"]
    for arm, f in summary["fits"].items():
        c, n = f.get("vs_flops"), f.get("vs_params")
        alpha_c = f"{c['alpha']:.3f}{_ci(c['alpha_ci'])}" if c else "-"
        e_c, a_c = (f"{c['E']:.3f}", f"{c['A']:.3g}") if c else ("-", "-")
        alpha_n = f"{n['alpha']:.3f}{_ci(n['alpha_ci'])}" if n else "-"
        mult = f"{f.get('compute_multiplier', float('nan')):.3g}"
        tmult = f"{f.get('time_multiplier', float('nan')):.3g}"
        lines.append(f"| {arm} | {f['points']} | {alpha_c} | {e_c} | {a_c} | {alpha_n} | {mult} | {tmult} |")
    if summary["isoflop"]:
        lines += ["", "| IsoFLOP budget | optimal non-embedding params | loss |", "|---|---:|---:|"]
        for key, v in summary["isoflop"].items():
            lines.append(f"| {key} | {v['params']:,.0f} | {v['loss']:.4f} |" if v else f"| {key} | - | - |")
    return "\n".join(lines) + "\n"


def _tracker_outputs(cfg: SweepConfig, summary: dict[str, Any]) -> None:
    """The scaling points and fits in each tracker the base config logs to: wandb tables (one run per sweep, in the
    sweep's group) and TensorBoard scalars under ``<sweep>/tensorboard/`` (loss against non-embedding parameters and
    against training MFLOPs, one tag per arm; the fits as text)."""
    trackers = run_config_from(cfg.base).log.active_trackers()
    fit_rows = [[arm, f.get("vs_flops", {}).get("alpha"), f.get("vs_flops", {}).get("E"),
                 f.get("vs_flops", {}).get("A"), f.get("compute_multiplier")] for arm, f in summary["fits"].items()]
    points = sorted(summary["points"], key=lambda p: (p["arm"], p["params"]))
    if "tensorboard" in trackers:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(cfg.root / "tensorboard")) as writer:
            for p in points:
                if p["loss"] is None:
                    continue
                writer.add_scalar(f"scaling/loss_vs_params/{p['arm']}", p["loss"], global_step=int(p["params"]))
                if p.get("flops"):
                    writer.add_scalar(f"scaling/loss_vs_train_mflops/{p['arm']}", p["loss"],
                                      global_step=int(p["flops"] // 10**6))
            writer.add_text("scaling/fits", _markdown(summary))
    if "wandb" in trackers:
        import wandb

        base = run_config_from(cfg.base)
        run = wandb.init(project=base.log.project, group=cfg.name, name=f"{cfg.name}-fits", job_type="scaling-fit",
                         dir=str(cfg.root), mode=base.log.wandb, reinit="finish_previous")
        columns = ["arm", "size", "seed", "params", "flops", "tokens", "loss"]
        run.log({"fits": wandb.Table(columns=["arm", "alpha", "E", "A", "compute_multiplier"], data=fit_rows),
                 "points": wandb.Table(columns=columns, data=[[p.get(c) for c in columns] for p in points])})
        run.finish()
