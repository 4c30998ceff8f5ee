"""Build the model a run config asks for: the task's fresh stock model (GPT-2, Llama, BERT, ViT) or a saved checkpoint,
with its FFNs per ``cfg.ffn``."""

from __future__ import annotations

from typing import Any

import torch

from ..config import RunConfig
from ..surgery.swap import KanifyReport, kanify
from ..tasks import task_for


def build_model(cfg: RunConfig, *, vocab_size: int | None = None, eos_token_id: int | None = None,
                labels: list[str] | None = None, channels: int = 1) -> tuple[Any, KanifyReport | None]:
    m, f = cfg.model, cfg.ffn
    task = task_for(cfg)
    torch.manual_seed(cfg.train.seed)
    if m.init_from:
        model = task.auto().from_pretrained(m.init_from)
        c = model.config
        positions = getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)
        if task.text and positions is not None and m.block_size > positions:
            raise ValueError(f"model.block_size={m.block_size} exceeds the checkpoint's {positions} positions "
                             f"({m.init_from})")
        if c.model_type.startswith("kan_"):
            return model, None  # already KAN: finetune it as it is
    else:
        model = task.new_model(m, vocab_size=vocab_size, eos_token_id=eos_token_id, labels=labels, channels=channels)
    report = kanify(model, f.name, layers=f.layers, match=f.match, hidden=f.hidden, **f.kwargs)
    return model, report


def compile_for_training(model: Any, mode: str, unwrapped: Any | None = None) -> Any:
    """``model`` as ``train.compile`` (``mode``: none | model | regional) trains it: compiled whole (the wrapper
    returned), each transformer block compiled in place (``unwrapped``: the model itself, where ``model`` is
    accelerate's wrapper of it), or as it is."""
    from ..layers import refresh_checks
    from ..layers.dispatch import prepare_compile
    from ..models import ADAPTERS

    if mode == "none":
        return model
    inner = model if unwrapped is None else unwrapped
    refresh_checks(inner)  # what the compiled graphs read of the bases (whatever wrote their tensors)
    prepare_compile(inner)  # the matmul library chosen and the loops' rewrite installed, before any graph is traced
    if mode == "model":
        return torch.compile(model)
    for block in ADAPTERS[inner.config.model_type.removeprefix("kan_")].blocks(inner):
        block.compile()
    return model
