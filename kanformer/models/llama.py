"""KAN Llama: ``model.layers[i].mlp`` (gated ``LlamaMLP``: down(act(gate(x)) * up(x))) becomes an FFN; its native
equivalent is the registered ``swiglu``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from .common import Adapter, KanConfigMixin, KanModelMixin
from .kan_layers import FFN


class LlamaAdapter(Adapter):
    model_type = "llama"
    native_ffn = "swiglu"

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.layers

    def native_kwargs(self, config: Any) -> dict[str, Any]:
        if config.hidden_act not in ("silu", "swish"):
            raise ValueError(f"Llama hidden_act {config.hidden_act!r} has no 'swiglu' equivalent (needs silu)")
        return {"bias": bool(config.mlp_bias)}

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


_AUTO_MAP = {"AutoConfig": "llama.KanLlamaConfig", "AutoModel": "llama.KanLlamaModel",
             "AutoModelForCausalLM": "llama.KanLlamaForCausalLM"}


class KanLlamaModel(KanModelMixin, LlamaModel):
    config_class = KanLlamaConfig
    kan_adapter = LlamaAdapter()
    kan_auto_map = _AUTO_MAP

    def __init__(self, config: KanLlamaConfig) -> None:
        super().__init__(config)
        self._build_kan()


class KanLlamaForCausalLM(KanModelMixin, LlamaForCausalLM):
    config_class = KanLlamaConfig
    kan_adapter = LlamaAdapter()
    kan_auto_map = _AUTO_MAP

    def __init__(self, config: KanLlamaConfig) -> None:
        super().__init__(config)
        self._build_kan()
