import atexit
import os
import random
import shutil
import tempfile

import pytest
import torch

# Tests never reach the network and never log to wandb.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# Tests build many small models, each its own configuration: compiling the fused helpers for every one (what the
# default kernel "auto" does when training) would dominate the run. They run on the eager lean path; the fused and
# auto paths have their own tests (tests/test_kernels.py).
os.environ.setdefault("KANFORMER_KERNEL", "lean")


# `make test` runs the suite on one pytest-xdist worker per core: each worker's PyTorch (and what it starts) takes
# its share of the cores, so that the workers' OpenMP threads do not contend for them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _THREADS = max(1, _CORES // _WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    torch.set_num_threads(_THREADS)


def _session_directory(variable: str, prefix: str) -> None:
    """A temporary directory for ``variable`` unless the caller set one, removed when the session's process ends."""
    if variable not in os.environ:
        path = os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
        atexit.register(shutil.rmtree, path, ignore_errors=True)


# One tokenised-data cache for the whole session (tests build the same small corpora many times).
_session_directory("KANFORMER_CACHE", "kanformer-test-cache-")
# Hugging Face datasets read from local directories write their Arrow cache here, not under the user's home.
_session_directory("HF_DATASETS_CACHE", "kanformer-test-hf-datasets-")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _rewritten_loops_compile():
    """A compiled C++ loop whose rewritten moves (layers/loop_moves.py) fail to compile runs as generated, with one
    warning a test would not notice (a stored boolean mask hid so for a session): any such failure fails the test in
    which it happened."""
    from kanformer.layers import loop_moves

    failures, before = loop_moves.failures, len(loop_moves.failures)
    yield
    assert len(failures) == before, f"a rewritten compiled loop failed to compile: {failures[before:]}"


@pytest.fixture
def native(monkeypatch):
    """Pins whether this CPU's bf16 / fp16 products count as native (layers/gemm.py), for one test."""
    from kanformer.layers import gemm

    return lambda value: monkeypatch.setattr(gemm, "_NATIVE", dict.fromkeys(gemm._LOW, value))


def pytest_addoption(parser):
    parser.addoption("--shuffle", type=int, default=None, metavar="SEED",
                     help="run the tests in an order shuffled by SEED, to find tests that hold only in file order "
                          "(the workers hand tests out in no fixed order)")


def pytest_collection_modifyitems(config, items):
    seed = config.getoption("--shuffle")
    if seed is not None:  # every worker collects alike, so each shuffles alike
        random.Random(seed).shuffle(items)
    elif _WORKERS > 1:  # the slow tests first, so that the workers end on short ones together, not one on a long one
        items.sort(key=lambda item: "slow" not in item.keywords)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
