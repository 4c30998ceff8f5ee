"""What autograd saves for the backward: the measurement behind the lean memory rule (layers/autotune.py) and the
benchmarks' activation figures (evaluation/metrics.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def saved_bytes(fn: Any, exclude: frozenset[int] = frozenset()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs its forward, those whose
    ``data_ptr`` is in ``exclude`` (e.g. the parameters') left out. The hook keeps a detached alias, not the tensor
    itself: a saved output that held itself through its own graph would be a reference cycle that Python's collector
    cannot see, and every measured step's activations would stay allocated for the rest of the process."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(Exception):
            storage = t.untyped_storage()
            if storage.data_ptr() not in exclude:
                seen[storage.data_ptr()] = storage.nbytes()
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())
