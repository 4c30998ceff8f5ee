"""Symbolic snapping (Liu et al. 2024, Sec. 2.5.1 "symbolification"): fit an edge function with
``c * f(a * x + b) + d`` for elementary functions f, and write a fully snapped KAN as a sympy formula.

The fit is a grid search over (a, b) with (c, d) solved by least squares at every grid point (vectorised), then a
few L-BFGS steps on all four from the best grid point. Functions with a restricted domain (log, sqrt) only count
grid points where ``a * x + b`` stays inside it for every sample. Quality is R^2 on the samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy
import torch

from ..layers import KAN
from .activity import edge_function

_EPS = 1e-12

# name -> (torch function, sympy function, domain check on the inner argument u = a x + b)
FUNCTIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[sympy.Expr], sympy.Expr],
                           Callable[[torch.Tensor], torch.Tensor] | None]] = {
    "x": (lambda u: u, lambda u: u, None),
    "x^2": (lambda u: u**2, lambda u: u**2, None),
    "x^3": (lambda u: u**3, lambda u: u**3, None),
    "exp": (torch.exp, sympy.exp, lambda u: u < 30),
    "log": (lambda u: torch.log(u.clamp_min(_EPS)), sympy.log, lambda u: u > 1e-3),
    "sqrt": (lambda u: torch.sqrt(u.clamp_min(0)), sympy.sqrt, lambda u: u >= 0),
    "sin": (torch.sin, sympy.sin, None),
    "tanh": (torch.tanh, sympy.tanh, None),
    "abs": (torch.abs, sympy.Abs, None),
    "gaussian": (lambda u: torch.exp(-(u**2)), lambda u: sympy.exp(-(u**2)), None),
}

# Ranks near-equal fits (see _score): powers and elementary functions before compositions that can mimic them.
COMPLEXITY = {"x": 1, "x^2": 2, "x^3": 3, "exp": 2, "log": 2, "sqrt": 2, "sin": 2, "tanh": 3, "abs": 3,
              "gaussian": 3}


@dataclass
class SymbolicFit:
    name: str
    a: float
    b: float
    c: float
    d: float
    r2: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.c * FUNCTIONS[self.name][0](self.a * x + self.b) + self.d

    def expr(self, x: sympy.Expr, digits: int = 4) -> sympy.Expr:
        def r(v: float) -> sympy.Float:
            return sympy.Float(v, digits)

        return r(self.c) * FUNCTIONS[self.name][1](r(self.a) * x + r(self.b)) + r(self.d)


def _r2(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    ss = (y - y.mean()).square().sum()
    return 1 - (y - pred).square().sum(-1) / ss.clamp_min(_EPS)


def _fit_one(name: str, x: torch.Tensor, y: torch.Tensor, a_grid: torch.Tensor, b_grid: torch.Tensor,
             refine_steps: int) -> SymbolicFit:
    fn, _, domain = FUNCTIONS[name]
    a, b = torch.meshgrid(a_grid, b_grid, indexing="ij")
    a, b = a.reshape(-1, 1), b.reshape(-1, 1)  # (P, 1)
    u = a * x + b  # (P, N)
    valid = torch.ones(len(a), dtype=torch.bool) if domain is None else domain(u).all(dim=1)
    f = fn(u)
    valid &= torch.isfinite(f).all(dim=1)
    fm, ym = f.mean(1, keepdim=True), y.mean()
    fc = f - fm
    var = fc.square().sum(1)
    c = (fc * (y - ym)).sum(1) / var.clamp_min(_EPS)  # least-squares slope per grid point
    d = ym - c * fm.squeeze(1)
    r2 = _r2(y, c[:, None] * f + d[:, None])
    r2 = torch.where(valid & (var > _EPS) & torch.isfinite(r2), r2, torch.full_like(r2, -torch.inf))
    best = int(r2.argmax())
    if not torch.isfinite(r2[best]):
        return SymbolicFit(name, 0.0, 0.0, 0.0, float(ym), float("-inf"))
    params = torch.tensor([a[best, 0], b[best, 0], c[best], d[best]], dtype=x.dtype, requires_grad=True)
    start = params.detach().clone()
    if refine_steps:
        opt = torch.optim.LBFGS([params], lr=1, max_iter=refine_steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (params[2] * fn(params[0] * x + params[1]) + params[3] - y).square().mean()
            loss.backward()
            return loss

        opt.step(closure)
    final = params.detach()
    ok = torch.isfinite(final).all() and (domain is None or bool(domain(final[0] * x + final[1]).all()))
    chosen = final if ok else start
    r2_final = float(_r2(y, chosen[2] * fn(chosen[0] * x + chosen[1]) + chosen[3]))
    if ok and r2_final < float(r2[best]):  # refinement must never make the fit worse
        chosen, r2_final = start, float(r2[best])
    return _canonical(SymbolicFit(name, *(float(v) for v in chosen), r2=r2_final))


def _canonical(f: SymbolicFit) -> SymbolicFit:
    """The same function with the redundant constants folded (readable formulas): ``c exp(a x + b)`` ->
    ``c e^b exp(a x)``, ``c (a x + b)^k`` -> ``c a^k (x + b/a)^k``, ``c (a x + b) + d`` -> ``c a x + (c b + d)``."""
    if f.name == "exp" and f.c != 0:
        return SymbolicFit(f.name, f.a, 0.0, f.c * math.exp(f.b), f.d, f.r2)
    powers = {"x": 1, "x^2": 2, "x^3": 3}
    if f.name in powers and f.a != 0:
        k = powers[f.name]
        if k == 1:
            return SymbolicFit(f.name, 1.0, 0.0, f.c * f.a, f.c * f.b + f.d, f.r2)
        return SymbolicFit(f.name, 1.0, f.b / f.a, f.c * f.a**k, f.d, f.r2)
    return f


def fit_symbolic(x: torch.Tensor, y: torch.Tensor, names: Sequence[str] | None = None, *,
                 a_range: tuple[float, float] = (-10.0, 10.0), b_range: tuple[float, float] = (-10.0, 10.0),
                 grid: int = 41, refine_steps: int = 50, noise_floor: float = 1e-6) -> list[SymbolicFit]:
    """Fits of ``y ~ c f(a x + b) + d`` for every function in ``names`` (default: all of ``FUNCTIONS``), best
    first: by R^2, with fits closer than ``noise_floor`` (in 1 - R^2) ranked simplest first. ``x`` and ``y`` are
    1-D samples of one edge function."""
    names = list(FUNCTIONS) if names is None else list(names)
    unknown = [n for n in names if n not in FUNCTIONS]
    if unknown:
        raise ValueError(f"Unknown symbolic function(s) {unknown}. Available: {', '.join(FUNCTIONS)}")
    x, y = x.detach().double().flatten(), y.detach().double().flatten()
    if x.shape != y.shape or len(x) < 4:
        raise ValueError(f"fit_symbolic needs matching 1-D samples (at least 4), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    a_grid = torch.linspace(*a_range, grid, dtype=torch.float64)
    b_grid = torch.linspace(*b_range, grid, dtype=torch.float64)
    fits = [_fit_one(n, x, y, a_grid, b_grid, refine_steps) for n in names]
    return sorted(fits, key=lambda f: _score(f, noise_floor), reverse=True)


def _score(fit: SymbolicFit, noise_floor: float) -> float:
    """Digits of fit (``-log10(1 - R^2)``, capped at the noise floor) less 0.1 per unit of complexity: among fits
    equally good to within the floor, the simpler function wins (a saturated tanh with huge constants can mimic
    exp as closely as the edge's own approximation error allows; exp is the honest answer)."""
    if not math.isfinite(fit.r2):
        return -math.inf
    return -math.log10(max(1 - fit.r2, noise_floor)) - 0.1 * COMPLEXITY[fit.name]


@torch.no_grad()
def snap_kan(kan: KAN, x: torch.Tensor, names: Sequence[str] | None = None,
             **fit_kw: float) -> list[list[list[SymbolicFit]]]:
    """Best symbolic fit of every edge of a small KAN on its inputs: ``fits[layer][o][i]``."""
    out = []
    for layer in kan.layers:
        phi = edge_function(layer, x)  # (N, I, O)
        out.append([[fit_symbolic(x[:, i], phi[:, i, o], names, **fit_kw)[0] for i in range(layer.in_features)]
                    for o in range(layer.out_features)])
        x = layer(x)
    return out


def kan_formula(kan: KAN, fits: list[list[list[SymbolicFit]]], variables: Sequence[str] | None = None,
                digits: int = 4) -> list[sympy.Expr]:
    """The formula of a fully snapped KAN: each output is ``sum_i fit_oi(x_i) + bias_o``, composed layer by layer
    (edges whose fit is the zero function drop out). Returns one sympy expression per output."""
    width = kan.layers[0].in_features
    names = list(variables) if variables is not None else [f"x{i + 1}" for i in range(width)]
    if len(names) != width:
        raise ValueError(f"variables needs {width} names, got {names!r}")
    exprs: list[sympy.Expr] = list(sympy.symbols(names))
    for layer, layer_fits in zip(kan.layers, fits, strict=True):
        bias = layer.bias.detach().tolist() if layer.bias is not None else [0.0] * layer.out_features
        exprs = [sum((f.expr(e, digits) for f, e in zip(row, exprs, strict=True) if f.c != 0 or f.d != 0),
                     sympy.Float(bias[o], digits)) for o, row in enumerate(layer_fits)]
    return [sympy.simplify(e) for e in exprs]
