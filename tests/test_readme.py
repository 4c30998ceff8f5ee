"""The README's Python example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_layer_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    ffn = namespace["ffn"]
    assert ffn.ffn_kwargs["grid_size"] == 10  # extend_grid ran
    assert namespace["h"] == 171
    assert namespace["y"].shape == (8, 128, 384)
