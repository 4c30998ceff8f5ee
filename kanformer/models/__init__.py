"""KAN model classes for Hugging Face architectures, registered with the Auto classes on import.

| model_type | stock classes -> KAN classes |
|---|---|
| gpt2  | GPT2Model, GPT2LMHeadModel -> KanGPT2Model, KanGPT2LMHeadModel (kan_gpt2) |
| vit   | ViTModel, ViTForImageClassification -> KanViTModel, KanViTForImageClassification (kan_vit) |
| bert  | BertModel, BertForMaskedLM -> KanBertModel, KanBertForMaskedLM (kan_bert) |
| llama | LlamaModel, LlamaForCausalLM -> KanLlamaModel, KanLlamaForCausalLM (kan_llama) |
"""

import transformers
from transformers import AutoConfig

from . import bert, gpt2, llama, vit
from .bert import BertAdapter, KanBertConfig, KanBertForMaskedLM, KanBertModel
from .common import Adapter, Architecture, KanModelMixin, normalize_spec
from .gpt2 import GPT2Adapter, KanGPT2Config, KanGPT2LMHeadModel, KanGPT2Model
from .llama import KanLlamaConfig, KanLlamaForCausalLM, KanLlamaModel, LlamaAdapter
from .vit import KanViTConfig, KanViTForImageClassification, KanViTModel, ViTAdapter

# The one entry an architecture adds here (its file declares the rest: adapter, classes, task, stock model).
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (gpt2.ARCHITECTURE, llama.ARCHITECTURE, bert.ARCHITECTURE,
                                                                vit.ARCHITECTURE)}
ADAPTERS: dict[str, Adapter] = {name: a.adapter for name, a in ARCHITECTURES.items()}
# stock class -> (KAN class, KAN config class)
KAN_CLASSES = {stock: (kan, a.config) for a in ARCHITECTURES.values() for stock, kan in a.models.values()}

for _arch in ARCHITECTURES.values():
    AutoConfig.register(_arch.config.model_type, _arch.config, exist_ok=True)
    for _auto_name, (_, _kan_cls) in _arch.models.items():
        getattr(transformers, _auto_name).register(_arch.config, _kan_cls, exist_ok=True)

__all__ = [
    "ADAPTERS", "ARCHITECTURES", "KAN_CLASSES", "Adapter", "Architecture", "BertAdapter", "GPT2Adapter",
    "KanBertConfig", "KanBertForMaskedLM", "KanBertModel", "KanGPT2Config", "KanGPT2LMHeadModel", "KanGPT2Model",
    "KanLlamaConfig", "KanLlamaForCausalLM", "KanLlamaModel", "KanModelMixin", "KanViTConfig",
    "KanViTForImageClassification", "KanViTModel", "LlamaAdapter", "ViTAdapter", "normalize_spec",
]
