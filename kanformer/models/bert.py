"""KAN BERT: in ``encoder.layer[i]`` the FFN replaces ``intermediate`` (dense + act) and ``output.dense`` becomes
the identity, so ``BertOutput`` still applies dropout, the residual add and its LayerNorm to the FFN's output."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel

from .common import Adapter, KanConfigMixin, KanModelMixin, mlp_activation
from .kan_layers import FFN


class BertAdapter(Adapter):
    model_type = "bert"
    native_ffn = "mlp"

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.encoder.layer

    def native_kwargs(self, config: Any) -> dict[str, Any]:
        return {"activation": mlp_activation(config.hidden_act), "bias": True}

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


_AUTO_MAP = {"AutoConfig": "bert.KanBertConfig", "AutoModel": "bert.KanBertModel",
             "AutoModelForMaskedLM": "bert.KanBertForMaskedLM"}


class KanBertModel(KanModelMixin, BertModel):
    config_class = KanBertConfig
    kan_adapter = BertAdapter()
    kan_auto_map = _AUTO_MAP

    def __init__(self, config: KanBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self._build_kan()


class KanBertForMaskedLM(KanModelMixin, BertForMaskedLM):
    config_class = KanBertConfig
    kan_adapter = BertAdapter()
    kan_auto_map = _AUTO_MAP

    def __init__(self, config: KanBertConfig) -> None:
        super().__init__(config)
        self._build_kan()
