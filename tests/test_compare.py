"""Compute-matched comparisons: baselines within 1% of their targets, outputs written, finished arms skipped."""

import json

import pytest

from kanformer.layers.budget import ffn_flops, ffn_params
from kanformer.studies import compare
from kanformer.studies.compare import load_compare_config, plan_arms, run_compare, welch_t_test


def _config(tmp_path, **extra):
    text = f"""
name: tiny
out_dir: {tmp_path}
base:
  preset: debug
  train: {{max_steps: 4, eval_every: 2, save_every: 4, log_every: 1}}
  log: {{wandb: disabled}}
arms:
  - {{name: bspline, ffn: {{name: bspline, kwargs: {{grid_size: 4}}}}}}
baselines: {{ffns: [mlp, swiglu], match: [params, flops]}}
seeds: [0]
eval: {{tokens: 1024, throughput_steps: 1}}
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return load_compare_config(path, [f"{k}={v}" for k, v in extra.items()])


@pytest.mark.parametrize("kan", ["bspline", "chebyshev", "rational", "rbf", "wavelet"])
def test_matched_baselines_within_one_percent(tmp_path, kan):
    cfg = _config(tmp_path)
    cfg.arms[0].ffn = {"name": kan}
    cfg.base["model"] = {"n_embd": 128, "n_head": 4}
    arms = plan_arms(cfg)
    kan_arm = arms[0]
    stock = ffn_params("mlp", 128, 512, activation="gelu_tanh")
    assert abs(kan_arm.ffn_params - stock) / stock < 0.01
    for arm in arms[1:]:
        if arm.match == "params":
            assert abs(arm.ffn_params - stock) / stock < 0.01, arm
        elif arm.match == "flops":
            assert abs(arm.ffn_flops - kan_arm.ffn_flops) / kan_arm.ffn_flops < 0.01, arm
            assert arm.ffn_flops == ffn_flops(arm.ffn["name"], 128, arm.hidden, **arm.ffn["kwargs"])
    names = [a.name for a in arms]
    assert "mlp@params" in names and "swiglu@params" in names and len(set(names)) == len(names)


def test_tiny_compare_writes_outputs_and_skips_finished_arms(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    summary = run_compare(cfg, log=lambda *_: None)
    root = tmp_path / "tiny"
    table = (root / "comparison.md").read_text()
    assert "| bspline | bspline (" in table and "mlp@params" in table and "swiglu@flops=bspline" in table
    data = json.loads((root / "comparison.json").read_text())
    assert [a["arm"] for a in data["arms"]] == [a["arm"] for a in summary["arms"]]
    for name in ("loss_vs_tokens.png", "loss_vs_flops.png", "loss_vs_time.png", "quality_vs_throughput.png"):
        assert (root / name).stat().st_size > 1000
    arm = data["arms"][0]
    assert arm["val_ppl"]["mean"] > 1 and len(arm["seeds"]) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a finished arm was trained again")

    monkeypatch.setattr("kanformer.train.train", no_training)
    logs = []
    cfg.eval.extra_data = ["files:" + str(tmp_path / "ood.txt")]  # an out-of-domain column, added afterwards
    (tmp_path / "ood.txt").write_text("An out-of-domain document about the weather.\n" * 40)
    again = run_compare(cfg, log=logs.append)
    assert sum("done, skipped" in line for line in logs) == len(again["arms"])
    assert again["arms"][0]["val_ppl"] == summary["arms"][0]["val_ppl"]
    key = f"bpb@files:{tmp_path / 'ood.txt'}"
    assert again["extra_metrics"] == [key] and all(a[key]["mean"] > 0 for a in again["arms"])
    assert set(again["arms"][0]["extra_p_values"][key]) == set(again["arms"][0]["p_values"])  # the same baselines
    assert f"bits/byte on files:{tmp_path / 'ood.txt'}" in (root / "comparison.md").read_text()


def test_welch_t_test():
    assert welch_t_test([1.0], [2.0]) is None
    p = welch_t_test([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert p < 0.001
    assert welch_t_test([1.0, 1.2, 0.8], [1.0, 1.2, 0.8]) == pytest.approx(1.0)


def test_compare_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"baselines.match \['speed'\] unknown. Allowed: params, flops, time"):
        _config(tmp_path, **{"baselines.match": "[speed]"})
    with pytest.raises(ValueError, match="Unknown config key 'arms_'"):
        load_compare_config(_write(tmp_path, "arms_: []"))
    with pytest.raises(ValueError, match="at least one arm"):
        load_compare_config(_write(tmp_path, "name: x"))
    assert compare.BASELINE_MATCHES == ("params", "flops", "time")


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_time_matched_baseline_is_planned_from_measured_steps(tmp_path):
    cfg = _config(tmp_path, **{"baselines.match": "[time]", "baselines.ffns": "[mlp]"})
    timer = compare._step_timer(cfg)
    arms = plan_arms(cfg, step_time=timer)
    (baseline,) = [a for a in arms if a.role == "baseline"]
    assert baseline.name == "mlp@time=bspline" and baseline.hidden >= 1
    # the matched width's step takes about as long as the KAN arm's (loose: shared machines are noisy)
    kan_s, mlp_s = timer(arms[0].ffn), timer(baseline.ffn)
    assert 0.3 < mlp_s / kan_s < 3


def test_tiny_vit_compare(tmp_path):
    path = tmp_path / "vit.yaml"
    path.write_text(f"""
name: vit
out_dir: {tmp_path}
base: {{preset: debug_vit, train: {{max_steps: 3, eval_every: 3, save_every: 3}}, log: {{wandb: disabled}}}}
arms: [{{name: rbf, ffn: {{name: rbf}}}}]
baselines: {{ffns: [mlp], match: [params]}}
seeds: [0]
eval: {{throughput_steps: 1}}
""")
    summary = run_compare(load_compare_config(path), log=lambda *_: None)
    assert summary["quality_metric"] == "val_loss"
    assert 0 <= summary["arms"][0]["val_acc"]["mean"] <= 1
    assert "| rbf | rbf (" in (tmp_path / "vit" / "comparison.md").read_text()
