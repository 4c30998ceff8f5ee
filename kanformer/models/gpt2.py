"""KAN GPT-2: ``transformer.h[i].mlp`` (``GPT2MLP``: ``Conv1D`` c_fc / c_proj with weights stored (in, out), then
residual dropout) becomes an FFN followed by the same dropout."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from .common import Adapter, Architecture, KanConfigMixin, KanModelMixin, ResidualDropoutFFN, mlp_activation
from .kan_layers import FFN


class GPT2Adapter(Adapter):
    model_type = "gpt2"
    native_ffn = "mlp"
    task = "causal_lm"
    pipeline = "text-generation"
    run_options = ("tie_embeddings",)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.h

    def native_hidden(self, config: Any) -> int:
        return config.n_inner if config.n_inner is not None else 4 * config.n_embd

    def native_kwargs(self, config: Any) -> dict[str, Any]:
        return {"activation": mlp_activation(config.activation_function), "bias": True}

    def stock_model(self, m: Any, *, width: int, vocab_size: int | None, eos_token_id: int | None,
                    labels: list[str], channels: int) -> nn.Module:
        return GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab_size, n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head,
            n_inner=width, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
            bos_token_id=eos_token_id, eos_token_id=eos_token_id,
            tie_word_embeddings=True if m.tie_embeddings is None else m.tie_embeddings))

    def native_state(self, block: nn.Module) -> dict[str, torch.Tensor]:
        mlp = block.mlp  # Conv1D weights are (in, out); nn.Linear's are (out, in)
        return {"fc1.weight": mlp.c_fc.weight.t(), "fc1.bias": mlp.c_fc.bias,
                "fc2.weight": mlp.c_proj.weight.t(), "fc2.bias": mlp.c_proj.bias}

    def install(self, block: nn.Module, ffn: FFN, config: Any) -> list[str]:
        block.mlp = ResidualDropoutFFN(ffn, config.resid_pdrop)
        return ["mlp"]


class KanGPT2Config(KanConfigMixin, GPT2Config):
    model_type = "kan_gpt2"

    def __init__(self, kan: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._set_kan(kan)
        super().__init__(**kwargs)


class KanGPT2Model(KanModelMixin, GPT2Model):
    def __init__(self, config: KanGPT2Config) -> None:
        super().__init__(config)
        self._build_kan()


class KanGPT2LMHeadModel(KanModelMixin, GPT2LMHeadModel):
    def __init__(self, config: KanGPT2Config) -> None:
        super().__init__(config)
        self._build_kan()


ARCHITECTURE = Architecture(GPT2Adapter(), KanGPT2Config, {
    "AutoModel": (GPT2Model, KanGPT2Model), "AutoModelForCausalLM": (GPT2LMHeadModel, KanGPT2LMHeadModel)})
