"""AdamW with parameter groups, its implementation, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..layers import KANModule


def param_groups(model: nn.Module, weight_decay: float, decay_kan_coefficients: bool = False) -> list[dict]:
    """Weight decay on matrices (linear, attention, embeddings, KAN base weights); none on biases, norms and - unless
    asked - KAN coefficients and basis / rational parameters, which define function shapes rather than scales."""
    kan_shape = set()
    for module in model.modules():
        if isinstance(module, KANModule):
            kan_shape.update(id(p) for p in module.shape_parameters())
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2 or (id(p) in kan_shape and not decay_kan_coefficients):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# PyTorch's AdamW implementations (``train.adamw``): fused (a kernel per parameter tensor: CPU, CUDA), foreach (ops
# over all tensors at once), loop (ops per tensor), auto (fused where the parameters allow it, else PyTorch's default:
# foreach on CUDA, loop on CPU)
ADAMW = ("auto", "fused", "foreach", "loop")
_FUSED_DEVICES = ("cpu", "cuda")
_FLAGS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}, "default": {}}


def adamw_impl(impl: str, params: list[torch.Tensor], *, deepspeed: bool = False) -> str:
    """The implementation that ``impl`` (one of ``ADAMW``) runs on ``params``: fused, foreach, loop, or default
    (PyTorch's own choice).

    ``auto`` takes ``fused`` when every parameter is floating point on a CPU or CUDA device, but not under DeepSpeed
    (its engine wraps the optimizer; untried with a fused one here). PyTorch's default on CPU, the loop, runs ops per
    parameter tensor, and a KAN FFN has more tensors than an MLP (its bases' and pre-transforms'). The demo's GPT-2
    (4 x 128, 16 x 64 tokens) on the 2-core development CPU, ``python -m benchmarks.bench_adamw``, four runs: the
    optimizer step fused took 0.23 - 0.28x the loop's (2.5 - 3.7 ms with the MLP's 52 tensors, 3.1 - 4.4 ms with
    RBF's 76), the training step 0.92 - 0.97x (MLP) and 0.94 - 1.03x (RBF)."""
    if impl not in ADAMW:
        raise ValueError(f"train.adamw must be one of {', '.join(ADAMW)}, got {impl!r}")
    fusable = bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)
    if impl == "auto":
        return "fused" if fusable and not deepspeed else "default"
    if impl == "fused" and not fusable:
        found = sorted({f"{p.dtype} on {p.device.type}" for p in params})
        raise ValueError(f"train.adamw=fused needs every parameter floating point on {' or '.join(_FUSED_DEVICES)}, "
                         f"got {', '.join(found) or 'no parameters'}; use auto, foreach or loop")
    return impl


def adamw(params: Any, *, impl: str = "auto", deepspeed: bool = False, **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)`` in implementation ``impl`` (:func:`adamw_impl`); ``params``: tensors
    or parameter groups."""
    params = list(params)
    tensors = [t for item in params for t in (item["params"] if isinstance(item, dict) else [item])]
    return torch.optim.AdamW(params, **kwargs, **_FLAGS[adamw_impl(impl, tensors, deepspeed=deepspeed)])


def running_impl(optimizer: torch.optim.Optimizer) -> str:
    """The implementation ``optimizer``'s step runs: fused, foreach, loop, or default (PyTorch's choice). A resumed
    checkpoint's parameter groups bring the flags of the run that saved it."""
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "fused"
    return {True: "foreach", False: "loop"}.get(group.get("foreach"), "default")


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: list[float],
                    decay_kan_coefficients: bool, impl: str = "auto", deepspeed: bool = False) -> torch.optim.AdamW:
    return adamw(param_groups(model, weight_decay, decay_kan_coefficients), impl=impl, deepspeed=deepspeed, lr=lr,
                 betas=tuple(betas))
