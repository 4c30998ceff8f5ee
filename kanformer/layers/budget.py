"""Exact parameter and FLOP budgets of FFNs, and the hidden width that matches a reference.

``match_hidden("bspline", 768)`` is the B-spline KAN hidden width whose FFN has as many parameters as GPT-2's GELU
MLP of width 4*768; ``target="flops"`` matches forward FLOPs per token (convention: kanformer.layers.flops).
"""

from __future__ import annotations

from typing import Any

from .registry import FFN, check_ffn_kwargs, check_positive_int, validate_ffn_options

TARGETS = ("params", "flops")
MAX_HIDDEN = 1 << 40  # bound of every width search


def ffn_params(name: str, d_model: int, hidden: int, **kw: Any) -> int:
    """Exact parameter count of ``create_ffn(name, d_model, hidden, **kw)`` without building it."""
    return check_ffn_kwargs(name, kw).count_params(d_model, hidden, **kw)


def ffn_flops(name: str, d_model: int, hidden: int, **kw: Any) -> int:
    """Forward FLOPs per token of ``create_ffn(name, d_model, hidden, **kw)`` without building it."""
    return sum(check_ffn_kwargs(name, kw).count_flops(d_model, hidden, **kw).values())


def _cost(target: str, name: str, d_model: int, hidden: int, kw: dict[str, Any]) -> int:
    return ffn_params(name, d_model, hidden, **kw) if target == "params" else ffn_flops(name, d_model, hidden, **kw)


def match_hidden(name: str, d_model: int, target: str = "params", reference: FFN | int | float | None = None,
                 **kw: Any) -> int:
    """Hidden width of FFN ``name`` whose cost is closest to the reference's.

    Args:
        target: ``"params"`` or ``"flops"`` (forward FLOPs per token).
        reference: an FFN module (its cost under ``target``), a number (the cost itself), or ``None`` for GPT-2's
            GELU MLP of hidden width ``4 * d_model``.
        **kw: the FFN's own options (grid size, degree, ...), which change its cost per unit of width.

    Costs grow monotonically with the width, so the answer is found by bisection; the true (real-valued)
    solution lies within one unit of the returned width.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    check_positive_int("d_model", d_model)
    validate_ffn_options(name, d_model, 4 * d_model, kw)
    if reference is None:
        goal = _cost(target, "mlp", d_model, 4 * d_model, {})
    elif isinstance(reference, FFN):
        goal = reference.num_params() if target == "params" else reference.flops_per_token()
    elif isinstance(reference, int | float) and not isinstance(reference, bool) and reference > 0:
        goal = reference
    else:
        raise ValueError(f"reference must be an FFN, a positive number or None, got {reference!r}")

    cost = lambda h: _cost(target, name, d_model, h, kw)
    if cost(1) >= goal:
        raise ValueError(
            f"{name!r} at d_model={d_model} costs {cost(1)} {target} already at hidden=1, above the target {goal}"
        )
    lo, hi = 1, 2
    while cost(hi) < goal:  # cost(lo) < goal <= cost(hi)
        if hi >= MAX_HIDDEN:  # costs grow with the width, so only a goal beyond any sensible width gets here
            raise ValueError(f"no width up to {MAX_HIDDEN:,} gives {name!r} at d_model={d_model} the target "
                             f"{goal:,} {target} (cost at {hi:,}: {cost(hi):,})")
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) < goal else (lo, mid)
    return lo if goal - cost(lo) <= cost(hi) - goal else hi


def model_flops_per_token(model: Any, seq_len: int) -> int:
    """Forward FLOPs per token of a whole transformer under the convention above.

    Dense projections outside FFNs (attention, heads, patch embedding; embedding lookups are free) count 2 per
    weight; each registered FFN counts its own ``flops_per_token()`` (basis evaluation included); attention scores and
    the weighted sum count ``4 * n_layer * d * seq_len`` (PaLM, Chowdhery et al. 2022, App. B, without the causal
    halving). A stock MLP left in a block counts as dense projections.
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    dense, ffn = 0, 0
    inside_ffn: set[int] = set()
    for module in model.modules():
        if isinstance(module, FFN):
            ffn += module.flops_per_token()
            inside_ffn.update(id(m) for m in module.modules())
    for module in model.modules():
        if id(module) not in inside_ffn and isinstance(module, nn.Linear | Conv1D | nn.Conv2d):
            dense += 2 * module.weight.numel()
    config = model.config
    n_layer = getattr(config, "num_hidden_layers", None) or config.n_layer
    d = getattr(config, "hidden_size", None) or config.n_embd
    return dense + ffn + 4 * n_layer * d * seq_len
