"""Group-rational KAN FFN (GR-KAN, Yang & Wang 2024, "Kolmogorov-Arnold Transformer").

Legend: N tokens, C channels, G groups, m = ``num_degree``, n = ``den_degree``.

Each channel c applies the rational function of its group g(c) = floor(c * G / C):
``R(x) = P(x) / Q(x)``, ``P(x) = a_0 + a_1 x + ... + a_m x^m`` and the ONE canonical safe denominator
``Q(x) = 1 + |b_1 x + ... + b_n x^n|`` (Molina et al. 2020, "Padé Activation Units", safe version), which is
>= 1 everywhere, so R has no poles. Every code path computes Q through :func:`safe_denominator`.

The FFN is KAT's: rational (init identity) -> Linear(d, h) -> rational (init GELU) -> Linear(h, d). Groups need
not divide the width: channels are split into G contiguous, nearly equal runs.

Out-of-range rule: R is defined and finite everywhere (Q >= 1); with m = n + 1 it grows linearly at infinity,
like the activation it is initialised to. Low-precision inputs are evaluated in fp32.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .dispatch import use_lean
from .few_tokens import PathFFN
from .flops import linear_flops
from .lean import lean_rational_linear
from .lean_rational import lean_rational_ffn, rational_chainable
from .registry import FFN, KANModule, check_last_dim, check_positive_int, copy_units, register_ffn, rms

_INIT_TARGETS = {
    "identity": lambda x: x,
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": lambda x: F.silu(x),
}
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_IDENTITY_DEN = 0.1  # weight of the x^2 term in the exact identity initialisation (see rational_init)


def polyval(coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Horner evaluation of sum_j coeffs[..., j] x^j (coefficients last, lowest degree first)."""
    out = coeffs[..., -1].expand_as(x)
    for j in range(coeffs.shape[-1] - 2, -1, -1):
        out = out * x + coeffs[..., j]
    return out


