"""Timing several candidates fairly on one machine: they take turns, round after round, and are compared by the
median of their same-round ratios.

A shared machine's speed drifts (by 10 - 15 % within an hour on the 2-core development VMs), so timings taken at
different moments compare the moments as much as the candidates. Turns interleaved in one process move every candidate
alike, and every other round runs in reverse order (:func:`round_order`), so neither a drift within a round nor one
turn's cost to the next weighs on one candidate more than another. The benchmarks (``benchmarks/``) and
``kanformer compare``'s speed columns (``studies/speed.py``) use these helpers.
"""

from __future__ import annotations

import statistics
from typing import Any, TypeVar

import torch

from ..layers.machine import cpu_name

T = TypeVar("T")


def round_order(items: list[T], r: int) -> list[T]:
    """The order of round ``r``'s turns: as given in even rounds (the first warms up, the reference first), reversed in
    odd ones. Over each pair of rounds every candidate's mean position is the same."""
    return items if r % 2 == 0 else items[::-1]


def same_round_ratios(values: list[float], reference: list[float]) -> dict[str, Any]:
    """Median, lowest and highest of the per-round ratios ``values[r] / reference[r]``, and the ratios themselves."""
    if len(values) != len(reference) or not values:
        raise ValueError(f"same-round ratios need one value per round on both sides, got {len(values)} and "
                         f"{len(reference)}")
    ratios = [v / ref for v, ref in zip(values, reference, strict=True)]
    return {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios), "rounds": ratios}


def machine(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count: what a timing table names as its machine."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"
