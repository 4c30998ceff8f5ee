"""KAN GPT-2: ``transformer.h[i].mlp`` (``GPT2MLP``: ``Conv1D`` c_fc / c_proj with weights stored (in, out), then
residual dropout) becomes an FFN followed by the same dropout."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from .common import Adapter, KanConfigMixin, KanModelMixin, ResidualDropoutFFN, mlp_activation
from .kan_layers import FFN


class GPT2Adapter(Adapter):
    model_type = "gpt2"
    native_ffn = "mlp"

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.h

    def native_hidden(self, config: Any) -> int:
        return config.n_inner if config.n_inner is not None else 4 * config.n_embd

    def native_kwargs(self, config: Any) -> dict[str, Any]:
        return {"activation": mlp_activation(config.activation_function), "bias": True}

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


_AUTO_MAP = {"AutoConfig": "gpt2.KanGPT2Config", "AutoModel": "gpt2.KanGPT2Model",
             "AutoModelForCausalLM": "gpt2.KanGPT2LMHeadModel"}


class KanGPT2Model(KanModelMixin, GPT2Model):
    config_class = KanGPT2Config
    kan_adapter = GPT2Adapter()
    kan_auto_map = _AUTO_MAP

    def __init__(self, config: KanGPT2Config) -> None:
        super().__init__(config)
        self._build_kan()


class KanGPT2LMHeadModel(KanModelMixin, GPT2LMHeadModel):
    config_class = KanGPT2Config
    kan_adapter = GPT2Adapter()
    kan_auto_map = _AUTO_MAP

    def __init__(self, config: KanGPT2Config) -> None:
        super().__init__(config)
        self._build_kan()
