"""Compute-matched comparisons: KAN arms against GELU-MLP and SwiGLU baselines derived to match them.

    kanformer compare --config configs/compare/readme_cpu.yaml

Every arm trains from the same base run config (same data order, token budget, schedule) for every seed, is
evaluated on the same validation token budget, and lands in ``<out_dir>/<name>/``: ``comparison.md``,
``comparison.json`` and PNG plots. The speed columns time every arm's trained model in this one process, the arms
taking turns (studies/speed.py, ``speed.json``). Finished (arm, seed) runs are skipped when the command is run again,
and an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, _build, check_reusable, load_yaml_config, run_config_from
from ..layers.budget import ffn_flops, ffn_params, match_hidden
from ..layers.registry import check_positive_int
from ..tasks import StockFFN, stock_ffn
from .time_match import WIDEST, StepTimer, match_width, trained_width

BASELINE_MATCHES = ("params", "flops", "time")
STOCK_LABELS = {"mlp": "stock MLP", "swiglu": "stock SwiGLU"}  # what arms matched to the stock FFN say they match


@dataclass
class ArmSpec:
    name: str
    ffn: dict[str, Any] = field(default_factory=dict)  # FFNConfig fields: name, match, hidden, layers, kwargs


@dataclass
class BaselineSpec:
    ffns: list[str] = field(default_factory=lambda: ["mlp", "swiglu"])
    match: list[str] = field(default_factory=lambda: ["params", "flops"])

    def __post_init__(self) -> None:
        bad = [m for m in self.match if m not in BASELINE_MATCHES]
        if bad:
            raise ValueError(f"baselines.match {bad} unknown. Allowed: {', '.join(BASELINE_MATCHES)}")


@dataclass
class RunEvalSpec:
    """How each run's final checkpoint is evaluated (a sweep's ``eval`` section: these keys alone)."""

    tokens: int = 65536
    context: int | None = None
    stride: int | None = None
    throughput_steps: int = 5  # each run's own evaluation times this many training steps


@dataclass
class EvalSpec(RunEvalSpec):
    """A comparison's ``eval`` section: each run's evaluation, and the columns only a comparison makes."""

    # the speed columns: every arm's final checkpoint timed in one process, taking turns (studies/speed.py); 0 rounds:
    # the runs' own timings instead
    speed_rounds: int = 6
    speed_steps: int = 8
    # out-of-domain columns: every arm also scored on these text sources (same token budget, each arm's own
    # tokenizer; kanformer.evaluation.datasets) and lm-evaluation-harness tasks (pip install 'kanformer[lmeval]')
    extra_data: list[str] = field(default_factory=list)
    extra_split: str = "auto"
    tasks: list[str] = field(default_factory=list)
    include_path: str | None = None  # local task YAMLs
    task_limit: float | None = None  # documents per task (or a fraction)

    def __post_init__(self) -> None:
        from ..evaluation.datasets import SPLITS

        if self.extra_split not in SPLITS:
            raise ValueError(f"eval.extra_split must be one of {', '.join(SPLITS)}, got {self.extra_split!r}")
        check_positive_int("eval.speed_rounds", self.speed_rounds, minimum=0)  # 0: no interleaved timing
        check_positive_int("eval.speed_steps", self.speed_steps)


@dataclass
class CompareConfig:
    name: str = "comparison"
    out_dir: str = "runs/compare"
    base: dict[str, Any] = field(default_factory=dict)  # a run config (may name a preset); `ffn` comes from arms
    arms: list[ArmSpec] = field(default_factory=list)
    baselines: BaselineSpec = field(default_factory=BaselineSpec)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval: EvalSpec = field(default_factory=EvalSpec)

    def __post_init__(self) -> None:
        self.arms = [a if isinstance(a, ArmSpec) else _build(ArmSpec, a, f"arms[{i}]") for i, a in enumerate(self.arms)]
        if not self.arms:
            raise ValueError("compare config needs at least one arm under `arms:`")
        if not self.seeds:
            raise ValueError("compare config needs at least one seed")
        check_arm_names([a.name for a in self.arms])

    @property
    def root(self) -> Path:
        return Path(self.out_dir) / self.name


def check_arm_names(names: list[str]) -> None:
    """Arm names must be unique as run-directory names too (``k.a`` and ``k_a`` are one directory), and ``@`` is
    kept for the baselines a comparison derives (``mlp@params``, ``swiglu@flops=<arm>``)."""
    derived = [n for n in names if "@" in n]
    if derived:
        raise ValueError(f"arm names may not contain '@', which names derived baselines (e.g. mlp@params): "
                         f"got {derived}")
    slugs: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"arm names must be non-empty strings, got {name!r}")
        other = slugs.setdefault(_slug(name), name)
        if other != name or names.count(name) > 1:
            raise ValueError(f"arm names {other!r} and {name!r} share the run directory name {_slug(name)!r}: "
                             f"names must differ in letters, digits, '-' or '_'")


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    return load_yaml_config(CompareConfig, path, overrides)


def base_run_config(cfg: CompareConfig, **extra: Any) -> RunConfig:
    return run_config_from(cfg.base, **extra)


# -- planning ---------------------------------------------------------------------------------------------------
@dataclass
class Arm:
    name: str
    role: str  # "kan" or "baseline"
    ffn: dict[str, Any]
    matched_to: str | None = None  # arm (or the stock FFN: "stock MLP", "stock SwiGLU") this one is matched to
    match: str | None = None
    ffn_params: int = 0
    ffn_flops: int = 0
    hidden: int = 0
    also_matches: list[str] = field(default_factory=list)  # KAN arms this baseline also matches (deduplicated)


def _resolve_hidden(ffn: dict[str, Any], stock: StockFFN) -> int:
    """The width an arm trains at: its own, or the one matching the stock FFN (what kanify solves in training)."""
    if ffn.get("hidden"):
        return ffn["hidden"]
    kw = {**stock.kwargs_for(ffn["name"]), **ffn.get("kwargs", {})}
    target = ffn.get("match", "params")
    cost = ffn_params if target == "params" else ffn_flops
    reference = cost(stock.name, stock.d_model, stock.hidden, **stock.kwargs)
    return match_hidden(ffn["name"], stock.d_model, target=target, reference=reference, **kw)


def plan_arms(cfg: CompareConfig, *, step_time=None, log=None) -> list[Arm]:
    """KAN arms as given, then baselines matched by params (to the stock MLP, which every KAN arm is matched to by
    default), by FLOPs per token (one per KAN arm) and, on request, by measured step time (``step_time(ffn) -> s``;
    a time-matched baseline with a run in the comparison's directory keeps that run's width:
    ``time_match.trained_width``)."""
    stock = stock_ffn(base_run_config(cfg))  # the stock model's own FFN: every width is matched to it
    d, reference = stock.d_model, STOCK_LABELS.get(stock.name, f"stock {stock.name}")
    arms = []
    for spec in cfg.arms:
        ffn = {"match": "params", **spec.ffn}
        if ffn.get("hidden") is not None:
            ffn["match"] = None
        h = _resolve_hidden(ffn, stock)
        kw = ffn.get("kwargs", {})
        arms.append(Arm(spec.name, "kan", ffn, reference, ffn["match"], ffn_params(ffn["name"], d, h, **kw),
                        ffn_flops(ffn["name"], d, h, **kw), h))
    kan_arms = list(arms)
    for target in cfg.baselines.match:
        for base_ffn in cfg.baselines.ffns:
            kw = stock.kwargs_for(base_ffn)
            if target == "params":
                ffn = {"name": base_ffn, "match": "params", "kwargs": kw}
                h = _resolve_hidden(ffn, stock)
                arms.append(Arm(f"{base_ffn}@params", "baseline", ffn, reference, "params",
                                ffn_params(base_ffn, d, h, **kw), ffn_flops(base_ffn, d, h, **kw), h))
                continue
            for kan in kan_arms:
                if target == "flops":
                    h = match_hidden(base_ffn, d, target="flops", reference=kan.ffn_flops, **kw)
                else:
                    h = _time_matched_width(cfg, base_ffn, kw, kan, step_time, d, log or print)
                same = next((a for a in arms if a.role == "baseline" and a.ffn["name"] == base_ffn and a.hidden == h),
                            None)
                if same is not None:  # e.g. the FLOPs-matched width equals the parameter-matched one: train it once
                    same.also_matches.append(kan.name)
                    continue
                ffn = {"name": base_ffn, "match": None, "hidden": h, "kwargs": kw}
                arms.append(Arm(f"{base_ffn}@{target}={kan.name}", "baseline", ffn, kan.name, target,
                                ffn_params(base_ffn, d, h, **kw), ffn_flops(base_ffn, d, h, **kw), h))
    slugs = [_slug(a.name) for a in arms]
    clash = sorted({a.name for a, s in zip(arms, slugs, strict=True) if slugs.count(s) > 1})
    if clash:
        raise ValueError(f"arms {clash} would share a run directory: rename the KAN arm(s)")
    return arms


def _time_matched_width(cfg: CompareConfig, name: str, kw: dict[str, Any], kan: Arm, step_time, d: int,
                        log) -> int:
    """The width of FFN ``name`` whose training step takes ``kan``'s: its runs' own where it has some, else measured
    (studies/time_match.py), and logged with the two step times."""
    arm = f"{name}@time={kan.name}"
    h = trained_width(cfg.root / "runs", _slug(arm), cfg.seeds)
    if h is not None:
        log(f"{arm}: width {h}, as its runs trained (not timed again)")
        return h
    target = step_time(kan.ffn)
    h = match_width(name, kw, target, step_time, d)
    got = step_time({"name": name, "match": None, "hidden": h, "kwargs": kw})
    capped = "" if got >= target else (f": still faster at the widest width tried ({WIDEST} x d_model), so not "
                                       "time-matched (at this model size the step's fixed costs outweigh the width)")
    log(f"{arm}: width {h}, its training step {got * 1e3:.1f} ms against {kan.name}'s {target * 1e3:.1f} ms{capped}")
    return h


# -- running ----------------------------------------------------------------------------------------------------
def arm_run_config(cfg: CompareConfig, arm: Arm, seed: int) -> RunConfig:
    log = {"group": cfg.name, "tags": [arm.role, arm.ffn["name"], f"seed{seed}"]}
    return base_run_config(cfg, name=f"{_slug(arm.name)}-s{seed}", out_dir=str(cfg.root / "runs"),
                           ffn=arm.ffn, train={"seed": seed}, log=log)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def run_compare(cfg: CompareConfig, *, report_only: bool = False, log=print) -> dict[str, Any]:
    from ..evaluation.validation import evaluate_checkpoint
    from ..train import train

    step_time = step_timer(cfg) if "time" in cfg.baselines.match else None
    arms = plan_arms(cfg, step_time=step_time, log=log)
    cfg.root.mkdir(parents=True, exist_ok=True)
    log(f"comparison {cfg.name}: {len(arms)} arms x {len(cfg.seeds)} seed(s) -> {cfg.root}")
    results: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        for seed in cfg.seeds:
            run_cfg = arm_run_config(cfg, arm, seed)
            check_reusable(run_cfg)  # a directory of another config is never resumed or reported as this arm
            path = run_cfg.run_dir / "results.json"
            if not path.exists():
                if report_only:
                    continue
                log(f"-- {arm.name} seed {seed}: training ({run_cfg.run_dir})")
                if not train(run_cfg, resume="auto")["finished"]:
                    raise RuntimeError(f"{arm.name} seed {seed} stopped before the end; rerun to resume it")
                e = cfg.eval
                evaluate_checkpoint(run_cfg.run_dir / "final", run_cfg, tokens=e.tokens, context=e.context,
                                    stride=e.stride, throughput_steps=e.throughput_steps, out=path)
            else:
                log(f"-- {arm.name} seed {seed}: done, skipped")
            if not report_only:
                evaluate_extra(cfg.eval, run_cfg.run_dir / "final", path, log=log)
            result = json.loads(path.read_text())
            results.setdefault(arm.name, []).append({"seed": seed, "run_dir": str(run_cfg.run_dir),
                                                     **result["metrics"], **extra_metrics(result)})
    speed = arms_speed(cfg, arms, results, report_only=report_only, log=log)
    summary = summarise(cfg, arms, results, speed)
    write_outputs(cfg, summary)
    return summary


def arms_speed(cfg: CompareConfig, arms: list[Arm], results: dict[str, list[dict[str, Any]]], *,
               report_only: bool = False, log=print) -> dict[str, Any] | None:
    """The trained arms timed in one process, taking turns (studies/speed.py), each from its first seed's final
    checkpoint."""
    from .speed import comparison_speed, reference_arm

    trained = [a for a in arms if results.get(a.name)]
    if not trained:
        return None
    finals = {a.name: Path(results[a.name][0]["run_dir"]) / "final" for a in trained}
    reference = reference_arm([(a.name, a.role) for a in trained])
    return comparison_speed(cfg.root, finals, reference, base_run_config(cfg), rounds=cfg.eval.speed_rounds,
                            steps=cfg.eval.speed_steps, report_only=report_only, log=log)


def evaluate_extra(e: EvalSpec, final: Path, path: Path, *, log=print) -> None:
    """Score ``final`` on the out-of-domain data and tasks its ``results.json`` (``path``) does not hold yet."""
    result = json.loads(path.read_text())
    data = [d for d in e.extra_data if d not in result.get("datasets", {})]
    tasks = [t for t in e.tasks if t not in result.get("tasks", {})]
    if not (data or tasks):
        return
    from ..evaluation.datasets import evaluate_data, merge_results

    done = evaluate_data([final], data, tokens=e.tokens, context=e.context, stride=e.stride, split=e.extra_split,
                         tasks=tasks, include_path=e.include_path, limit=e.task_limit, log=log)["rows"][0]
    merge_results(path, done["datasets"], done["tasks"])


def extra_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flat out-of-domain metrics of one results.json: ``bpb@<source>`` and ``<task>:<metric>``."""
    out = {f"bpb@{spec}": s["bpb"] for spec, s in result.get("datasets", {}).items() if "bpb" in s}
    out.update({f"{task}:{m}": v for task, ms in result.get("tasks", {}).items() for m, v in ms.items()})
    return out