def safe_denominator(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Q(x) = 1 + |b_1 x + ... + b_n x^n| >= 1 (``b`` holds b_1..b_n, last dimension)."""
    if b.shape[-1] == 0:
        return torch.ones_like(x)
    return 1 + (polyval(b, x) * x).abs()


def rational(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """P(x) / Q(x) with numerator coefficients ``a`` (a_0..a_m) and denominator ``b`` (b_1..b_n)."""
    return polyval(a, x) / safe_denominator(x, b)


@functools.cache
def rational_init(target: str, num_degree: int, den_degree: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients (a, b) of the rational that best fits ``target`` on [-3, 3] (least squares, float64).

    Start: the linearised problem P(x) - f(x) S(x) = f(x) with Q = 1 + S, solved exactly; then L-BFGS on the true
    squared error (the |.| in Q makes it non-linear). Deterministic, and cached per (target, degrees).
    """
    if target not in _INIT_TARGETS:
        raise ValueError(f"Unknown rational init {target!r}. Available: {', '.join(sorted(_INIT_TARGETS))}")
    if target == "identity" and num_degree >= 3 and den_degree >= 2:
        # x = (x + eps x^3) / (1 + |eps x^2|) exactly. The plain identity (b = 0) would freeze the denominator:
        # d|S|/dS = sign(S) = 0 at S = 0, so b would never receive a gradient.
        eps = _IDENTITY_DEN
        a = [0.0, 1.0, 0.0, eps] + [0.0] * (num_degree - 3)
        return tuple(a), tuple([0.0, eps] + [0.0] * (den_degree - 2))
    x = torch.linspace(-3, 3, 2001, dtype=torch.float64, device="cpu")  # on CPU even under a meta-device context
    f = _INIT_TARGETS[target](x)
    powers = torch.stack([x**j for j in range(num_degree + 1)], dim=1)  # (X, m+1)
    den_powers = torch.stack([-f * x**j for j in range(1, den_degree + 1)], dim=1)  # (X, n)
    design = torch.cat([powers, den_powers.reshape(len(x), den_degree)], dim=1)
    sol = torch.linalg.lstsq(design, f.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    a = sol[: num_degree + 1].clone().requires_grad_(True)
    b = sol[num_degree + 1:].clone().requires_grad_(True)
    if torch.mean((rational(x, a, b) - f) ** 2) > 1e-14:
        opt = torch.optim.LBFGS([a, b], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.mean((rational(x, a, b) - f) ** 2)
            loss.backward()
            return loss

        opt.step(closure)
    return tuple(a.detach().tolist()), tuple(b.detach().tolist())


class GroupRational(KANModule):
    """Channel-grouped rational activation ``(..., C) -> (..., C)``."""

    def __init__(self, width: int, *, groups: int = 8, num_degree: int = 5, den_degree: int = 4,
                 init: str = "identity") -> None:
        super().__init__()
        self.width = check_positive_int("width", width)
        self.groups = check_positive_int("groups", groups)
        if groups > width:
            raise ValueError(f"groups must be <= the width it splits ({width}), got {groups}")
        self.num_degree = check_positive_int("num_degree", num_degree, minimum=0)
        self.den_degree = check_positive_int("den_degree", den_degree, minimum=0)
        self.init = init
        rational_init(init, num_degree, den_degree)  # validates the name early
        self.numerator = nn.Parameter(torch.empty(groups, num_degree + 1))  # (G, m+1)
        self.denominator = nn.Parameter(torch.empty(groups, den_degree))  # (G, n)
        group_index = torch.arange(width) * groups // width  # (C,), contiguous nearly equal runs
        # persistent: checkpoint loaders may build modules on the meta device and fill only what the file holds
        self.register_buffer("group_index", group_index)
        self.reset_parameters()

    @staticmethod
    def flops_per_element(num_degree: int, den_degree: int) -> int:
        # Horner P: m mul + m add; Horner S then * x: 2(n-1) + 1; |.|, +1, divide: 3
        return 2 * num_degree + (2 * den_degree + 2 if den_degree else 1)

    def reset_parameters(self) -> None:
        a, b = rational_init(self.init, self.num_degree, self.den_degree)
        with torch.no_grad():
            self.numerator.copy_(torch.tensor(a, device=self.numerator.device).expand(self.groups, -1))
            self.denominator.copy_(torch.tensor(b, device=self.numerator.device).reshape(1, -1).expand(self.groups, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.width, type(self).__name__)
        xc = x.float() if x.dtype in _LOW_PRECISION else x
        a = self.numerator[self.group_index].to(xc.dtype)  # (C, m+1)
        b = self.denominator[self.group_index].to(xc.dtype)  # (C, n)
        return rational(xc, a, b).to(x.dtype)

    def shape_parameters(self) -> list[nn.Parameter]:
        return [self.numerator, self.denominator]

    def function_stats(self, x2: torch.Tensor) -> dict[str, float]:
        return {"numerator_rms": rms(self.numerator), "denominator_rms": rms(self.denominator)}

    def curves(self, x2: torch.Tensor, points: int = 200) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Each group's function over its channels' inputs in ``x2 (N, C)``: (label, the group's inputs, grid,
        values) per group, the grid spanning the central 99% of the inputs plus 0.5 on each side."""
        out = []
        for g in range(self.groups):
            xs = x2[:, self.group_index == g].flatten()
            lo, hi = torch.quantile(xs, 0.005).item() - 0.5, torch.quantile(xs, 0.995).item() + 0.5
            grid = torch.linspace(lo, hi, points)
            channel = int((self.group_index == g).nonzero()[0])
            probe = torch.zeros(points, self.width)
            probe[:, channel] = grid
            with torch.no_grad():
                out.append((f"group {g}", xs, grid, self(probe)[:, channel]))
        return out

    @torch.no_grad()
    def fit_to(self, z: torch.Tensor, activation: str, points: int = 4096) -> None:
        """Refit the coefficients (shared by every group) to ``activation`` on the inputs ``z`` it will really
        see: ``rational_init`` fits on [-3, 3], but pretrained models often go far outside."""
        from .baselines import _ACTIVATIONS

        flat = z.detach().flatten().double().cpu()
        sample = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:100_000]]
        q = torch.cat([torch.quantile(sample, torch.linspace(0, 1, points, dtype=torch.float64)),  # the data
                       torch.linspace(flat.min().item(), flat.max().item(), points, dtype=torch.float64)])  # extremes
        target = _ACTIVATIONS[activation](q)
        a = self.numerator[0].detach().double().cpu().clone().requires_grad_(True)
        b = self.denominator[0].detach().double().cpu().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([a, b], lr=1, max_iter=300, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            with torch.enable_grad():
                loss = (rational(q, a, b) - target).square().mean()
                loss.backward()
            return loss

        opt.step(closure)
        if torch.isfinite(a).all() and torch.isfinite(b).all():
            self.numerator.copy_(a.detach().to(self.numerator).expand_as(self.numerator))
            self.denominator.copy_(b.detach().to(self.denominator).expand_as(self.denominator))

    def extra_repr(self) -> str:
        return (f"width={self.width}, groups={self.groups}, num_degree={self.num_degree}, "
                f"den_degree={self.den_degree}, init={self.init!r}")


@register_ffn("rational")
class RationalFFN(PathFFN):
    """GR-KAN FFN: GroupRational(d) -> Linear(d, h) -> GroupRational(h) -> Linear(h, d)."""

    def __init__(self, d_model: int, hidden: int, *, groups: int = 8, num_degree: int = 5, den_degree: int = 4,
                 first_init: str = "identity", second_init: str = "gelu", bias: bool = True) -> None:
        super().__init__(d_model, hidden, groups=groups, num_degree=num_degree, den_degree=den_degree,
                         first_init=first_init, second_init=second_init, bias=bias)
        rat = dict(groups=groups, num_degree=num_degree, den_degree=den_degree)
        self.act1 = GroupRational(d_model, init=first_init, **rat)
        self.fc1 = nn.Linear(d_model, hidden, bias=bias)
        self.act2 = GroupRational(hidden, init=second_init, **rat)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias)

    @classmethod
    def count_params(cls, d_model: int, hidden: int, *, groups: int = 8, num_degree: int = 5,
                     den_degree: int = 4, bias: bool = True, **_: Any) -> int:
        return 2 * groups * (num_degree + 1 + den_degree) + 2 * d_model * hidden + (
            hidden + d_model if bias else 0)

    @classmethod
    def count_flops(cls, d_model: int, hidden: int, *, num_degree: int = 5, den_degree: int = 4,
                    bias: bool = True, **_: Any) -> dict[str, int]:
        per = GroupRational.flops_per_element(num_degree, den_degree)
        elementwise = per * (d_model + hidden) + (hidden + d_model if bias else 0)
        return {"matmul": linear_flops(d_model, hidden) + linear_flops(hidden, d_model),
                "elementwise": elementwise}

    def reset_parameters(self) -> None:
        for m in (self.act1, self.act2):
            m.reset_parameters()
        for fc in (self.fc1, self.fc2):
            fc.reset_parameters()

    @classmethod
    def fit_defaults(cls, native: str, native_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"second_init": native_kwargs["activation"]} if native == "mlp" else {}

    @torch.no_grad()
    def start_from(self, native: FFN, x: torch.Tensor, keep: torch.Tensor) -> str | None:
        """KAT's mimetic start from a GELU-style MLP: its linear layers (its ``keep`` units), the first rational the
        identity, the second refitted to the MLP's activation on the pre-activations it sees."""
        if native.name != "mlp":
            return None
        copy_units(self.fc1, native.fc1, rows=keep)
        copy_units(self.fc2, native.fc2, cols=keep)
        self.act2.fit_to(self.fc1(self.act1(x)), native.activation)
        return "mimetic"

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.d_model, f"FFN {self.name!r}")
        if rational_chainable(self, x):  # both pairs in one Function (layers/lean_rational.py; traced when compiling)
            return lean_rational_ffn(self, x)
        if use_lean():  # act -> linear fused twice, each saving only its input (layers/lean.py)
            h = lean_rational_linear(x.reshape(-1, self.d_model), self.act1, self.fc1)
            return lean_rational_linear(h, self.act2, self.fc2).reshape(x.shape)
        return self.fc2(self.act2(self.fc1(self.act1(x))))


