"""Warm start: fit each new FFN to the MLP it replaces, on hidden states from real inputs, one layer at a time.

For block i (in order): run the model (blocks < i already replaced) on the calibration batches and keep the inputs X
of block i's FFN (up to ``max_tokens`` rows); Y = the stock MLP(X). Then

* coefficient-linear KAN bases (B-spline, RBF, Chebyshev, Jacobi, Fourier, wavelet with its translations fixed):
  layer 1 is fitted by least squares to the pre-activations of the MLP's h most important hidden units
  (standardised), layer 2 by least squares from layer 1's outputs to Y, B-spline grids placed on the observed
  inputs of each layer (the stock output is additive in those pre-activations, so this is the KAN's own form);
* an FFN with a start of its own (``FFN.start_from``): GR-KAN (``rational``) takes KAT's mimetic start: the linear
  layers are the MLP's (its h most important hidden units when h is smaller), the first rational the identity, the
  second refitted to the MLP's activation;
* an MLP / SwiGLU of another width: the stock weights of its most important hidden units;

then optionally ``steps`` of Adam on ||FFN(X) - Y||^2 (layer-wise distillation). Only one layer's X and Y are alive
at a time, so memory stays bounded by ``max_tokens`` x ``d_model``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..layers import FFN, KANFFN, MLP, SwiGLU, create_ffn, get_ffn_class
from ..layers.bspline import BSplineBasis
from ..layers.registry import copy_units


@torch.no_grad()
def collect_ffn_inputs(model: nn.Module, site: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                       max_tokens: int) -> torch.Tensor:
    """Rows entering ``site`` (the module at an FFN's place) while ``model`` runs the batches: ``(N, d_model)``."""
    rows: list[torch.Tensor] = []
    count = 0

    def hook(module: nn.Module, args: tuple) -> None:
        nonlocal count
        x = args[0].detach().reshape(-1, args[0].shape[-1])
        take = min(len(x), max_tokens - count)
        if take > 0:
            rows.append(x[:take].float().cpu())
            count += take

    handle = site.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for batch in batches:
            if count >= max_tokens:
                break
            model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        handle.remove()
        model.train(was_training)
    if not rows:
        raise ValueError("the calibration batches produced no FFN inputs")
    return torch.cat(rows)


def _unit_importance(native: FFN, x: torch.Tensor) -> torch.Tensor:
    """Hidden units of the stock FFN ranked by their share of the output: std(activation) x ||output weights||."""
    with torch.no_grad():
        if isinstance(native, MLP):
            from ..layers.baselines import _ACTIVATIONS

            act = _ACTIVATIONS[native.activation](native.fc1(x))
            out_w = native.fc2.weight
        else:
            act = torch.nn.functional.silu(native.gate_proj(x)) * native.up_proj(x)
            out_w = native.down_proj.weight
        return act.std(0) * out_w.norm(dim=0)


@torch.no_grad()
def _start(new: FFN, native: FFN, x: torch.Tensor, y: torch.Tensor) -> str:
    """Initialise ``new`` from the stock FFN; returns the name of the method used."""
    keep = _unit_importance(native, x).argsort(descending=True)[: new.hidden].sort().values
    own = new.start_from(native, x, keep)  # an FFN with a start of its own (GR-KAN: KAT's mimetic start)
    if own is not None:
        return own
    if type(new) is type(native) and new.ffn_kwargs.get("activation") == native.ffn_kwargs.get("activation"):
        if isinstance(new, MLP):
            copy_units(new.fc1, native.fc1, rows=keep)
            copy_units(new.fc2, native.fc2, cols=keep)
        else:
            copy_units(new.gate_proj, native.gate_proj, rows=keep)
            copy_units(new.up_proj, native.up_proj, rows=keep)
            copy_units(new.down_proj, native.down_proj, cols=keep)
        return "unit-selection"
    if isinstance(new, KANFFN):
        # The stock output is additive in the pre-activations z_j: y = sum_j w_j act(z_j) + b, and each z_j is
        # linear in x. So layer 1 learns the h most important z_j (standardised) and layer 2 the univariate
        # w_j act(z_j): exact when h >= H and the basis represents those functions on the data's range.
        first = native.fc1 if isinstance(native, MLP) else native.gate_proj
        z = first(x)[:, keep]  # (N, h)
        h1 = (z - z.mean(0)) / z.std(0).clamp_min(1e-12)
        if isinstance(new.fc1.basis, BSplineBasis):
            new.fc1.update_grid(x)
        new.fc1.fit_least_squares(x, h1)
        hidden = new.fc1(x)
        if isinstance(new.fc2.basis, BSplineBasis):
            new.fc2.update_grid(hidden)
        new.fc2.fit_least_squares(hidden, y)
        return "least-squares"
    return "random"


def relative_error(new: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return ((new(x) - y).norm() / y.norm().clamp_min(1e-30)).item()


def fit_ffn(new: FFN, native: FFN, x: torch.Tensor, *, steps: int = 200, lr: float = 1e-3, batch_size: int = 1024,
            seed: int = 0) -> dict[str, Any]:
    """Fit ``new`` to reproduce ``native`` on inputs ``x`` (both on x's device, fp32); returns the fit report."""
    native.eval()
    with torch.no_grad():
        y = native(x)
    method = _start(new, native, x, y)
    report = {"method": method, "tokens": len(x), "rel_err_start": relative_error(new, x, y)}
    if steps > 0:
        start_state = {k: v.clone() for k, v in new.state_dict().items()}
        opt = torch.optim.Adam(new.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        new.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
            loss = (new(x[idx]) - y[idx]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        new.eval()
        if relative_error(new, x, y) > report["rel_err_start"]:  # refinement made it worse: keep the start
            new.load_state_dict(start_state)
    report["rel_err_fit"] = relative_error(new, x, y)
    return report


def native_ffn(adapter: Any, block: nn.Module, config: Any, current: FFN | None = None) -> FFN:
    """What a new FFN is fitted to: a copy of the block's current registered FFN, or the registered equivalent of
    its stock MLP holding the stock weights (fp32, CPU)."""
    if current is not None:
        if not isinstance(current, MLP | SwiGLU):
            raise ValueError(f"fitting to a {current.name!r} FFN is not supported: fit from an 'mlp' or 'swiglu' one")
        return copy.deepcopy(current).float().cpu()
    ffn = create_ffn(adapter.native_ffn, adapter.d_model(config), adapter.native_hidden(config),
                     **adapter.native_kwargs(config))
    ffn.load_state_dict({k: v.detach().float().cpu() for k, v in adapter.native_state(block).items()})
    return ffn


def default_kwargs_for_fit(ffn: str, adapter: Any, config: Any) -> dict[str, Any]:
    """Options a fitted start of FFN ``ffn`` needs (GR-KAN: its second rational starts as the stock activation)."""
    return get_ffn_class(ffn).fit_defaults(adapter.native_ffn, adapter.native_kwargs(config))


__all__ = ["collect_ffn_inputs", "default_kwargs_for_fit", "fit_ffn", "native_ffn", "relative_error"]
