"""KAN Llama: ``model.layers[i].mlp`` (gated ``LlamaMLP``: down(act(gate(x)) * up(x))) becomes an FFN; its native
equivalent is the registered ``swiglu``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from .common import Adapter, Architecture, KanConfigMixin, KanModelMixin
from .kan_layers import FFN


class LlamaAdapter(Adapter):
    model_type = "llama"
    native_ffn = "swiglu"
    task = "causal_lm"
    pipeline = "text-generation"
    run_options = ("n_kv_head", "tie_embeddings")

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.layers

    def native_kwargs(self, config: Any) -> dict[str, Any]:
        if config.hidden_act not in ("silu", "swish"):
            raise ValueError(f"Llama hidden_act {config.hidden_act!r} has no 'swiglu' equivalent (needs silu)")
        return {"bias": bool(config.mlp_bias)}

    def default_width(self, d_model: int) -> int:
        return -(-(8 * d_model // 3) // 8) * 8  # 2/3 of 4 d, a multiple of 8: a 4 d GELU MLP's parameters

    def stock_model(self, m: Any, *, width: int, vocab_size: int | None, eos_token_id: int | None,
                    labels: list[str], channels: int) -> nn.Module:
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab_size, hidden_size=m.n_embd, intermediate_size=width, num_hidden_layers=m.n_layer,
            num_attention_heads=m.n_head, num_key_value_heads=m.n_kv_head or m.n_head,
            max_position_embeddings=m.block_size, attention_dropout=m.dropout,
            tie_word_embeddings=bool(m.tie_embeddings),
            bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=None))

    def native_state(self, block: nn.Module) -> dict[str, torch.Tensor]:
        mlp = block.mlp
        state = {f"{n}.weight": getattr(mlp, n).weight for n in ("gate_proj", "up_proj", "down_proj")}
        state.update({f"{n}.bias": getattr(mlp, n).bias for n in ("gate_proj", "up_proj", "down_proj")
                      if getattr(mlp, n).bias is not None})
        return state

    def install(self, block: nn.Module, ffn: FFN, config: Any) -> list[str]:
        block.mlp = ffn
        return ["mlp"]


class KanLlamaConfig(KanConfigMixin, LlamaConfig):
    model_type = "kan_llama"

    def __init__(self, kan: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._set_kan(kan)
        super().__init__(**kwargs)


class KanLlamaModel(KanModelMixin, LlamaModel):
    def __init__(self, config: KanLlamaConfig) -> None:
        super().__init__(config)
        self._build_kan()


class KanLlamaForCausalLM(KanModelMixin, LlamaForCausalLM):
    def __init__(self, config: KanLlamaConfig) -> None:
        super().__init__(config)
        self._build_kan()


ARCHITECTURE = Architecture(LlamaAdapter(), KanLlamaConfig, {
    "AutoModel": (LlamaModel, KanLlamaModel), "AutoModelForCausalLM": (LlamaForCausalLM, KanLlamaForCausalLM)})
