"""KAN model classes for Hugging Face architectures, registered with the Auto classes on import.

| model_type | stock classes -> KAN classes |
|---|---|
| gpt2  | GPT2Model, GPT2LMHeadModel -> KanGPT2Model, KanGPT2LMHeadModel (kan_gpt2) |
| vit   | ViTModel, ViTForImageClassification -> KanViTModel, KanViTForImageClassification (kan_vit) |
| bert  | BertModel, BertForMaskedLM -> KanBertModel, KanBertForMaskedLM (kan_bert) |
| llama | LlamaModel, LlamaForCausalLM -> KanLlamaModel, KanLlamaForCausalLM (kan_llama) |
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    BertForMaskedLM,
    BertModel,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaForCausalLM,
    LlamaModel,
    ViTForImageClassification,
    ViTModel,
)

from .bert import BertAdapter, KanBertConfig, KanBertForMaskedLM, KanBertModel
from .common import Adapter, KanModelMixin, normalize_spec
from .gpt2 import GPT2Adapter, KanGPT2Config, KanGPT2LMHeadModel, KanGPT2Model
from .llama import KanLlamaConfig, KanLlamaForCausalLM, KanLlamaModel, LlamaAdapter
from .vit import KanViTConfig, KanViTForImageClassification, KanViTModel, ViTAdapter

ADAPTERS: dict[str, Adapter] = {a.model_type: a for a in (GPT2Adapter(), ViTAdapter(), BertAdapter(), LlamaAdapter())}

# stock class -> (KAN class, KAN config class)
KAN_CLASSES = {
    GPT2Model: (KanGPT2Model, KanGPT2Config),
    GPT2LMHeadModel: (KanGPT2LMHeadModel, KanGPT2Config),
    ViTModel: (KanViTModel, KanViTConfig),
    ViTForImageClassification: (KanViTForImageClassification, KanViTConfig),
    BertModel: (KanBertModel, KanBertConfig),
    BertForMaskedLM: (KanBertForMaskedLM, KanBertConfig),
    LlamaModel: (KanLlamaModel, KanLlamaConfig),
    LlamaForCausalLM: (KanLlamaForCausalLM, KanLlamaConfig),
}

for _config, _auto in (
    (KanGPT2Config, {AutoModel: KanGPT2Model, AutoModelForCausalLM: KanGPT2LMHeadModel}),
    (KanViTConfig, {AutoModel: KanViTModel, AutoModelForImageClassification: KanViTForImageClassification}),
    (KanBertConfig, {AutoModel: KanBertModel, AutoModelForMaskedLM: KanBertForMaskedLM}),
    (KanLlamaConfig, {AutoModel: KanLlamaModel, AutoModelForCausalLM: KanLlamaForCausalLM}),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    for _auto_cls, _model_cls in _auto.items():
        _auto_cls.register(_config, _model_cls, exist_ok=True)

__all__ = [
    "ADAPTERS", "KAN_CLASSES", "KanBertConfig", "KanBertForMaskedLM", "KanBertModel", "KanGPT2Config",
    "KanGPT2LMHeadModel", "KanGPT2Model", "KanLlamaConfig", "KanLlamaForCausalLM", "KanLlamaModel", "KanModelMixin",
    "KanViTConfig", "KanViTForImageClassification", "KanViTModel", "normalize_spec",
]
