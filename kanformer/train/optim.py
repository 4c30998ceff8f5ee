"""AdamW with parameter groups, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

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


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: list[float],
                    decay_kan_coefficients: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay, decay_kan_coefficients), lr=lr, betas=tuple(betas))
