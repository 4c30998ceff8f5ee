"""How much each edge and hidden unit of a KAN layer does on real inputs (Liu et al. 2024, Sec. 2.5.1).

Legend: N tokens, I inputs, O outputs of a ``KANLinear``.

The activity of edge (o, i) is the mean magnitude of its function over the inputs it sees,
``A[o, i] = mean_n |phi_oi(x_ni)|`` with ``phi_oi(x) = sum_b coef[o, i, b] f_b(x) + w_oi silu(x)`` (the base
branch belongs to the edge). A hidden unit j of a two-layer KAN FFN scores ``min(max_i A1[j, i], max_o A2[o, j])``:
the paper keeps a node only if some edge into it AND some edge out of it matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers import KANLinear


def edge_function(layer: KANLinear, x2: torch.Tensor) -> torch.Tensor:
    """Every edge function at flat inputs, base branch included: ``(N, I) -> (N, I, O)``."""
    phi = layer.edge_values(x2.to(layer.coef.dtype))  # (N, I, O)
    if layer.base_weight is not None:
        phi = phi + F.silu(x2.to(phi.dtype)).unsqueeze(-1) * layer.base_weight.T  # (N, I, O)
    return phi


def edge_activity(layer: KANLinear, x2: torch.Tensor, *, chunk: int = 512, differentiable: bool = False
                  ) -> torch.Tensor:
    """``A[o, i] = mean_n |phi_oi(x_ni)|`` ``(O, I)``, in chunks of ``chunk`` rows (the (N, I, O) table of a wide
    layer does not fit in memory at once). ``differentiable=True`` keeps the graph (sparsity regularisation)."""
    total = torch.zeros(layer.in_features, layer.out_features, device=layer.coef.device)
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        for part in x2.split(chunk):
            total = total + edge_function(layer, part).abs().sum(0).float()
    return (total / max(len(x2), 1)).T  # (O, I)


def unit_scores(act_in: torch.Tensor, act_out: torch.Tensor) -> torch.Tensor:
    """Hidden-unit scores ``(H,)`` from the activities of the layer into the units ``(H, I)`` and out of them
    ``(O, H)``."""
    return torch.minimum(act_in.max(dim=1).values, act_out.max(dim=0).values)


@torch.no_grad()
def ffn_activity(fc1: KANLinear, fc2: KANLinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Edge activities of both layers of a KAN FFN on inputs ``x`` ``(N, d_model)``, and its unit scores."""
    x2 = x.reshape(-1, fc1.in_features)
    a1 = edge_activity(fc1, x2)
    a2 = edge_activity(fc2, fc1(x2))
    return {"fc1": a1, "fc2": a2, "units": unit_scores(a1, a2)}
