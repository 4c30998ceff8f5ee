"""Typed configs: YAML + presets + dotted overrides; unknown keys and wrong types name the key."""

import pytest

from kanformer.config import PRESETS, load_config, parse_override, save_config


def test_preset_yaml_and_overrides_resolve_in_order(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("preset: debug\nname: exp\nffn:\n  name: bspline\n  kwargs: {grid_size: 8}\ntrain:\n  lr: 0.002\n")
    cfg = load_config(path, overrides=["train.lr=3e-4", "--ffn.kwargs.grid_size=4", "model.n_layer=3"])
    assert cfg.name == "exp" and cfg.ffn.name == "bspline"
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.ffn.kwargs == {"grid_size": 4}
    assert cfg.model.n_layer == 3 and cfg.model.n_embd == PRESETS["debug"]["model"]["n_embd"]
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg


def test_override_parsing():
    assert parse_override("train.lr=3e-4") == {"train": {"lr": 3e-4}}
    assert parse_override("ffn.layers=[0, 2]") == {"ffn": {"layers": [0, 2]}}
    assert parse_override("ffn.match=null") == {"ffn": {"match": None}}
    with pytest.raises(ValueError, match="must look like section.key=value"):
        parse_override("train.lr")


def test_no_is_a_word_and_only_true_and_false_are_booleans(tmp_path):
    """PyYAML reads YAML 1.1, where no / yes / on / off are booleans; the configs read YAML 1.2's booleans, so
    ``mixed_precision: no``, the setting's own spelling (and accelerate's), works on the command line and in a file."""
    assert load_config(preset="debug", overrides=["train.mixed_precision=no"]).train.mixed_precision == "no"
    path = tmp_path / "exp.yaml"
    path.write_text("preset: debug\ntrain: {mixed_precision: no}\ndata: {streaming: true}\n")
    cfg = load_config(path)
    assert cfg.train.mixed_precision == "no" and cfg.data.streaming is True
    assert parse_override("data.augment=False") == {"data": {"augment": False}}
    with pytest.raises(TypeError, match="data.augment must be bool, got 'yes'"):
        load_config(preset="debug", overrides=["data.augment=yes"])


@pytest.mark.parametrize("override,error,msg", [
    (["train.lrr=1"], ValueError, r"Unknown config key 'train.lrr'. Known keys here: .*lr"),
    (["optimizer.lr=1"], ValueError, r"Unknown config key 'optimizer'"),
    (["train.max_steps=ten"], TypeError, r"train.max_steps must be int, got 'ten'"),
    (["train.max_steps=1.5"], TypeError, r"train.max_steps must be int"),
    (["train.grad_clip=yes"], TypeError, r"train.grad_clip must be float"),
    (["train.max_steps=0"], ValueError, r"train.max_steps must be >= 1"),
    (["train.mixed_precision=fp8"], ValueError, r"train.mixed_precision must be one of no, bf16, fp16"),
    (["model.arch=t5"], ValueError, r"model.arch must be one of gpt2, llama, bert, vit"),
    (["ffn.name=splines"], ValueError, r"ffn.name must be one of bspline, chebyshev"),
    (["ffn.hidden=8"], ValueError, r"ffn.match and ffn.hidden exclude each other"),
    (["model.n_embd=30", "model.n_head=4"], ValueError, r"model.n_embd \(30\) must be divisible by model.n_head"),
    (["log.wandb=maybe"], ValueError, r"log.wandb must be one of offline, online, disabled"),
    (["ffn.layers=zero"], TypeError, r"ffn.layers must be a list"),
])
def test_bad_values_name_the_key(override, error, msg):
    with pytest.raises(error, match=msg):
        load_config(preset="debug", overrides=override)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="Unknown preset 'tiny'. Available: debug, debug_bert, debug_llama, debug_vit"):
        load_config(preset="tiny")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_load():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    files = [p for p in root.glob("*.yaml")]
    assert files
    for path in files:
        load_config(path)


def test_every_shipped_config_loads_and_cpu_paths_need_no_hub():
    import pathlib

    from kanformer.studies.compare import load_compare_config, plan_arms
    from kanformer.studies.sweep import load_sweep_config

    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    runs = [load_config(p) for p in sorted(root.glob("*.yaml"))]
    compares = [load_compare_config(p) for p in sorted((root / "compare").glob("*.yaml"))]
    sweeps = [load_sweep_config(p) for p in sorted((root / "sweeps").glob("*.yaml"))]
    assert len(runs) >= 6 and len(compares) >= 3 and len(sweeps) >= 2
    assert all(plan_arms(c) for c in compares)
    cpu = [load_config(preset=p).data for p in PRESETS] + [
        load_compare_config(root / "compare/readme_cpu.yaml").base["data"],
        load_sweep_config(root / "sweeps/cpu_ladder.yaml").base["data"]]
    for data in cpu:  # the machines without hub access run these
        name = data["dataset"] if isinstance(data, dict) else data.dataset
        assert not name.startswith("hf:"), name
    gpu = [r.data for r in runs if r.train.mixed_precision == "bf16"]
    assert gpu and all(d.dataset.startswith("hf:") and d.max_epochs == 1 for d in gpu)
