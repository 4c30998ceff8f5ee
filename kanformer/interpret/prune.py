"""Pruning KAN FFNs by activity: hidden units are removed (the layers shrink), edges are zeroed.

    report = prune_model(model, batches, unit_threshold=0.05, edge_threshold=0.01)

Thresholds are relative to the largest score in the same layer (unit scores and edge activities, see
``activity.py``), so one number serves layers of any scale. A pruned model keeps its KAN config in step (one hidden
width per block), so ``save_pretrained`` / ``from_pretrained`` round-trip it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import KANFFN, KANLinear
from .activity import edge_activity, unit_scores
from .telemetry import InputRecorder, unwrap


@torch.no_grad()
def drop_units(fc_in: KANLinear, fc_out: KANLinear, keep: torch.Tensor) -> int:
    """Keep only hidden units ``keep`` between two KAN layers (outputs of ``fc_in``, inputs of ``fc_out``);
    returns the number of parameters removed."""
    before = sum(p.numel() for p in (*fc_in.parameters(), *fc_out.parameters()))
    keep = keep.to(fc_in.coef.device)
    fc_out.basis.select_inputs(keep)  # may refuse (e.g. rbf's LayerNorm): check before changing anything else
    fc_in.coef = nn.Parameter(fc_in.coef[keep].clone())
    if fc_in.base_weight is not None:
        fc_in.base_weight = nn.Parameter(fc_in.base_weight[keep].clone())
    if fc_in.bias is not None:
        fc_in.bias = nn.Parameter(fc_in.bias[keep].clone())
    fc_in.out_features = len(keep)
    fc_out.coef = nn.Parameter(fc_out.coef[:, keep].clone())
    if fc_out.base_weight is not None:
        fc_out.base_weight = nn.Parameter(fc_out.base_weight[:, keep].clone())
    fc_out.in_features = len(keep)
    return before - sum(p.numel() for p in (*fc_in.parameters(), *fc_out.parameters()))


@torch.no_grad()
def prune_edges(layer: KANLinear, activity: torch.Tensor, threshold: float) -> int:
    """Zero the edges ``(o, i)`` with ``activity < threshold`` (coefficients and base weight); returns the number
    of parameters zeroed."""
    dead = activity < threshold  # (O, I)
    layer.coef[dead] = 0
    n = int(dead.sum()) * layer.coef.shape[-1]
    if layer.base_weight is not None:
        layer.base_weight[dead] = 0
        n += int(dead.sum())
    return n


@dataclass
class PruneReport:
    unit_threshold: float | None
    edge_threshold: float | None
    params_before: int = 0
    params_removed: int = 0  # hidden units taken out of the layers
    params_zeroed: int = 0  # pruned edges (kept in place, set to zero)
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def params_after(self) -> int:
        return self.params_before - self.params_removed

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "params_after": self.params_after}


def _kan_ffns(model: nn.Module) -> dict[str, KANFFN]:
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, KANFFN)}


def _check_threshold(name: str, value: float | None) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ValueError(f"{name} is relative to the layer's largest score and must be in [0, 1], got {value!r}")


@torch.no_grad()
def prune_model(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, unit_threshold: float | None = None,
                edge_threshold: float | None = None, min_units: int = 1, max_rows: int = 4096) -> PruneReport:
    """Prune every KAN FFN of ``model`` by its activity on ``batches`` (model inputs; padding masked).

    Units scoring below ``unit_threshold`` x the layer's best unit are removed (at least ``min_units`` stay); then
    edges below ``edge_threshold`` x the layer's most active edge are zeroed."""
    _check_threshold("unit_threshold", unit_threshold)
    _check_threshold("edge_threshold", edge_threshold)
    ffns = _kan_ffns(model)
    if not ffns:
        raise ValueError("prune_model found no KAN FFN with edge functions (KANFFN) in the model; the GR-KAN "
                         "'rational', 'multkan' and baseline FFNs have no prunable edges here")
    report = PruneReport(unit_threshold, edge_threshold, params_before=sum(p.numel() for p in model.parameters()))
    inputs = {n: f.fc1 for n, f in ffns.items()}
    was_training = model.training
    model.eval()
    with InputRecorder(inputs, max_rows=max_rows) as rec:
        for batch in batches:
            rec.mask(batch.get("attention_mask"))
            model(**{k: v for k, v in batch.items() if k != "labels"})
    model.train(was_training)
    rows = rec.rows()
    for name, ffn in ffns.items():
        x = rows[name]
        a1 = edge_activity(ffn.fc1, x)
        h = ffn.fc1(x)
        a2 = edge_activity(ffn.fc2, h)
        scores = unit_scores(a1, a2)
        entry: dict[str, Any] = {"ffn": name, "hidden_before": ffn.hidden}
        if unit_threshold is not None:
            keep = (scores >= unit_threshold * scores.max()).nonzero().flatten()
            if len(keep) < min_units:
                keep = scores.argsort(descending=True)[:min_units].sort().values
            if len(keep) < ffn.hidden:
                report.params_removed += drop_units(ffn.fc1, ffn.fc2, keep)
                ffn.hidden = len(keep)
                a1, a2 = a1[keep], a2[:, keep]
        entry["hidden_after"] = ffn.hidden
        if edge_threshold is not None:
            zeroed = 0
            for layer, act in ((ffn.fc1, a1), (ffn.fc2, a2)):
                zeroed += prune_edges(layer, act, edge_threshold * act.max())
            entry["params_zeroed"] = zeroed
            report.params_zeroed += zeroed
        report.layers.append(entry)
    _sync_spec(unwrap(model), ffns)
    return report


def _sync_spec(model: nn.Module, ffns: dict[str, KANFFN]) -> None:
    """Write each block's (possibly pruned) hidden width into the model's KAN spec."""
    spec = getattr(getattr(model, "config", None), "kan", None)
    if not isinstance(spec, dict):
        return
    from ..models import ADAPTERS

    adapter = ADAPTERS[model.config.model_type.removeprefix("kan_")]
    blocks = adapter.blocks(model)
    widths = [adapter.current_ffn(blocks[i]).hidden for i in spec["layers"]]
    spec["hidden"] = widths if len(set(widths)) > 1 else widths[0]
