"""KAN BERT: in ``encoder.layer[i]`` the FFN replaces ``intermediate`` (dense + act) and ``output.dense`` becomes
the identity, so ``BertOutput`` still applies dropout, the residual add and its LayerNorm to the FFN's output."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel

from .common import Adapter, Architecture, KanConfigMixin, KanModelMixin, mlp_activation
from .kan_layers import FFN


class BertAdapter(Adapter):
    model_type = "bert"
    native_ffn = "mlp"
    task = "masked_lm"
    pipeline = "fill-mask"
    run_options = ("tie_embeddings",)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.encoder.layer

    def native_kwargs(self, config: Any) -> dict[str, Any]:
        return {"activation": mlp_activation(config.hidden_act), "bias": True}

    def stock_model(self, m: Any, *, width: int, vocab_size: int | None, eos_token_id: int | None,
                    labels: list[str], channels: int) -> nn.Module:
        return BertForMaskedLM(BertConfig(
            vocab_size=vocab_size, hidden_size=m.n_embd, num_hidden_layers=m.n_layer, num_attention_heads=m.n_head,
            intermediate_size=width, max_position_embeddings=m.block_size, hidden_dropout_prob=m.dropout,
            attention_probs_dropout_prob=m.dropout, type_vocab_size=1, pad_token_id=eos_token_id or 0,
            tie_word_embeddings=True if m.tie_embeddings is None else m.tie_embeddings))

    def native_state(self, block: nn.Module) -> dict[str, torch.Tensor]:
        fc1, fc2 = block.intermediate.dense, block.output.dense
        return {"fc1.weight": fc1.weight, "fc1.bias": fc1.bias, "fc2.weight": fc2.weight, "fc2.bias": fc2.bias}

    def ffn_site(self, block: nn.Module) -> nn.Module:
        return block.intermediate

    def install(self, block: nn.Module, ffn: FFN, config: Any) -> list[str]:
        block.intermediate = ffn
        block.output.dense = nn.Identity()
        return ["intermediate", "output.dense"]


class KanBertConfig(KanConfigMixin, BertConfig):
    model_type = "kan_bert"

    def __init__(self, kan: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._set_kan(kan)
        super().__init__(**kwargs)


class KanBertModel(KanModelMixin, BertModel):
    def __init__(self, config: KanBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self._build_kan()


class KanBertForMaskedLM(KanModelMixin, BertForMaskedLM):
    def __init__(self, config: KanBertConfig) -> None:
        super().__init__(config)
        self._build_kan()


ARCHITECTURE = Architecture(BertAdapter(), KanBertConfig, {
    "AutoModel": (BertModel, KanBertModel), "AutoModelForMaskedLM": (BertForMaskedLM, KanBertForMaskedLM)})
