"""The one `kanformer` command: every subcommand's --help, and a real invocation of those other tests do not run
through the command line (train as `python -m kanformer`, under `accelerate launch -m kanformer`, compare, sweep)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kanformer.cli import main
from tests.gloo import free_port

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SUBCOMMANDS = ("train", "prepare", "eval", "compare", "sweep", "kanify", "inspect", "prune")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: kanformer {command}" in capsys.readouterr().out


def test_train_as_a_module_and_compare_and_sweep(tmp_path):
    run = subprocess.run([sys.executable, "-m", "kanformer", "train", "--preset", "debug_llama", f"out_dir={tmp_path}",
                          "--train.max_steps=3", "ffn.name=chebyshev"], env=ENV, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "debug_llama" / "final" / "model.safetensors").is_file()
    cmp_yaml = tmp_path / "cmp.yaml"
    cmp_yaml.write_text(f"""
name: c
out_dir: {tmp_path}
base: {{preset: debug, train: {{max_steps: 2, eval_every: 2, save_every: 2}}}}
arms: [{{name: cheb, ffn: {{name: chebyshev}}}}]
baselines: {{ffns: [mlp], match: [params]}}
seeds: [0]
eval: {{tokens: 256, throughput_steps: 1, speed_rounds: 1, speed_steps: 1}}
""")
    main(["compare", "--config", str(cmp_yaml)])
    rows = json.loads((tmp_path / "c" / "comparison.json").read_text())["arms"]
    assert [r["arm"] for r in rows] == ["cheb", "mlp@params"]
    sweep_yaml = tmp_path / "sweep.yaml"
    sweep_yaml.write_text(f"""
name: s
out_dir: {tmp_path}
base: {{preset: debug_llama}}
arms: [{{name: swiglu, ffn: {{name: swiglu}}}}]
sizes: [{{n_embd: 16}}, {{n_embd: 24}}, {{n_embd: 32}}]
""")
    main(["sweep", "--config", str(sweep_yaml), "--emit", str(tmp_path / "commands.sh")])
    lines = (tmp_path / "commands.sh").read_text().splitlines()
    assert sum("scripts/train.py" in line for line in lines) == 3


@pytest.mark.slow
def test_accelerate_launch_runs_the_module_on_two_ranks(tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port", str(free_port()),
              "-m", "kanformer", "train", "--preset", "debug", f"out_dir={tmp_path}", "train.max_steps=3",
              "train.batch_size=4", "train.log_every=1"]
    run = subprocess.run(launch, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((tmp_path / "debug" / "versions.json").read_text())
    assert info["world_size"] == 2 and (tmp_path / "debug" / "final" / "model.safetensors").is_file()
