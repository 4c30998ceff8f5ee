"""Scaling sweeps: the fit recovers known laws, token budgets follow each arm's FLOPs, a tiny sweep runs end to end
and a rerun skips what finished."""

import math

import numpy as np
import pytest

from kanformer.studies.scaling import (
    PowerLaw,
    compute_multiplier,
    compute_to_reach,
    fit_power_law,
    frontier_multiplier,
    isoflop_minimum,
)
from kanformer.studies.sweep import emit_commands, load_sweep_config, plan_sweep, run_sweep


@pytest.mark.parametrize("E,A,alpha", [(1.7, 50.0, 0.12), (0.0, 8.0, 0.3), (2.5, 400.0, 0.2)])
def test_fit_recovers_a_noisy_power_law(E, A, alpha):
    rng = np.random.default_rng(1)
    x = np.logspace(12, 17, 10)
    y = (E + A * x ** -alpha) * (1 + 0.003 * rng.standard_normal(10))
    law = fit_power_law(x, y, bootstrap=100)
    assert law.alpha == pytest.approx(alpha, rel=0.1)
    assert law.alpha_ci[0] <= alpha <= law.alpha_ci[1] or abs(law.alpha - alpha) < 0.01
    assert law.E == pytest.approx(E, abs=0.1 + 0.05 * E)


def test_isoflop_minimum_and_compute_multiplier():
    n = np.array([1e6, 3e6, 1e7, 3e7, 1e8])
    loss = 3.0 + 0.2 * (np.log(n) - math.log(1e7)) ** 2
    best = isoflop_minimum(n.tolist(), loss.tolist())
    assert best["params"] == pytest.approx(1e7, rel=1e-6) and best["loss"] == pytest.approx(3.0)
    slow, fast = PowerLaw(1.0, 10.0, 0.1), PowerLaw(1.0, 10.0 / 2**0.1, 0.1)  # fast reaches every loss at C/2
    assert compute_multiplier(slow, fast, 2.0) == pytest.approx(2.0)
    # measured frontiers: b reaches 3.0 at C = 10, a at C = 40 (interpolated in log C between 20 and 80)
    b = ([1.0, 10.0, 100.0], [4.0, 3.0, 2.5])
    a = ([5.0, 20.0, 80.0, 160.0], [4.5, 3.5, 2.5, 2.9])
    assert compute_to_reach(*b, 3.0) == pytest.approx(10.0)
    assert compute_to_reach(*a, 3.0) == pytest.approx(40.0)
    assert frontier_multiplier(a, b, 3.0) == pytest.approx(4.0)
    assert math.isinf(compute_to_reach(*b, 1.0))
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [3, 2])


def _sweep_config(tmp_path, mode="tokens_per_param", extra="", log="{wandb: disabled}"):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"""
name: tiny
out_dir: {tmp_path}
base:
  preset: debug
  train: {{batch_size: 8, log_every: 5}}
  log: {log}
arms:
  - {{name: mlp, ffn: {{name: mlp}}}}
  - {{name: cheb, ffn: {{name: chebyshev}}}}
sizes:
  - {{n_layer: 1, n_embd: 16, n_head: 2}}
  - {{n_layer: 1, n_embd: 24, n_head: 2}}
  - {{n_layer: 2, n_embd: 32, n_head: 2}}
mode: {mode}
tokens_per_param: 0.5
eval: {{tokens: 1024, throughput_steps: 1}}
{extra}
""")
    return load_sweep_config(path)


def test_isoflop_token_budgets_follow_each_arms_flops_per_token(tmp_path):
    cfg = _sweep_config(tmp_path, "isoflop", "budgets: [1.0e+11]\narms:\n  - {name: mlp, ffn: {name: mlp}}\n"
                                             "  - {name: bs, ffn: {name: bspline}}")
    runs = plan_sweep(cfg)
    for size in range(3):
        mlp, kan = (next(r for r in runs if r.arm == a and r.size == size) for a in ("mlp", "bs"))
        assert kan.flops_per_token > mlp.flops_per_token  # basis evaluation costs extra FLOPs ...
        for r in (mlp, kan):  # ... so the KAN arm gets fewer tokens at the same budget: D = C / (3 F)
            per_step = 8 * 32
            assert r.tokens == r.steps * per_step and abs(r.tokens - 1e11 / (3 * r.flops_per_token)) <= per_step
        assert kan.tokens < mlp.tokens


