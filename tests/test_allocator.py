"""The CPU allocator setting (kanformer/allocator.py) and its config switch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kanformer.config import TrainConfig
from kanformer.train import allocator


def test_unknown_choice_names_the_allowed_values():
    with pytest.raises(ValueError, match="Unknown CPU malloc setting 'jemalloc'. Available: keep, system"):
        allocator.configure("jemalloc")
    with pytest.raises(ValueError, match="train.cpu_malloc must be one of keep, system, got 'fast'"):
        TrainConfig(cpu_malloc="fast")


def test_keep_is_applied_once_and_only_when_asked():
    """In a fresh process (the setting is process-wide): ``system`` changes nothing; ``keep`` takes effect on glibc
    and stays in effect; large blocks are then reused without new page faults, those beyond glibc's 32 MB mmap
    threshold too."""
    code = """
import resource, sys, torch
from kanformer.train import allocator
assert allocator.configure("system") is False
kept = allocator.configure("keep")
print(kept, allocator.keep_freed_memory(), allocator.configure("system"))
for numel in (7 << 20, 16 << 20):  # 28 MB (below the mmap threshold), 64 MB (above it)
    for _ in range(3):
        torch.empty(numel).fill_(1.0)  # freed at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(numel).fill_(1.0)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[0] == "False":
        pytest.skip("not glibc: the setting is a documented no-op here")
    assert out[:3] == ["True", "True", "True"]
    # 10 x 7,168 and 10 x 16,384 pages would fault if each block came fresh from the OS
    assert int(out[3]) < 1000 and int(out[4]) < 1000, out
