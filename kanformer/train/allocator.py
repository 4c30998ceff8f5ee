"""Process-wide CPU allocator setting: keep freed large blocks in the heap for reuse (glibc malloc).

A training step allocates and frees the same large transient tensors every step (a KAN layer's (tokens, B*I)
features: 28 MB at d_model 384 and 2048 tokens). glibc serves blocks this large with mmap, or trims them off the top
of the heap when they are freed, so every step faults their pages in again, zero-filled by the kernel: about 9,000
page faults and 15 ms of system time per step in the RBF FFN benchmark (``bench_ffn.py``), against 600 for the
GELU MLP, whose transients are smaller. Raising malloc's mmap and trim thresholds keeps such blocks for reuse: the
resident set stays at its peak instead, the trade jemalloc and tcmalloc make too (PyTorch's CPU performance guides
recommend those). The mmap threshold stops at 32 MB (glibc's limit), so blocks above it (d_model 768 and 4096 tokens,
fp32: a KAN layer's features 113 MB, the MLP's hidden activations 50 MB) are served from the heap by turning mmap off
(``M_MMAP_MAX`` 0; glibc still maps what a heap cannot give, in other threads' arenas). Without that, a B-spline FFN
step there took 123,000 page faults and ~280 ms of system time (the MLP's: 51,000, ~100 ms); with it 0 - 9,200 and
0 - 16 ms, and the steps ran 16 - 18 % faster, the MLP's too, for a peak resident set 25 - 34 % higher (heap
fragmentation). It changes the whole process, so it is applied where a run starts (``train.cpu_malloc``, the
benchmarks' default) and never on import.
"""

from __future__ import annotations

import ctypes
import sys

MALLOC_CHOICES = ("keep", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)
_MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value (HEAP_MAX_SIZE / 2 on 64-bit)
_TRIM_THRESHOLD = 1 << 30
_state: list[bool] = []  # [applied] once tried


def keep_freed_memory() -> bool:
    """Keep freed blocks in the heap instead of returning them to the OS (glibc only). Returns whether the setting is
    in effect; False, and nothing changed, on other C libraries (musl's mallopt does nothing) and other systems.
    Idempotent."""
    if not _state:
        _state.append(_apply())
    return _state[0]


def _apply() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_MMAP_MAX, 0)))


def configure(choice: str) -> bool:
    """Apply ``choice`` (one of ``MALLOC_CHOICES``): ``keep`` -> ``keep_freed_memory()``; ``system`` leaves the
    allocator as the process found it. Returns whether freed memory is kept."""
    if choice not in MALLOC_CHOICES:
        raise ValueError(f"Unknown CPU malloc setting {choice!r}. Available: {', '.join(MALLOC_CHOICES)}")
    return keep_freed_memory() if choice == "keep" else bool(_state and _state[0])


def current() -> str:
    """The setting in effect in this process: ``keep`` once applied (glibc), else ``system``."""
    return "keep" if _state and _state[0] else "system"
