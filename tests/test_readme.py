"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(code):
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_readme_layer_example_runs():
    ns = _run(BLOCKS[0])
    assert ns["ffn"].ffn_kwargs["grid_size"] == 10  # extend_grid ran
    assert ns["h"] == 171
    assert ns["y"].shape == (8, 128, 384)


def test_readme_kanify_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = _run(BLOCKS[1])
    assert type(ns["again"]).__name__ == "KanGPT2LMHeadModel"
    assert ns["report"].layers == [1, 2, 3]
    assert (tmp_path / "kan-gpt2" / "model.safetensors").exists()
