"""KAN ViT: ``vit.layers[i].mlp`` (transformers >= 5.17: ``ViTMLP`` fc1 -> act -> fc2; the block adds dropout and
the residual) becomes an FFN. The 4.x layout (``encoder.layer[i].intermediate`` + ``output``, with dropout and the
residual add inside ``ViTOutput``) is handled too: the FFN goes into ``intermediate`` and ``output.dense`` becomes
the identity, so ``ViTOutput`` still applies dropout and the residual."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from .common import Adapter, Architecture, KanConfigMixin, KanModelMixin, mlp_activation
from .kan_layers import FFN


class ViTAdapter(Adapter):
    model_type = "vit"
    native_ffn = "mlp"
    task = "image_classification"
    pipeline = "image-classification"

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        base = model.base_model
        return base.layers if hasattr(base, "layers") else base.encoder.layer

    def native_kwargs(self, config: Any) -> dict[str, Any]:
        return {"activation": mlp_activation(config.hidden_act), "bias": True}

    def stock_model(self, m: Any, *, width: int, vocab_size: int | None, eos_token_id: int | None,
                    labels: list[str], channels: int) -> nn.Module:
        return ViTForImageClassification(ViTConfig(
            image_size=m.image_size, patch_size=m.patch_size, num_channels=channels, hidden_size=m.n_embd,
            num_hidden_layers=m.n_layer, num_attention_heads=m.n_head, intermediate_size=width,
            hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout, num_labels=len(labels),
            id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)}))

    def native_state(self, block: nn.Module) -> dict[str, torch.Tensor]:
        if hasattr(block, "mlp"):
            fc1, fc2 = block.mlp.fc1, block.mlp.fc2
        else:
            fc1, fc2 = block.intermediate.dense, block.output.dense
        return {"fc1.weight": fc1.weight, "fc1.bias": fc1.bias, "fc2.weight": fc2.weight, "fc2.bias": fc2.bias}

    def ffn_site(self, block: nn.Module) -> nn.Module:
        return block.mlp if hasattr(block, "mlp") else block.intermediate

    def install(self, block: nn.Module, ffn: FFN, config: Any) -> list[str]:
        if hasattr(block, "mlp"):
            block.mlp = ffn
            return ["mlp"]
        block.intermediate = ffn
        block.output.dense = nn.Identity()
        return ["intermediate", "output.dense"]


class KanViTConfig(KanConfigMixin, ViTConfig):
    model_type = "kan_vit"

    def __init__(self, kan: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._set_kan(kan)
        super().__init__(**kwargs)


class KanViTModel(KanModelMixin, ViTModel):
    def __init__(self, config: KanViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)
        self._build_kan()


class KanViTForImageClassification(KanModelMixin, ViTForImageClassification):
    def __init__(self, config: KanViTConfig) -> None:
        super().__init__(config)
        self._build_kan()


ARCHITECTURE = Architecture(ViTAdapter(), KanViTConfig, {
    "AutoModel": (ViTModel, KanViTModel),
    "AutoModelForImageClassification": (ViTForImageClassification, KanViTForImageClassification)})
