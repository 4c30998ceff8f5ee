"""The baselines every KAN FFN is measured against, registered under the same contract.

Legend: N tokens, d = ``d_model``, h = ``hidden``.

* ``mlp``: GPT-2's feed-forward block, Linear(d, h) -> GELU (tanh approximation, "gelu_new") -> Linear(h, d).
* ``swiglu``: the gated SiLU block of PaLM / Llama (Shazeer 2020, "GLU Variants Improve Transformer"),
  down(silu(gate(x)) * up(x)); no biases by default, as in Llama.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .flops import GELU_FLOPS, SILU_FLOPS, linear_flops
from .registry import FFN, check_last_dim, register_ffn


@register_ffn("mlp")
class MLP(FFN):
    def __init__(self, d_model: int, hidden: int, *, bias: bool = True) -> None:
        super().__init__(d_model, hidden, bias=bias)
        self.fc1 = nn.Linear(d_model, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias)

    @classmethod
    def count_params(cls, d_model: int, hidden: int, *, bias: bool = True, **_: Any) -> int:
        return 2 * d_model * hidden + (hidden + d_model if bias else 0)

    @classmethod
    def count_flops(cls, d_model: int, hidden: int, *, bias: bool = True, **_: Any) -> dict[str, int]:
        return {"matmul": linear_flops(d_model, hidden) + linear_flops(hidden, d_model),
                "elementwise": GELU_FLOPS * hidden + (hidden + d_model if bias else 0)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.d_model, "FFN 'mlp'")
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


@register_ffn("swiglu")
class SwiGLU(FFN):
    def __init__(self, d_model: int, hidden: int, *, bias: bool = False) -> None:
        super().__init__(d_model, hidden, bias=bias)
        self.gate_proj = nn.Linear(d_model, hidden, bias=bias)
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    @classmethod
    def count_params(cls, d_model: int, hidden: int, *, bias: bool = False, **_: Any) -> int:
        return 3 * d_model * hidden + (2 * hidden + d_model if bias else 0)

    @classmethod
    def count_flops(cls, d_model: int, hidden: int, *, bias: bool = False, **_: Any) -> dict[str, int]:
        return {"matmul": 2 * linear_flops(d_model, hidden) + linear_flops(hidden, d_model),
                "elementwise": (SILU_FLOPS + 1) * hidden + (2 * hidden + d_model if bias else 0)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.d_model, "FFN 'swiglu'")
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
