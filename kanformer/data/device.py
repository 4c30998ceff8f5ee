"""Host tensors to the device a model runs on, without draining a GPU's queue.

A copy to a GPU from pageable memory waits for everything queued before it, so a loop that moves each batch so
cannot queue the next batch's kernels while the device runs the last's. From pinned memory the copy is queued like
a kernel (PyTorch's host allocator keeps the pinned block until its copy is done). Elsewhere, ``.to(device)``.
"""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def batch_to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Each tensor of ``batch`` by :func:`to_device`, a tensor under two names (a causal LM's input_ids and labels)
    moved once."""
    moved: dict[int, torch.Tensor] = {}
    out = {}
    for k, v in batch.items():
        if id(v) not in moved:
            moved[id(v)] = to_device(v, device)
        out[k] = moved[id(v)]
    return out
