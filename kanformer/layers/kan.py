"""The KAN layer shared by every basis: learnable univariate functions on edges, sums on nodes.

Legend: N tokens, I = in_features, O = out_features, B = basis functions per input (``n_basis``).

Each edge function is ``phi_oi(x_i) = sum_b coef[o, i, b] * f_b(x_i)`` (plus, where enabled, a base branch
``w_oi * silu(x_i)`` as in Liu et al. 2024). As in efficient-kan, the basis is evaluated once per input element
and the whole layer is then ONE matmul over I*B features::

    y = flatten(f(x)) @ coef.reshape(O, I*B).T  [+ silu(x) @ base_weight.T]  [+ bias]

Adding a basis means one file with a :class:`Basis` subclass (``@register_basis``) and a :class:`KANFFN`
subclass (``@register_ffn``); nothing here changes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .dispatch import scoped_kernel, use_lean
from .few_tokens import PathFFN
from .flops import SILU_FLOPS, linear_flops
from .lean import lean_kan_linear
from .lean_ffn import lean_kan_ffn
from .lean_ffn import plan as ffn_plan
from .registry import KANModule, check_last_dim, check_positive_int, rms

_BASES: dict[str, type[Basis]] = {}
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_RIDGE = 1e-8  # relative ridge of the grid refit (see KANLinear._refit)
TANH_SATURATION = 3.0  # |x| beyond which tanh(x) is within 0.5% of +-1 (telemetry of tanh-squashed bases)


class Basis(nn.Module):
    """Evaluates ``n_basis`` univariate functions of each input feature: ``(N, I) -> (N, I, B)``.

    Subclasses declare their options as keyword-only ``__init__`` arguments with defaults (the single source of
    defaults: the class methods below bind against that signature) and implement ``n_basis_for``,
    ``flops_per_element`` and, if they own parameters, ``params_for``.
    """

    name: ClassVar[str] = "?"
    # Whether a KAN layer built on this basis gets the SiLU base branch unless told otherwise.
    default_base: ClassVar[bool] = False
    # Parameters / buffers whose first axis is the input feature (sliced when inputs are pruned).
    per_input: ClassVar[tuple[str, ...]] = ()
    # Whether ``lean_features`` / ``lean_input_grad`` work on each input alone, with no per-input tensors of the
    # basis' own: then the fused path may append zero inputs for a BLAS-friendly width (layers/lean.py's
    # ``_input_pad``; a basis with a per-function form, ``fused_state``, is padded through its state instead).
    lean_paddable: ClassVar[bool] = False
    # Whether ``lean_input_grad`` gives the input gradient for every input (never declines): then a basis without a
    # per-function form is chained with the FFN's other layer in one Function (layers/lean_ffn.py).
    lean_grad_always: ClassVar[bool] = False
    # How many per-token statistics ``lean_pre`` returns, for a basis with a pre-transform and ``fused_kept`` (the
    # forward's kept values follow them: layers/lean.py's ``_split_saved``; RBF's LayerNorm: 2).
    lean_pre_stats: ClassVar[int] = 0

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)

    @classmethod
    def accepted_kwargs(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @classmethod
    def resolve_kwargs(cls, **kw: Any) -> dict[str, Any]:
        """``kw`` completed with the defaults of ``__init__``."""
        bound = inspect.signature(cls.__init__).bind(None, 1, **kw)
        bound.apply_defaults()
        return {k: v for k, v in bound.arguments.items() if k not in ("self", "in_features")}

    @classmethod
    def count_basis(cls, **kw: Any) -> int:
        return cls.n_basis_for(**cls.resolve_kwargs(**kw))

    @classmethod
    def count_params(cls, in_features: int, **kw: Any) -> int:
        return cls.params_for(in_features, **cls.resolve_kwargs(**kw))

    @classmethod
    def count_flops(cls, in_features: int, **kw: Any) -> int:
        return in_features * cls.flops_per_element(**cls.resolve_kwargs(**kw))

    # -- to implement -------------------------------------------------------------------------------------------
    @classmethod
    def n_basis_for(cls, **kw: Any) -> int:
        raise NotImplementedError

    @classmethod
    def flops_per_element(cls, **kw: Any) -> int:
        raise NotImplementedError

    @classmethod
    def params_for(cls, in_features: int, **kw: Any) -> int:
        return 0

    @property
    def n_basis(self) -> int:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        pass

    # -- adaptive grids (only bases with a grid implement these) ------------------------------------------------
    def fit_grid_to(self, x: torch.Tensor, **kw: Any) -> None:
        raise ValueError(f"basis {self.name!r} has no adaptive grid; update_grid supports: {_grid_bases()}")

    def set_grid_size(self, grid_size: int) -> None:
        raise ValueError(f"basis {self.name!r} has no adaptive grid; extend_grid supports: {_grid_bases()}")

    def grid_samples(self, grid_size: int | None = None) -> torch.Tensor:
        """Points ``(M, I)`` covering each feature's grid, enough to refit coefficients on ``grid_size``."""
        raise ValueError(f"basis {self.name!r} has no adaptive grid; extend_grid supports: {_grid_bases()}")

    def select_inputs(self, keep: torch.Tensor) -> None:
        """Keep only the input features ``keep`` (indices), e.g. after pruning the units that fed the others."""
        for attr in self.per_input:
            value = getattr(self, attr)[keep].clone()
            setattr(self, attr, nn.Parameter(value) if isinstance(getattr(self, attr), nn.Parameter) else value)
        self.in_features = len(keep)

    @property
    def has_grid(self) -> bool:
        return type(self).fit_grid_to is not Basis.fit_grid_to

    def out_of_range(self, x: torch.Tensor) -> torch.Tensor | None:
        """Which inputs ``(N, I)`` fall outside the basis' grid or natural range (bool), or None where the basis
        has no such range (periodic or unbounded bases). For telemetry."""
        return None

    # -- optional fast paths (kanformer/layers/lean.py): a basis overrides those it offers; the defaults decline ----
    def lean_features(self, x: torch.Tensor) -> torch.Tensor:
        """Basis values ``(N, I) -> (N, B, I)`` (basis-major) for the memory-lean path, which recomputes them in the
        backward instead of keeping them. A basis without it runs the reference path."""
        raise NotImplementedError

    @property
    def has_lean(self) -> bool:
        return type(self).lean_features is not Basis.lean_features

    def lean_input_grad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """The analytic ``sum_b g_b f_b'(x)`` of the lean backward, or None (autograd through the features)."""
        return None

    def lean_features_and_input_grad(self, x: torch.Tensor, g: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(lean_features(x), lean_input_grad(x, g))`` from one pass, for the eager lean backward, which needs both
        where it makes the weights' gradient: offered by a basis whose two forms share work (the B-spline's interval
        and its lookup, RBF's Gaussians, Fourier's cosines and sines, tanh of the Chebyshev and Jacobi bases); None
        (the default, or where ``lean_input_grad`` would decline): asked for apart."""
        return None

    def lean_pre_params(self) -> tuple[torch.Tensor, ...] | None:
        """Parameters of a pre-transform of the input (``lean_pre``: RBF's layer norm), or None without one."""
        return None

    def lean_pre(self, x: torch.Tensor, *params: torch.Tensor, stats: tuple[torch.Tensor, ...] | None = None
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(u, per-token stats)`` of the pre-transform (and ``lean_pre_backward``). In the fused path ``x`` may
        carry zero inputs beyond ``in_features``, with the per-input parameters padded with zeros (layers/lean.py's
        ``_input_pad``): reductions over the inputs cover the first ``in_features`` only, and u is zero there."""
        raise NotImplementedError

    def lean_params(self) -> tuple[torch.Tensor, ...]:
        """The basis' own trainable tensors the lean Function must see (wavelet scales and shifts), in the layout its
        lean forms want: differentiable views or copies of the parameters are fine (autograd carries the gradients
        back, through one more node a step each) where ``lean_params_backward`` takes and returns them in that layout.
        Without that method autograd differentiates ``lean_features`` with respect to these tensors, so they must be
        the ones it reads."""
        return ()

    @property
    def has_lean_params(self) -> bool:
        return type(self).lean_params is not Basis.lean_params

    @property
    def has_lean_spec(self) -> bool:
        return type(self).lean_spec is not Basis.lean_spec

    @property
    def has_fused_kept(self) -> bool:
        return type(self).fused_kept is not Basis.fused_kept

    @property
    def has_params_backward(self) -> bool:
        return type(self).lean_params_backward is not Basis.lean_params_backward

    def lean_params_backward(self, x_t: torch.Tensor, g_t: torch.Tensor, *params: torch.Tensor,
                             g_x: torch.Tensor | None = None) -> tuple[Any, ...]:
        """With ``lean_params``: ``(dL/dx, dL/dparam..., values)`` analytically, for the tensors as ``lean_params``
        gives them (without it, autograd differentiates the recomputed basis). Input-major operands: the input ``x_t``
        (I, N), dL/dfeatures ``g_t`` (B, I, N), and dL/dx returned (I, N), added to ``g_x`` where given (the base
        branch's): the parameters' reductions over tokens then run along contiguous rows, in the same pass as dL/dx
        (layers/lean.py: ``_lean_backward``'s ``input_major``, ``input_major_backward``). ``values``: the B basis
        values (I, N) of the same pass (the weight gradient's features; a compiler drops them where unused)."""
        raise NotImplementedError

    def fused_state(self) -> tuple[torch.Tensor, ...] | None:
        """Arguments of the per-function elementwise form ``fused_term(s)`` (the fused path), or None without one: 0-d
        tensors, or per-input tensors ``(..., in_features)`` (padded with zeros along the last dim where the fused path
        pads the inputs)."""
        return None

    form_version = 0  # moved by every change in place of what ``fused_form`` or ``n_basis`` reads

    def fused_form(self) -> str:
        """Which of the basis' fused forms its state takes now, where it has more than one ("" where it has one): what
        a change in place, which the basis' configuration does not show, changes in its compiled graphs. ``auto``
        keys its choices and background compiles on it (layers/autotune.py), read again where ``form_version``
        moved."""
        return ""

    def fitted_form(self) -> str:
        """The fused form the state takes once fitted to data (``fit_grid_to``): the same as now for a basis without
        a grid."""
        return self.fused_form()

    def take_form(self, form: str) -> None:
        """Make the state take the fused form ``form`` (``fused_form``'s): a background compile's stand-in for a layer
        whose state was changed in place (layers/background_compile.py)."""
        if form != self.fused_form():
            raise ValueError(f"{type(self).__name__} has one fused form, {self.fused_form()!r}; got {form!r}")

    def lean_spec(self) -> str:
        """With ``lean_params``: the basis as a string a compiled graph carries (layers/lean_ffn.py's operator, which
        builds a basis from it to run the lean forms, its parameters passed apart), ``name|in_features|key=value...``:
        the registered name, then each ``__init__`` keyword the lean forms read, its value a Python literal (``repr``).
        Made of attributes only, so a graph traced for one layer serves every layer of the same configuration. Without
        it, such a basis takes the compiled reference inside a compiled graph."""
        raise NotImplementedError

    def fused_state_from(self, *params: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """``fused_state`` made from the given tensors, laid out as ``lean_params`` gives them, instead of read from the
        module: for a caller that holds them (layers/lean_ffn.py's operator inside a compiled graph, whose inputs
        they are). Default: ``fused_state()``, for a basis whose state does not derive from its own parameters."""
        return self.fused_state()

    def fused_term(self, x: torch.Tensor, j: int, *state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(value, slope) of basis function ``j`` at ``x``: the fused path's per-function form (this or
        ``fused_terms``)."""
        raise NotImplementedError

    def fused_terms(self, x: torch.Tensor, *state: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(value, slope) of every basis function, ``fused_term`` for each j (slope None: a constant function); a basis
        whose functions share work overrides it to write the shared expressions once (what the compiler traces, op by
        op, on every process's first call: the compiled loop is the same either way). A basis with ``fused_kept``
        takes a keyword ``kept`` too: the forward's kept values, given where the forward kept them."""
        return [self.fused_term(x, j, *state) for j in range(self.n_basis)]

    def fused_kept(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Values of the per-function form, each (N, I) like ``x``, that the fused path's forward keeps for the
        backward, whose ``fused_terms(x, *state, kept=...)`` then takes them instead of computing them again: memory
        traded for arithmetic, where that measured faster (RBF's exponential of the recurrence on a CPU). The default:
        none, the backward computes everything again."""
        return ()

    def triton_params(self) -> tuple[torch.Tensor, ...] | None:
        """What the Triton kernels need (B-spline on a uniform grid), or None where they do not apply."""
        return None

    def refresh_checks(self) -> None:
        """Run again the eager checks whose verdicts a ``torch.compile``'d graph reads, since a graph cannot read
        values back (the B-spline: whether its grid is uniform). A basis runs them itself where its tensors change
        through its own methods, ``load_state_dict`` or ``.to()``; :func:`refresh_checks` after anything else."""


def refresh_checks(model: nn.Module) -> nn.Module:
    """``Basis.refresh_checks`` on every basis in ``model`` (returned): before ``torch.compile`` of a model whose
    tensors were written by other means (a loader that replaces buffers, an in-place write)."""
    for module in model.modules():
        if isinstance(module, Basis):
            module.refresh_checks()
    return model


def _grid_bases() -> str:
    return ", ".join(n for n, c in sorted(_BASES.items()) if c.fit_grid_to is not Basis.fit_grid_to)


class TanhPolynomialBasis(Basis):
    """Polynomials P_0 .. P_degree of t = tanh(x) (Chebyshev's, Jacobi's), each input on its own. Out-of-range rule:
    tanh squashes every input into (-1, 1), the polynomials' natural domain. Subclasses set ``degree`` and give
    ``_polynomials(t)``, and their lean forms."""

    lean_paddable = True
    lean_grad_always = True
    degree: int

    @classmethod
    def n_basis_for(cls, *, degree: int, **_: Any) -> int:
        return degree + 1

    @property
    def n_basis(self) -> int:
        return self.degree + 1

    def out_of_range(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() > TANH_SATURATION  # tanh(x) within 0.5% of +-1: the polynomials barely vary there

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._polynomials(torch.tanh(x)), dim=-1)  # (N, I, D+1)

    def _polynomials(self, t: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def fused_state(self) -> tuple[torch.Tensor, ...]:
        return ()

    # the lean forms, from t = tanh(x): subclasses give ``_lean_values(t)`` (N, B, I) and ``_lean_slope_sum(t, g)``
    def lean_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._lean_values(torch.tanh(x))

    def lean_input_grad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self._lean_slope_sum(torch.tanh(x), g)

    def lean_features_and_input_grad(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tanh(x)  # once for both
        return self._lean_values(t), self._lean_slope_sum(t, g)

    def _lean_values(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _lean_slope_sum(self, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def register_basis(name: str) -> Callable[[type[Basis]], type[Basis]]:
    def decorator(cls: type[Basis]) -> type[Basis]:
        if name in _BASES and _BASES[name] is not cls:
            raise ValueError(f"basis {name!r} is already registered to {_BASES[name].__qualname__}")
        cls.name = name
        _BASES[name] = cls
        return cls

    return decorator


def list_bases() -> list[str]:
    return sorted(_BASES)


def get_basis_class(basis: str | type[Basis]) -> type[Basis]:
    if isinstance(basis, type) and issubclass(basis, Basis):
        return basis
    if not isinstance(basis, str) or basis not in _BASES:
        raise ValueError(f"Unknown basis {basis!r}. Available: {', '.join(list_bases())}")
    return _BASES[basis]


def _is_sharded(p: torch.Tensor) -> bool:
    return hasattr(p, "full_tensor")  # a DTensor (FSDP2 / tensor parallel)


def _full(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor, also when ``p`` is sharded (every rank must call this together)."""
    return p.full_tensor() if _is_sharded(p) else p.detach()


def _assign(p: torch.Tensor, value: torch.Tensor) -> None:
    """Write the whole tensor ``value`` into ``p`` in place; a sharded ``p`` keeps only its own shard."""
    if _is_sharded(p):
        from torch.distributed.tensor import distribute_tensor

        p.to_local().copy_(distribute_tensor(value, p.device_mesh, p.placements).to_local())
    else:
        p.copy_(value)


class KANLinear(KANModule):
    """One KAN layer ``(..., I) -> (..., O)`` on any registered basis.

    Args:
        base: add the SiLU base branch (Liu et al. 2024). ``None`` takes the basis' default.
        bias: add an output bias.
        init_scale: std of the coefficients is ``init_scale / sqrt(I * B)``.
        **basis_kw: options of the basis (e.g. ``grid_size``, ``degree``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        basis: str | type[Basis] = "bspline",
        *,
        base: bool | None = None,
        bias: bool = True,
        init_scale: float = 1.0,
        **basis_kw: Any,
    ) -> None:
        super().__init__()
        basis_cls = get_basis_class(basis)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        if not (isinstance(init_scale, int | float) and init_scale >= 0):
            raise ValueError(f"init_scale must be a number >= 0, got {init_scale!r}")
        self.init_scale = float(init_scale)
        self.basis = basis_cls(in_features, **basis_kw)
        self.use_base = basis_cls.default_base if base is None else bool(base)
        self.coef = nn.Parameter(torch.empty(out_features, in_features, self.basis.n_basis))
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features)) if self.use_base else None
        self.kernel_mode: str | None = None  # this layer's own path (set_kernel(model, mode)); None: the process's
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    # -- analytic costs -----------------------------------------------------------------------------------------
    @staticmethod
    def count_params(in_features: int, out_features: int, basis: str | type[Basis], *,
                     base: bool | None = None, bias: bool = True, init_scale: float = 1.0, **basis_kw: Any) -> int:
        cls = get_basis_class(basis)
        use_base = cls.default_base if base is None else base
        n = out_features * in_features * cls.count_basis(**basis_kw)
        n += out_features * in_features if use_base else 0
        n += out_features if bias else 0
        return n + cls.count_params(in_features, **basis_kw)

    @staticmethod
    def count_flops(in_features: int, out_features: int, basis: str | type[Basis], *,
                    base: bool | None = None, bias: bool = True, init_scale: float = 1.0,
                    **basis_kw: Any) -> dict[str, int]:
        cls = get_basis_class(basis)
        use_base = cls.default_base if base is None else base
        matmul = linear_flops(in_features * cls.count_basis(**basis_kw), out_features)
        elementwise = cls.count_flops(in_features, **basis_kw)
        if use_base:
            matmul += linear_flops(in_features, out_features)
            elementwise += SILU_FLOPS * in_features + out_features  # silu(x), then add the two branches
        elementwise += out_features if bias else 0
        return {"matmul": matmul, "elementwise": elementwise}

    # -- parameters ---------------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        self.basis.reset_parameters()
        std = self.init_scale / math.sqrt(self.in_features * self.basis.n_basis)
        nn.init.normal_(self.coef, mean=0.0, std=std)
        if self.base_weight is not None:
            nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))  # as nn.Linear
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def shape_parameters(self) -> list[nn.Parameter]:
        return [self.coef, *self.basis.parameters()]  # the base weights are a scale: decayed like a linear layer

    @torch.no_grad()
    def function_stats(self, x2: torch.Tensor) -> dict[str, float]:
        stats = {}
        out = self.basis.out_of_range(x2.to(self.coef.dtype))
        if out is not None:
            stats["frac_out"] = out.float().mean().item()
        stats["coef_rms"] = rms(self.coef)
        if self.base_weight is not None:
            stats["base_rms"] = rms(self.base_weight)
        return stats

    # -- forward ------------------------------------------------------------------------------------------------
    def features(self, x2: torch.Tensor) -> torch.Tensor:
        """Basis values of a flat input ``(N, I) -> (N, I, B)``; low-precision inputs are evaluated in fp32."""
        xc = x2.float() if x2.dtype in _LOW_PRECISION else x2
        return self.basis(xc).to(x2.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_mode is None:  # the usual case: the process's path (nothing to trace under torch.compile)
            return self._forward(x)
        with scoped_kernel(self.kernel_mode):
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.in_features, type(self).__name__)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, I)
        if use_lean(self.basis.has_lean):
            return lean_kan_linear(x2, self.coef, self.base_weight, self.bias, self.basis).reshape(
                *lead, self.out_features)
        # flatten, not einops: traced by torch.compile (the ``compiled`` path), einops' lazily filled table of
        # backends became a guard, and the graphs were compiled again in the call after the one that filled it
        feats = self.features(x2).flatten(1)  # (N, I, B) -> (N, I*B)
        y = F.linear(feats, self.coef.flatten(1), self.bias)  # (O, I, B) -> (O, I*B); (N, O)
        if self.base_weight is not None:
            y = y + F.linear(F.silu(x2), self.base_weight)
        return y.reshape(*lead, self.out_features)

    def edge_values(self, x2: torch.Tensor) -> torch.Tensor:
        """Basis part of every edge function at flat inputs: ``(N, I) -> (N, I, O)`` (for plots and refits)."""
        return torch.einsum("nib,oib->nio", self.features(x2), self.coef)

    # -- grid changes that preserve the function ----------------------------------------------------------------
    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, **kw: Any) -> None:
        """Move the basis grid to the data ``x`` (e.g. quantiles) and refit coefficients to keep the function."""
        check_last_dim(x, self.in_features, type(self).__name__)
        x2 = x.reshape(-1, self.in_features).float()
        self._refit(x2, lambda: self.basis.fit_grid_to(x2, **kw))

    @torch.no_grad()
    def extend_grid(self, grid_size: int, x: torch.Tensor | None = None) -> None:
        """Change the number of grid intervals (usually finer), refitting coefficients to keep the function.

        The function is preserved on ``x`` when given (the data the layer sees), else on points spread over the
        grid range. Knots keep their current (possibly data-adapted) spacing; doubling the grid size nests the old
        knots, so the refit is exact there. The coefficient tensor changes shape: rebuild the optimizer afterwards.
        """
        if x is None:
            samples = self.basis.grid_samples(grid_size)
        else:
            check_last_dim(x, self.in_features, type(self).__name__)
            samples = x.reshape(-1, self.in_features).float()
        self._refit(samples, lambda: self.basis.set_grid_size(grid_size))

    def _refit(self, x2: torch.Tensor, change_basis: Callable[[], None]) -> None:
        """Least squares, per input feature i, of the new coefficients against the old edge functions at ``x2``:
        ``min_C ||F_new C - F_old C_old||``. Normal equations in float64: ``(F_new^T F_new) C = (F_new^T F_old) C_old``,
        so the (N, I, O) table of old edge values is never built. A tiny ridge (relative to the mean diagonal)
        keeps the system positive definite when a basis function sees no data, so one Cholesky solve works on
        CPU and CUDA; float64 keeps it as accurate as a QR solve in fp32, and much faster on CPU."""
        old = rearrange(self.basis(x2), "n i b -> i n b").double()  # (I, N, B_old)
        change_basis()
        new = rearrange(self.basis(x2), "n i b -> i n b").double()  # (I, N, B_new)
        gram = new.transpose(1, 2) @ new  # (I, B_new, B_new)
        cross = new.transpose(1, 2) @ old  # (I, B_new, B_old)
        rhs = cross @ rearrange(_full(self.coef).double(), "o i b -> i b o")  # (I, B_new, O)
        diag = gram.diagonal(dim1=1, dim2=2)  # (I, B_new)
        gram = gram + torch.diag_embed(_RIDGE * diag.mean(dim=1, keepdim=True).clamp_min(1e-30).expand_as(diag))
        coef = torch.cholesky_solve(rhs, torch.linalg.cholesky(gram))  # (I, B_new, O)
        coef = rearrange(coef, "i b o -> o i b").to(self.coef.dtype).contiguous()
        if coef.shape == self.coef.shape:  # in place: optimizers and sharding wrappers keep their parameter
            _assign(self.coef, coef)
        else:
            if _is_sharded(self.coef):
                raise ValueError("extend_grid changes the coefficient shape, which a sharded (FSDP) parameter "
                                 "cannot do in place; extend before sharding, or use DDP")
            self.coef = nn.Parameter(coef, requires_grad=self.coef.requires_grad)

    @torch.no_grad()
    def fit_least_squares(self, x: torch.Tensor, target: torch.Tensor, ridge: float = 1e-6) -> float:
        """Set coefficients, base weights and bias to the least-squares fit of ``target`` ``(N, O)`` from ``x``
        ``(N, I)`` (the layer is linear in them once the basis is fixed); returns the relative residual."""
        x2 = x.reshape(-1, self.in_features).float()
        cols = [rearrange(self.features(x2).float(), "n i b -> n (i b)")]  # (N, I*B)
        if self.base_weight is not None:
            cols.append(F.silu(x2))
        if self.bias is not None:
            cols.append(torch.ones(len(x2), 1, device=x2.device))
        design = torch.cat(cols, dim=1).double()  # (N, P)
        y = target.reshape(len(x2), -1).double()
        gram = design.T @ design
        gram += ridge * gram.diagonal().mean().clamp_min(1e-30) * torch.eye(len(gram), dtype=gram.dtype,
                                                                            device=gram.device)
        sol = torch.linalg.solve(gram, design.T @ y)  # (P, O)
        n_coef = self.in_features * self.basis.n_basis
        self.coef.copy_(rearrange(sol[:n_coef], "(i b) o -> o i b", i=self.in_features).to(self.coef.dtype))
        rest = sol[n_coef:]
        if self.base_weight is not None:
            self.base_weight.copy_(rest[: self.in_features].T.to(self.base_weight.dtype))
            rest = rest[self.in_features:]
        if self.bias is not None:
            self.bias.copy_(rest[0].to(self.bias.dtype))
        return ((design @ sol - y).norm() / y.norm().clamp_min(1e-30)).item()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, basis={self.basis.name!r}, "
                f"n_basis={self.basis.n_basis}, base={self.use_base}, bias={self.bias is not None}")


class KANFFN(PathFFN):
    """A KAN feed-forward block: two KAN layers ``d_model -> hidden -> d_model`` on ``basis_cls``."""

    basis_cls: ClassVar[type[Basis]]

    def __init__(self, d_model: int, hidden: int, *, base: bool | None = None, bias: bool = True,
                 init_scale: float = 1.0, **basis_kw: Any) -> None:
        super().__init__(d_model, hidden, base=base, bias=bias, init_scale=init_scale, **basis_kw)
        layer_kw = dict(base=base, bias=bias, init_scale=init_scale, **basis_kw)
        self.fc1 = KANLinear(d_model, hidden, self.basis_cls, **layer_kw)
        self.fc2 = KANLinear(hidden, d_model, self.basis_cls, **layer_kw)

    @classmethod
    def accepted_kwargs(cls) -> list[str]:
        return ["base", "bias", "init_scale", *cls.basis_cls.accepted_kwargs()]

    @classmethod
    def count_params(cls, d_model: int, hidden: int, **kw: Any) -> int:
        return (KANLinear.count_params(d_model, hidden, cls.basis_cls, **kw)
                + KANLinear.count_params(hidden, d_model, cls.basis_cls, **kw))

    @classmethod
    def count_flops(cls, d_model: int, hidden: int, **kw: Any) -> dict[str, int]:
        a = KANLinear.count_flops(d_model, hidden, cls.basis_cls, **kw)
        b = KANLinear.count_flops(hidden, d_model, cls.basis_cls, **kw)
        return {k: a[k] + b[k] for k in a}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.d_model, f"FFN {self.name!r}")
        chained = ffn_plan(self, x)  # both layers in one Function where they can be (layers/lean_ffn.py)
        if chained is not None:
            return lean_kan_ffn(self, x, chained)
        return self.fc2(self.fc1(x))

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, **kw: Any) -> None:
        """Fit both layers' grids to the activations that ``x`` produces (grid bases only)."""
        self.fc1.update_grid(x, **kw)
        self.fc2.update_grid(self.fc1(x), **kw)

    @torch.no_grad()
    def extend_grid(self, grid_size: int, x: torch.Tensor | None = None) -> None:
        """Refine both layers' grids; with ``x``, the function is preserved on the activations it produces."""
        hidden = None if x is None else self.fc1(x)
        self.fc1.extend_grid(grid_size, x)
        self.fc2.extend_grid(grid_size, hidden)
        self.ffn_kwargs["grid_size"] = grid_size


class KAN(nn.Module):
    """A stack of KAN layers, e.g. ``KAN([2, 5, 1], basis="bspline", grid_size=5)`` (the KAN paper's nets)."""

    def __init__(self, widths: Sequence[int], basis: str | type[Basis] = "bspline", **layer_kw: Any) -> None:
        super().__init__()
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least an input and an output width, got {widths!r}")
        self.widths = [check_positive_int(f"widths[{i}]", w) for i, w in enumerate(widths)]
        self.layers = nn.ModuleList(
            KANLinear(a, b, basis, **layer_kw) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, **kw: Any) -> None:
        for layer in self.layers:
            layer.update_grid(x, **kw)
            x = layer(x)

    @torch.no_grad()
    def extend_grid(self, grid_size: int, x: torch.Tensor | None = None) -> None:
        """Refine every layer's grid; with ``x``, the function is preserved on the data (see KANLinear)."""
        for layer in self.layers:
            nxt = None if x is None else layer(x)
            layer.extend_grid(grid_size, x)
            x = nxt
