"""Build the model a run config asks for: a fresh GPT-2 / ViT or a saved checkpoint, with its FFNs per ``cfg.ffn``."""

from __future__ import annotations

from typing import Any

import torch
import transformers

from ..config import RunConfig
from ..surgery import KanifyReport, kanify


def build_model(cfg: RunConfig, *, vocab_size: int | None = None, eos_token_id: int | None = None,
                labels: list[str] | None = None, channels: int = 1) -> tuple[Any, KanifyReport | None]:
    m, f = cfg.model, cfg.ffn
    torch.manual_seed(cfg.train.seed)
    if m.init_from:
        auto = transformers.AutoModelForCausalLM if m.arch == "gpt2" else transformers.AutoModelForImageClassification
        model = auto.from_pretrained(m.init_from)
        positions = getattr(model.config, "n_positions", None)
        if m.arch == "gpt2" and positions is not None and m.block_size > positions:
            raise ValueError(f"model.block_size={m.block_size} exceeds the checkpoint's {positions} positions "
                             f"({m.init_from})")
        if model.config.model_type.startswith("kan_"):
            return model, None  # already KAN: finetune it as it is
    elif m.arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab_size, n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head,
            resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout, bos_token_id=eos_token_id,
            eos_token_id=eos_token_id)
        model = transformers.GPT2LMHeadModel(config)
    else:
        labels = labels or []
        config = transformers.ViTConfig(
            image_size=m.image_size, patch_size=m.patch_size, num_channels=channels, hidden_size=m.n_embd,
            num_hidden_layers=m.n_layer, num_attention_heads=m.n_head, intermediate_size=4 * m.n_embd,
            hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout, num_labels=len(labels),
            id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
        model = transformers.ViTForImageClassification(config)
    report = kanify(model, f.name, layers=f.layers, match=f.match, hidden=f.hidden, **f.kwargs)
    return model, report
