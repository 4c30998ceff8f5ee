"""The one FLOP convention used everywhere in kanformer.

* Counts are **forward** FLOPs **per token** (a token is one row of the ``(..., d_model)`` input).
  Training is commonly taken as 3x forward (backward = 2x forward, Kaplan et al. 2020); kanformer reports forward
  counts and leaves that factor to whoever multiplies.
* A matmul ``(1, K) @ (K, N)`` costs ``2 * K * N``: one multiply-add = 2 FLOPs. This is exactly what
  ``torch.utils.flop_counter.FlopCounterMode`` counts for ``mm``/``addmm``/``bmm``, and the test suite checks
  every FFN's matmul part against it.
* Everything torch's counter does not see (bias adds, activations, basis evaluation, normalisation) is counted
  **analytically**: one FLOP per scalar arithmetic operation (+, -, *, /, abs, comparison, logical and) and one
  FLOP per transcendental (exp, tanh, sin, cos, erf, rsqrt). Constants below are the op counts of the formula
  as kanformer computes it; they are derived in the comment next to each, never tuned.
* Work that does not scale with the number of tokens (e.g. differences of grid knots) is not counted.

Every FFN reports ``flop_breakdown() -> {"matmul": ..., "elementwise": ...}``; ``flops_per_token()`` is their sum.
"""

from __future__ import annotations

FLOPS_PER_MAC = 2

# GELU, tanh approximation (GPT-2's "gelu_new"): 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x^3)))
#   x^3 (2 mul), *0.044715 (1), +x (1), *sqrt(2/pi) (1), tanh (1), +1 (1), *x (1), *0.5 (1)  = 9
GELU_FLOPS = 9
# GELU, exact: 0.5*x*(1 + erf(x/sqrt(2))): scale (1), erf (1), +1 (1), *x (1), *0.5 (1)  = 5
GELU_ERF_FLOPS = 5
# SiLU: x * sigmoid(x) = x / (1 + exp(-x)): neg (1), exp (1), +1 (1), div (1)  = 4
SILU_FLOPS = 4
# LayerNorm per element: mean (1 add), centre (1 sub), square (1 mul), variance (1 add), normalise (1 mul by
# the per-row rsqrt; the rsqrt itself is per row, not per element), affine (1 mul + 1 add)  = 6
LAYERNORM_FLOPS = 6
# The activations a GELU-MLP baseline may use (names as in kanformer; see baselines.MLP).
ACTIVATION_FLOPS = {"gelu_tanh": GELU_FLOPS, "gelu": GELU_ERF_FLOPS, "silu": SILU_FLOPS, "relu": 1}


def linear_flops(in_features: int, out_features: int) -> int:
    """Matmul FLOPs per token of a dense ``in -> out`` projection (bias not included)."""
    return FLOPS_PER_MAC * in_features * out_features