def step_timer(cfg: CompareConfig, **timing: Any) -> StepTimer:
    """Seconds of one training step of the base model with a given FFN, timed in turns with the stock model
    (studies/time_match.py), for time-matched baselines; ``timing``: StepTimer's rounds, turn_s and device."""
    return StepTimer(lambda ffn: base_run_config(cfg) if ffn is None else base_run_config(cfg, ffn=ffn), **timing)


# -- summarising ------------------------------------------------------------------------------------------------
def welch_t_test(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's unequal-variance t-test; None with fewer than two values on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 0.0 if statistics.mean(a) != statistics.mean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


METRICS = ("val_ppl", "val_bpb", "val_nll", "val_loss", "val_acc", "train_tokens_per_s", "generate_tokens_per_s",
           "prefill_tokens_per_s", "peak_rss_bytes", "peak_rss_growth_bytes", "peak_allocated_bytes",
           "peak_allocated_growth_bytes",
           "activation_bytes", "mfu", "ffn_fwd_fraction", "ffn_bwd_fraction")


def summarise(cfg: CompareConfig, arms: list[Arm], results: dict[str, list[dict[str, Any]]],
              speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each arm's metrics over its seeds, p-values against its baselines, and its interleaved speed (``speed``,
    studies/speed.py) where measured."""
    quality = "val_nll" if any("val_nll" in r for rs in results.values() for r in rs) else "val_loss"
    wanted = [f"bpb@{d}" for d in cfg.eval.extra_data]
    extra = [k for k in dict.fromkeys(k for rs in results.values() for r in rs for k in r if k not in METRICS)
             if k in wanted or (":" in k and k.split(":")[0] in cfg.eval.tasks)]
    rows = []
    for arm in arms:
        runs = results.get(arm.name, [])
        row: dict[str, Any] = {"arm": arm.name, "role": arm.role, "ffn": arm.ffn["name"], "hidden": arm.hidden,
                               "match": arm.match, "matched_to": arm.matched_to, "also_matches": arm.also_matches,
                               "ffn_params": arm.ffn_params,
                               "ffn_flops_per_token": arm.ffn_flops, "seeds": [r["seed"] for r in runs],
                               "run_dirs": [r["run_dir"] for r in runs]}
        if runs:
            row["params"] = runs[0]["params"]
            row["flops_per_token"] = runs[0]["flops_per_token"]
        for key in (*METRICS, *extra):
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                row[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1
                            else 0.0, "values": values}
        if speed and arm.name in speed["arms"]:
            row["speed"] = {k: v for k, v in speed["arms"][arm.name].items() if k != "checkpoint"}
        rows.append(row)
    by_name = {r["arm"]: r for r in rows}
    for row in rows:
        if row["role"] != "kan" or quality not in row:
            continue
        row["p_values"], row["extra_p_values"] = {}, {}
        for other in rows:
            matches = (other["matched_to"] == row["arm"] or str(other["matched_to"]).startswith("stock ")
                       or row["arm"] in other["also_matches"])
            if other["role"] == "baseline" and matches and quality in other:
                row["p_values"][other["arm"]] = welch_t_test(row[quality]["values"], by_name[other["arm"]][quality]
                                                             ["values"])
                for key in extra:  # the out-of-domain columns, against the same baselines
                    if key in row and key in other:
                        row["extra_p_values"].setdefault(key, {})[other["arm"]] = welch_t_test(
                            row[key]["values"], other[key]["values"])
    out = {"name": cfg.name, "quality_metric": quality, "seeds": cfg.seeds, "arms": rows, "extra_metrics": extra,
           "base": base_run_config(cfg).to_dict(), "eval": vars(cfg.eval)}
    if speed:
        out["speed"] = {k: v for k, v in speed.items() if k not in ("arms", "key")}
    return out


def _fmt(row: dict[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
    if key not in row:
        return "-"
    m, s = row[key]["mean"] * scale, row[key]["std"] * scale
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(row[key]["values"]) > 1 else f"{m:.{digits}f}"


def _speed_cells(row: dict[str, Any], kind: str, interleaved: bool) -> list[str]:
    """A row's tokens/s of ``kind`` (``train``, ``generate``), and with the interleaved timing its ratio to the
    reference arm: median (lowest - highest round). Without it, the runs' own timings, mean ± std over seeds."""
    if not interleaved:
        return [_fmt(row, f"{kind}_tokens_per_s", digits=0)]
    speed = row.get("speed", {})
    if f"{kind}_tokens_per_s" not in speed:
        return ["-", "-"]
    x = speed[f"{kind}_x_reference"]
    return [f"{speed[f'{kind}_tokens_per_s']:.0f}", f"{x['median']:.2f} ({x['low']:.2f} - {x['high']:.2f})"]


def markdown_table(summary: dict[str, Any]) -> str:
    text = summary["quality_metric"] == "val_nll"
    q_head = "val ppl | val bits/byte" if text else "val loss | val acc"
    extra = summary.get("extra_metrics", [])
    speed = summary.get("speed")
    speed_head = [f"{kind} tok/s" + (f" | {kind} x {speed['reference']}" if speed else "") for kind in ("train", "gen")]
    lines = [f"| arm | FFN (hidden) | matched | params | FFN params | MFLOPs/token | {q_head} | "
             + "".join(f"{k.replace('bpb@', 'bits/byte on ')} | " for k in extra) + " | ".join(speed_head)
             + f" | activations MB | p-values (Welch, {summary['quality_metric']}) |",
             "|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * (len(extra) + 2 * (2 if speed else 1)) + "---:|---|"]
    for r in summary["arms"]:
        quality = (f"{_fmt(r, 'val_ppl')} | {_fmt(r, 'val_bpb', digits=3)}" if text else
                   f"{_fmt(r, 'val_loss', digits=3)} | {_fmt(r, 'val_acc', digits=3)}")
        pv = ", ".join(f"{k}: {v:.3g}" for k, v in r.get("p_values", {}).items() if v is not None) or "-"
        matched = f"{r['match']} -> {r['matched_to']}" if r["match"] else "-"
        if r["also_matches"]:
            matched += f" (= flops -> {', '.join(r['also_matches'])})"
        lines.append(
            f"| {r['arm']} | {r['ffn']} ({r['hidden']}) | {matched} | {r.get('params', 0):,} | {r['ffn_params']:,} | "
            f"{r.get('flops_per_token', 0) / 1e6:.2f} | {quality} | "
            + "".join(f"{_fmt(r, k, digits=4)} | " for k in extra)
            + " | ".join(_speed_cells(r, "train", bool(speed)) + _speed_cells(r, "generate", bool(speed)))
            + f" | {_fmt(r, 'activation_bytes', 1 / 2**20, 1)} | {pv} |")
    return "\n".join(lines)


def speed_note(speed: dict[str, Any] | None) -> str:
    """The header's words on the speed columns: how and where they were timed."""
    if not speed:
        return (" Speed: each run's own evaluation, timed once at its own moment (`eval.speed_rounds: 0`, or not "
                "measured yet): on a shared machine such timings move by tens of percent between runs.")
    ref, what = speed["reference"], f"{speed['steps']} training steps of {speed['tokens_per_step']} tokens"
    setup = ("eager" if speed.get("compile", "none") == "none" else f"compile {speed['compile']}") + (
        "" if speed.get("mixed_precision", "no") == "no" else f", {speed['mixed_precision']} autocast")
    return (f" Speed: every arm's final checkpoint (first seed) timed in one process on {speed['machine']}, taking "
            f"turns in {speed['rounds']} rounds (every other round in reverse order) of {what} each (random "
            f"tokens, AdamW included, as the runs trained: {setup}) and, for a language model, a greedy generation; "
            f"`x {ref}`: the median of the arm's same-round ratios to {ref}, (lowest - highest round). The runs' own "
            f"timings are in comparison.json (`train_tokens_per_s`).")


def write_outputs(cfg: CompareConfig, summary: dict[str, Any]) -> None:
    from ..train.metrics import dumps
    from .plots import comparison_plots

    root = cfg.root
    table = markdown_table(summary)
    n = len(summary["seeds"])
    header = (f"# {cfg.name}\n\n{len(summary['arms'])} arms, {n} seed(s) each ({', '.join(map(str, cfg.seeds))}); "
              f"mean ± std over seeds. Same data order, token budget and schedule for every arm; quality on "
              f"{cfg.eval.tokens} validation tokens. FLOPs: forward per token (kanformer.layers.flops). Activations: "
              f"bytes autograd saves for backward in one training step (peak memory per device in comparison.json)."
              f"{speed_note(summary.get('speed'))}\n\n")
    (root / "comparison.md").write_text(header + table + "\n")
    (root / "comparison.json").write_text(dumps(summary, indent=2, default=str))
    summary["plots"] = comparison_plots(summary, root)
    _wandb_summary(cfg, summary)


def _wandb_summary(cfg: CompareConfig, summary: dict[str, Any]) -> None:
    mode = summary["base"]["log"]["wandb"]
    if mode == "disabled":
        return
    import wandb

    extra = summary.get("extra_metrics", [])
    columns = ["arm", "ffn", "hidden", "params", "flops_per_token", summary["quality_metric"], "train_tokens_per_s",
               *extra, "train_x_reference"]
    data = [[r["arm"], r["ffn"], r["hidden"], r.get("params"), r.get("flops_per_token"),
             *(r.get(k, {}).get("mean") for k in (summary["quality_metric"], "train_tokens_per_s", *extra)),
             r.get("speed", {}).get("train_x_reference", {}).get("median")]
            for r in summary["arms"]]
    run = wandb.init(project=summary["base"]["log"]["project"], group=cfg.name, name=f"{cfg.name}-summary",
                     job_type="summary", dir=str(cfg.root), mode=mode, reinit="finish_previous")
    run.log({"comparison": wandb.Table(columns=columns, data=data)})
    run.finish()
