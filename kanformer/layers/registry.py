"""One registry for every feed-forward block, KAN or baseline.

``create_ffn(name, d_model, hidden, **kw)`` builds a module mapping ``(..., d_model) -> (..., d_model)``;
``list_ffns()`` names what is registered; ``register_ffn(name)`` adds a class. Every class derives from
:class:`FFN`, which fixes the contract: analytic ``count_params`` / ``count_flops`` (class methods, so widths can be
solved without building a module), ``num_params()``, ``flops_per_token()``, ``flop_breakdown()`` and
``reset_parameters()``. FLOPs follow the convention in :mod:`kanformer.layers.flops`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

_REGISTRY: dict[str, type[FFN]] = {}


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Validate a width-like argument; the error names the argument and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_last_dim(x: torch.Tensor, expected: int, owner: str) -> None:
    if x.dim() == 0 or x.shape[-1] != expected:
        raise ValueError(
            f"{owner} expects inputs of shape (..., {expected}), got {tuple(x.shape)} "
            f"(last dimension must equal {expected})"
        )


class KANModule(nn.Module):
    """Learnable univariate functions: a KAN layer's edges (``KANLinear``) or a GR-KAN activation's channel groups
    (``GroupRational``). What the optimizer, host-model initialisation, telemetry and the inspect report need of
    one is asked of the module itself, so none of them names a kind; a new kind implements these."""

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def shape_parameters(self) -> list[nn.Parameter]:
        """Parameters that give the functions their shapes rather than their scale (no weight decay by default)."""
        raise NotImplementedError

    def function_stats(self, x2: torch.Tensor) -> dict[str, float]:
        """Telemetry on flat inputs ``x2 (N, in)`` besides the input's moments: e.g. the share outside the range
        the functions are defined well on (``frac_out``), the size of their coefficients."""
        raise NotImplementedError

    def curves(self, x2: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The functions to draw for inputs ``x2 (N, in)``: (label, their inputs, grid, values) each. (The inspect
        report ranks and draws a KAN layer's edges itself; other kinds draw through this.)"""
        raise NotImplementedError


def rms(t: torch.Tensor) -> float:
    return t.detach().float().square().mean().sqrt().item()


def copy_units(dst: nn.Linear, src: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
               ) -> None:
    """Copy ``src``'s weights (and bias) into ``dst``, keeping output units ``rows`` and input units ``cols``."""
    with torch.no_grad():
        w = src.weight
        w = w[rows] if rows is not None else w
        w = w[:, cols] if cols is not None else w
        dst.weight.copy_(w)
        if dst.bias is not None and src.bias is not None:
            dst.bias.copy_(src.bias[rows] if rows is not None else src.bias)


class FFN(nn.Module):
    """Base class of every registered feed-forward block.

    Subclasses implement ``count_params(d_model, hidden, **kw)`` and ``count_flops(d_model, hidden, **kw)`` as
    exact analytic formulas; the test suite checks them against the built module and torch's FLOP counter.
    """

    name: ClassVar[str] = "?"
    kernel_mode: str | None = None  # this block's own path (set_kernel(model, mode)); None: the process's

    def __init__(self, d_model: int, hidden: int, **ffn_kwargs: Any) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.hidden = check_positive_int("hidden", hidden)
        # What this block was built with besides its widths: enough to rebuild it and to count its cost.
        self.ffn_kwargs = dict(ffn_kwargs)

    @classmethod
    def count_params(cls, d_model: int, hidden: int, **kw: Any) -> int:
        raise NotImplementedError

    @classmethod
    def count_flops(cls, d_model: int, hidden: int, **kw: Any) -> dict[str, int]:
        """Forward FLOPs per token: ``{"matmul": ..., "elementwise": ...}``."""
        raise NotImplementedError

    @classmethod
    def accepted_kwargs(cls) -> list[str]:
        """Keyword arguments this FFN accepts besides ``d_model`` and ``hidden``."""
        return _keyword_only(cls.__init__)

    def num_params(self) -> int:
        return self.count_params(self.d_model, self.hidden, **self.ffn_kwargs)

    def flop_breakdown(self) -> dict[str, int]:
        return self.count_flops(self.d_model, self.hidden, **self.ffn_kwargs)

    def flops_per_token(self) -> int:
        return sum(self.flop_breakdown().values())

    def reset_parameters(self) -> None:
        for module in self.children():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    @classmethod
    def fit_defaults(cls, native: str, native_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Options this FFN needs to start as a fit of the stock FFN ``native`` (with ``native_kwargs``)."""
        return {}

    def start_from(self, native: FFN, x: torch.Tensor, keep: torch.Tensor) -> str | None:
        """Initialise from the stock FFN ``native`` on its inputs ``x (N, d)``, keeping its hidden units ``keep``
        where this block is narrower; the method's name, or None where this FFN has no start of its own (the warm
        start then uses its generic ones, kanformer.surgery.warmstart)."""
        return None

    def extra_repr(self) -> str:
        extras = "".join(f", {k}={v!r}" for k, v in self.ffn_kwargs.items())
        return f"d_model={self.d_model}, hidden={self.hidden}{extras}"


def _keyword_only(fn: Callable) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def register_ffn(name: str) -> Callable[[type[FFN]], type[FFN]]:
    """Class decorator: ``@register_ffn("bspline")``."""

    def decorator(cls: type[FFN]) -> type[FFN]:
        if not (isinstance(cls, type) and issubclass(cls, FFN)):
            raise TypeError(f"register_ffn({name!r}) expects a subclass of FFN, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"FFN {name!r} is already registered to {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_ffns() -> list[str]:
    """Names of every registered FFN, sorted."""
    return sorted(_REGISTRY)


def get_ffn_class(name: str) -> type[FFN]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"Unknown FFN {name!r}. Available: {', '.join(list_ffns())}")
    return _REGISTRY[name]


def check_ffn_kwargs(name: str, kw: dict[str, Any]) -> type[FFN]:
    """Resolve ``name`` and reject keyword arguments it does not accept, naming the accepted ones."""
    cls = get_ffn_class(name)
    accepted = cls.accepted_kwargs()
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ValueError(
            f"FFN {name!r} got unknown argument(s) {', '.join(unknown)}. "
            f"Accepted: {', '.join(sorted(accepted)) or '(none)'}"
        )
    return cls


def validate_ffn_options(name: str, d_model: int, hidden: int, kw: dict[str, Any], *, prefix: str = "options") -> None:
    """Check FFN ``name``'s options by building it on the meta device (no memory, no compute): each constructor
    validates its own options, and costs must not be computed from options it would reject (a negative degree makes
    a negative cost, and a width search chasing it never ends)."""
    check_ffn_kwargs(name, kw)
    try:
        with torch.device("meta"):
            get_ffn_class(name)(d_model, hidden, **kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{prefix} of FFN {name!r} ({kw}): {e}") from None


def create_ffn(name: str, d_model: int, hidden: int, **kw: Any) -> FFN:
    """Build the registered FFN ``name`` mapping ``(..., d_model) -> (..., d_model)`` through ``hidden``."""
    return check_ffn_kwargs(name, kw)(d_model, hidden, **kw)
