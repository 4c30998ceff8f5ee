"""Tiny randomly initialised Hugging Face models of every supported architecture, built in-process (no download)."""

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

VOCAB = 97
CONFIGS = {
    "gpt2": lambda: GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64,
                               bos_token_id=0, eos_token_id=0),
    "vit": lambda: ViTConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                             image_size=16, patch_size=4, num_labels=3),
    "bert": lambda: BertConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                               vocab_size=VOCAB, max_position_embeddings=64),
    "llama": lambda: LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                                 intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=0),
}
HEAD_CLASSES = {"gpt2": GPT2LMHeadModel, "vit": ViTForImageClassification, "bert": BertForMaskedLM,
                "llama": LlamaForCausalLM}
BASE_CLASSES = {"gpt2": GPT2Model, "vit": ViTModel, "bert": BertModel, "llama": LlamaModel}
AUTO_HEAD = {"gpt2": "AutoModelForCausalLM", "vit": "AutoModelForImageClassification",
             "bert": "AutoModelForMaskedLM", "llama": "AutoModelForCausalLM"}
NATIVE_FFN = {"gpt2": "mlp", "vit": "mlp", "bert": "mlp", "llama": "swiglu"}


def build(arch, head=True, seed=0, **config):
    """A tiny model of ``arch``; ``config``: its configuration's fields to change (``n_layer=1``, say)."""
    torch.manual_seed(seed)
    settings = CONFIGS[arch]()
    for key, value in config.items():
        if not hasattr(settings, key):
            raise ValueError(f"{type(settings).__name__} has no field {key!r}")
        setattr(settings, key, value)
    model = (HEAD_CLASSES if head else BASE_CLASSES)[arch](settings)
    return model.eval()


def inputs(arch, seed=1):
    g = torch.Generator().manual_seed(seed)
    if arch == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(1, VOCAB, (2, 11), generator=g)}


def output(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
