"""kanformer: Kolmogorov-Arnold-Network feed-forward blocks for transformers, measured against matched MLPs."""

from . import _moved
from .layers import (
    FFN,
    KAN,
    KANFFN,
    KANLinear,
    create_ffn,
    list_bases,
    list_ffns,
    register_basis,
    register_ffn,
)
from .layers.budget import ffn_flops, ffn_params, match_hidden
from .layers.dispatch import kernel, set_kernel
from .models import (  # importing registers the KAN classes with the transformers Auto classes
    KanBertConfig,
    KanBertForMaskedLM,
    KanBertModel,
    KanGPT2Config,
    KanGPT2LMHeadModel,
    KanGPT2Model,
    KanLlamaConfig,
    KanLlamaForCausalLM,
    KanLlamaModel,
    KanViTConfig,
    KanViTForImageClassification,
    KanViTModel,
)
from .surgery import KanifyReport, kanify

_moved.install()  # module paths from before the package regroup (kanformer.compare, ...) keep importing

__version__ = "0.1.0"

__all__ = [
    "FFN", "KAN", "KANFFN", "KANLinear", "KanBertConfig", "KanBertForMaskedLM", "KanBertModel", "KanGPT2Config",
    "KanGPT2LMHeadModel", "KanGPT2Model", "KanLlamaConfig", "KanLlamaForCausalLM", "KanLlamaModel", "KanViTConfig",
    "KanViTForImageClassification", "KanViTModel", "KanifyReport", "create_ffn", "ffn_flops", "ffn_params", "kanify",
    "kernel", "list_bases", "list_ffns", "match_hidden", "register_basis", "register_ffn", "set_kernel",
]
