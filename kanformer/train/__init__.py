"""Training: an accelerate loop with exact resume, atomic checkpoints and metrics.jsonl as the source of truth."""

from .model_factory import build_model
from .nonfinite import NonFiniteError
from .optim import lr_at, param_groups
from .trainer import Trainer

__all__ = ["NonFiniteError", "Trainer", "build_model", "lr_at", "param_groups", "train"]


def train(cfg, *, resume=None, stop_at=None, adapt=False):
    """Run ``cfg`` (a RunConfig) to completion or until stopped; returns a summary dict. ``adapt``: see Trainer."""
    return Trainer(cfg, resume=resume, adapt=adapt).fit(stop_at=stop_at)
