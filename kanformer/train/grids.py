"""Grid management of B-spline KAN layers inside a model: updates from data and extensions, the same on every
replica.

Every rank records its layers' inputs (``telemetry.InputRecorder``); ``union_rows`` all-gathers them, so each rank
fits its grids to the same union of the data and refits the same coefficients: after ``update_grids`` the replicas
hold identical grids, equal to what one process computes on all the data. Sharded (FSDP2) coefficients are
gathered for the refit and written back shard by shard. ``extend_grids`` changes coefficient shapes, so the caller
rebuilds its optimizer (and DDP wrapper) afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..interpret.telemetry import unwrap
from ..layers import FFN, KANLinear


def grid_layers(model: nn.Module) -> dict[str, KANLinear]:
    """KAN layers whose basis has an adaptive grid (B-spline), by qualified name."""
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, KANLinear) and m.basis.has_grid}


def union_rows(rows: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Each layer's rows from every rank, concatenated in rank order (a no-op without torch.distributed).

    ``names`` fixes the order of the collectives, so it must be the same list on every rank; a rank that recorded
    nothing for a layer contributes no rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {n: rows[n] for n in names if n in rows}
    world = dist.get_world_size()
    # NCCL moves only CUDA tensors; gloo takes CPU ones
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = {}
    for name in names:
        mine = rows.get(name)
        width = torch.tensor([-1 if mine is None else mine.shape[1], 0 if mine is None else mine.shape[0]],
                             device=device)
        sizes = [torch.zeros_like(width) for _ in range(world)]
        dist.all_gather(sizes, width)
        widths = {int(s[0]) for s in sizes if s[0] >= 0}
        if not widths:
            continue
        if len(widths) > 1:
            raise ValueError(f"layer {name}: ranks recorded different input widths {sorted(widths)}")
        (w,) = widths
        n_max = max(int(s[1]) for s in sizes)
        padded = torch.full((n_max, w), float("nan"), device=device)
        if mine is not None:
            padded[: len(mine)] = mine.to(device)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out[name] = torch.cat([p[: int(s[1])] for p, s in zip(parts, sizes, strict=True)])
    return out


@torch.no_grad()
def update_grids(model: nn.Module, rows: dict[str, torch.Tensor], **fit_kw: Any) -> list[str]:
    """Fit every grid layer's knots to its recorded inputs and refit its coefficients; returns the layers updated.
    Call with the same ``rows`` on every rank (``union_rows``)."""
    done = []
    for name, layer in grid_layers(model).items():
        if name in rows and len(rows[name]) > 0:
            layer.update_grid(rows[name].to(layer.coef.device), **fit_kw)
            done.append(name)
    return done


@torch.no_grad()
def extend_grids(model: nn.Module, grid_size: int, rows: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Re-knot every grid layer with ``grid_size`` intervals, preserving its function on ``rows`` (else on its
    grid range), and record the new size in the model's KAN spec so the saved checkpoint rebuilds it."""
    model = unwrap(model)
    done = []
    for name, layer in grid_layers(model).items():
        x = None if rows is None or name not in rows else rows[name].to(layer.coef.device)
        layer.extend_grid(grid_size, x)
        done.append(name)
    for m in model.modules():  # the FFNs' own record of their options
        if isinstance(m, FFN) and any(isinstance(c, KANLinear) and c.basis.has_grid for c in m.modules()):
            m.ffn_kwargs["grid_size"] = grid_size
    spec = getattr(getattr(model, "config", None), "kan", None)
    if isinstance(spec, dict) and done:
        spec["ffn_kwargs"]["grid_size"] = grid_size
    return done