def test_tiny_sweep_end_to_end_and_rerun_skips(tmp_path, monkeypatch):
    from tests.test_train import _scalars

    cfg = _sweep_config(tmp_path, log="{wandb: disabled, trackers: [tensorboard]}")
    summary = run_sweep(cfg, log=lambda *_: None)
    root = tmp_path / "tiny"
    assert len(summary["points"]) == 6
    curves = _scalars(root / "tensorboard")  # the scaling curves, as in the plots
    mlp = sorted((p["params"], p["loss"]) for p in summary["points"] if p["arm"] == "mlp")
    assert curves["scaling/loss_vs_params/mlp"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in mlp]  # fp32 in the log
    assert len(curves["scaling/loss_vs_train_mflops/cheb"]) == 3
    text = (root / "scaling.md").read_text()
    assert "| mlp | 3 |" in text and "| cheb | 3 |" in text
    for name in ("loss_vs_flops.png", "loss_vs_params.png", "loss_vs_wallclock.png", "scaling.json"):
        assert (root / name).stat().st_size > 500
    assert summary["fits"]["mlp"]["vs_flops"]["alpha"] >= 0

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("kanformer.train.train", no_training)
    logs = []
    run_sweep(cfg, log=logs.append)
    assert sum("done, skipped" in line for line in logs) == 6


def test_emit_commands_and_wandb_sweep(tmp_path):
    cfg = _sweep_config(tmp_path)
    lines = emit_commands(cfg, tmp_path / "commands.sh", accelerate_config="configs/accelerate/cpu_2proc.yaml")
    assert len(lines) == 6 and all(line.startswith("accelerate launch --config_file configs/accelerate/cpu_2proc")
                                   for line in lines)
    assert all("--resume auto" in line for line in lines)
    assert (tmp_path / "tiny" / "wandb_sweep.yaml").exists()
    assert len(list((tmp_path / "tiny" / "configs").glob("*.yaml"))) == 6


def test_sweep_config_errors(tmp_path):
    with pytest.raises(ValueError, match="mode isoflop needs budgets"):
        _sweep_config(tmp_path, "isoflop")
    with pytest.raises(ValueError, match="mode must be one of tokens_per_param, isoflop"):
        _sweep_config(tmp_path, "chinchilla")
    with pytest.raises(ValueError, match="reference 'gelu' is not an arm"):
        _sweep_config(tmp_path, extra="reference: gelu")
    # a comparison's own evaluation keys are refused by name, not accepted and ignored
    for key in ("speed_rounds=3", "tasks=[hellaswag]", "extra_data=[wikitext2]"):
        with pytest.raises(ValueError, match=rf"Unknown config key 'eval\.{key.split('=')[0]}'\. Known keys here: "
                                             r"context, stride, throughput_steps, tokens"):
            load_sweep_config(tmp_path / "sweep.yaml", [f"eval.{key}"])


def test_tiny_isoflop_sweep_reports_parabola_minima(tmp_path):
    cfg = _sweep_config(tmp_path, "isoflop", "budgets: [1.2e+10]\narms:\n  - {name: mlp, ffn: {name: mlp}}")
    summary = run_sweep(cfg, log=lambda *_: None)
    assert len(summary["points"]) == 3 and list(summary["isoflop"]) == ["mlp@1.2e+10"]
    assert (tmp_path / "tiny" / "isoflop.png").stat().st_size > 500
    assert "IsoFLOP budget" in (tmp_path / "tiny" / "scaling.md").read_text()
