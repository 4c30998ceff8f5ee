"""The baselines every KAN FFN is measured against, registered under the same contract.

Legend: N tokens, d = ``d_model``, h = ``hidden``.

* ``mlp``: GPT-2's feed-forward block, Linear(d, h) -> GELU (tanh approximation, "gelu_new") -> Linear(h, d);
  ``activation`` also takes the exact ``gelu`` (BERT, ViT), ``silu`` or ``relu``.
* ``swiglu``: the gated SiLU block of PaLM / Llama (Shazeer 2020, "GLU Variants Improve Transformer"),
  down(silu(gate(x)) * up(x)); no biases by default, as in Llama. On CUDA a hidden width that is not a multiple of 8
  (the parameter-matched 2050 at d 768) is padded with zero units for the step: its (N, h) activations' rows are then
  16-byte aligned, which a GPU's fast matmul kernels need (an H200 ran the unpadded width on 2-element-aligned
  fallback kernels: 2.3 ms of kernels a step against the MLP's 0.95, d 768, 16k tokens, bf16). The parameters keep
  the matched width; the zero units add nothing to the output, and their gradients are sliced off.

Their linear layers take their products from layers/gemm.py, as the KAN layers' fast paths do: one matmul library on
both sides of a comparison.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .flops import ACTIVATION_FLOPS, SILU_FLOPS, linear_flops
from .gemm import Linear, aligned_pad, linear
from .registry import FFN, check_last_dim, register_ffn


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {
    "gelu_tanh": _gelu_tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


@register_ffn("mlp")
class MLP(FFN):
    def __init__(self, d_model: int, hidden: int, *, bias: bool = True, activation: str = "gelu_tanh") -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}. Available: {', '.join(sorted(_ACTIVATIONS))}")
        super().__init__(d_model, hidden, bias=bias, activation=activation)
        self.activation = activation
        self.fc1 = Linear(d_model, hidden, bias=bias)
        self.fc2 = Linear(hidden, d_model, bias=bias)

    @classmethod
    def count_params(cls, d_model: int, hidden: int, *, bias: bool = True, **_: Any) -> int:
        return 2 * d_model * hidden + (hidden + d_model if bias else 0)

    @classmethod
    def count_flops(cls, d_model: int, hidden: int, *, bias: bool = True, activation: str = "gelu_tanh",
                    **_: Any) -> dict[str, int]:
        return {"matmul": linear_flops(d_model, hidden) + linear_flops(hidden, d_model),
                "elementwise": ACTIVATION_FLOPS[activation] * hidden + (hidden + d_model if bias else 0)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.d_model, "FFN 'mlp'")
        return self.fc2(_ACTIVATIONS[self.activation](self.fc1(x)))


@register_ffn("swiglu")
class SwiGLU(FFN):
    def __init__(self, d_model: int, hidden: int, *, bias: bool = False) -> None:
        super().__init__(d_model, hidden, bias=bias)
        self.gate_proj = Linear(d_model, hidden, bias=bias)
        self.up_proj = Linear(d_model, hidden, bias=bias)
        self.down_proj = Linear(hidden, d_model, bias=bias)

    @classmethod
    def count_params(cls, d_model: int, hidden: int, *, bias: bool = False, **_: Any) -> int:
        return 3 * d_model * hidden + (2 * hidden + d_model if bias else 0)

    @classmethod
    def count_flops(cls, d_model: int, hidden: int, *, bias: bool = False, **_: Any) -> dict[str, int]:
        return {"matmul": 2 * linear_flops(d_model, hidden) + linear_flops(hidden, d_model),
                "elementwise": (SILU_FLOPS + 1) * hidden + (2 * hidden + d_model if bias else 0)}

    def hidden_pad(self, x: torch.Tensor) -> int:
        """Zero hidden units added for the step: on CUDA up to a multiple of 8 (see the module's docstring); none
        where a projection is not this module's own plain Linear or has hooks (they would not see the padded call)."""
        if not x.is_cuda or not aligned_pad(self.hidden):
            return 0
        if any(type(p) is not Linear or p._forward_hooks or p._forward_pre_hooks or p._backward_hooks
               or p._backward_pre_hooks for p in (self.gate_proj, self.up_proj, self.down_proj)):
            return 0
        return aligned_pad(self.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.d_model, "FFN 'swiglu'")
        pad = self.hidden_pad(x)
        if not pad:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        def widened(proj: Linear) -> torch.Tensor:  # the projection onto the padded width: zero units appended
            bias = None if proj.bias is None else F.pad(proj.bias, (0, pad))
            return linear(x, F.pad(proj.weight, (0, 0, 0, pad)), bias)

        h = F.silu(widened(self.gate_proj)) * widened(self.up_proj)
        return linear(h, F.pad(self.down_proj.weight, (0, pad)), self.down_proj.bias)
