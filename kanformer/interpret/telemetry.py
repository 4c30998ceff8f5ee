"""What the KAN layers of a model see: record their inputs on real batches, and summarise them per layer.

    with InputRecorder(kan_modules(model), max_rows=1024) as rec:
        model(**batch)
    stats = layer_telemetry(kan_modules(model), rec.rows())   # {"kan/<layer>/frac_out": ..., ...}

Per layer: the fraction of inputs outside the basis' grid or natural range (B-spline grid, RBF centres, tanh
saturation of Chebyshev/Jacobi; periodic and rational bases have none), input mean / std / min / max, and the RMS
of the coefficients (and of the SiLU base weights). The trainer logs them every ``kan.telemetry_every`` steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import KANModule
from ..layers.dispatch import kernel


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def kan_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of learnable univariate functions (``KANModule``: KAN layers, rational activations) of
    ``model``, by qualified name."""
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, KANModule)}


class InputRecorder:
    """Records, per module, up to ``max_rows`` input rows ``(n, in)`` of the forward passes run inside it.

    Rows are a seeded random subsample of the tokens; ``mask(attention_mask)`` before a forward keeps only real
    tokens (padding never reaches a grid or a statistic). Forwards inside run the reference KAN path."""

    def __init__(self, modules: dict[str, nn.Module], *, max_rows: int = 4096, seed: int = 0) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows!r}")
        self.modules, self.max_rows = modules, max_rows
        self._rows: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
        self._mask: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(seed)
        self._handles: list[Any] = []

    def mask(self, attention_mask: torch.Tensor | None) -> None:
        self._mask = None if attention_mask is None else attention_mask.reshape(-1).bool()

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            x2 = x.reshape(-1, x.shape[-1])  # (tokens, in)
            if self._mask is not None and self._mask.numel() == x2.shape[0]:
                x2 = x2[self._mask.to(x2.device)]
            have = sum(len(r) for r in self._rows[name])
            room = self.max_rows - have
            if room <= 0 or len(x2) == 0:
                return
            if len(x2) > room:
                x2 = x2[torch.randperm(len(x2), generator=self._gen)[:room].to(x2.device)]
            self._rows[name].append(x2.float())
        return record

    def __enter__(self) -> InputRecorder:
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.modules.items()]
        # the reference path calls every submodule (the fused GR-KAN path skips the activations' own forward)
        self._kernel = kernel("reference")
        self._kernel.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._kernel.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []

    def rows(self) -> dict[str, torch.Tensor]:
        return {n: torch.cat(r) for n, r in self._rows.items() if r}


@torch.no_grad()
def layer_stats(module: KANModule, x2: torch.Tensor) -> dict[str, float]:
    stats = {"in_mean": x2.mean().item(), "in_std": x2.std().item() if x2.numel() > 1 else 0.0,
             "in_min": x2.min().item(), "in_max": x2.max().item()}
    return {**stats, **module.function_stats(x2)}


def layer_telemetry(modules: dict[str, nn.Module], rows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Flat ``{"kan/<layer>/<stat>": value}``, plus ``kan/frac_out_max`` (the worst layer) where defined."""
    flat: dict[str, float] = {}
    worst = []
    for name, x2 in rows.items():
        for key, value in layer_stats(modules[name], x2).items():
            flat[f"kan/{name}/{key}"] = value
            if key == "frac_out":
                worst.append(value)
    if worst:
        flat["kan/frac_out_max"] = max(worst)
    return flat
