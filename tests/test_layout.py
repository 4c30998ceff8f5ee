"""The package layout's promises: module paths from before the regroup still import (the same module objects, with
a warning naming the new path), and the former benchmark entry points still run."""

import importlib
import subprocess
import sys

import pytest

from kanformer._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_import_the_moved_module(old):
    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        alias = importlib.import_module(old)
    assert alias is new
    assert new.__name__ == MOVED[old] and new.__spec__.name == MOVED[old]  # the module keeps its own identity


def test_public_api_keeps_its_top_level_names():
    import kanformer

    for name in ("kanify", "create_ffn", "match_hidden", "set_kernel", "kernel", "KANLinear", "KanGPT2LMHeadModel"):
        assert hasattr(kanformer, name), name


@pytest.mark.slow
def test_former_benchmark_module_paths_still_run():
    for module in ("evals.bench_model", "evals.bench_ffn"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
        assert "usage" in out.stdout, module
