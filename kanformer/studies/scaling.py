"""Scaling-law fits: saturating power laws with bootstrap intervals, IsoFLOP minima, compute multipliers.

* ``L(X) = E + A * X^(-alpha)`` (Kaplan et al. 2020; Hoffmann et al. 2022 with an irreducible loss E), fitted by
  least squares in the parametrisation ``L = E + exp(a - alpha * ln X)`` for conditioning, with ``0 <= E < min L``.
* Bootstrap: resample the points with replacement, refit, report the 2.5 / 97.5 percentiles.
* IsoFLOP: at each compute budget, a parabola of loss in ln N; its vertex is the compute-optimal size.
* Compute multiplier of arm a over arm b at loss L: ``C_a(L) / C_b(L)``: "a needs x times b's FLOPs to reach L".
  ``C(L)`` is read off each arm's measured frontier (best loss so far against compute, interpolated in log C), not
  off the fitted law, whose inverse is ill-conditioned near its asymptote E with a handful of points.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class PowerLaw:
    E: float
    A: float
    alpha: float
    alpha_ci: tuple[float, float] | None = None
    E_ci: tuple[float, float] | None = None
    n_points: int = 0

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A * np.power(x, -self.alpha)

    def inverse(self, loss: float) -> float:
        """X at which the law reaches ``loss`` (inf if ``loss <= E``)."""
        if loss <= self.E or self.A <= 0 or self.alpha <= 0:
            return math.inf
        try:
            return math.exp(-math.log((loss - self.E) / self.A) / self.alpha)
        except OverflowError:  # a nearly flat law: the loss is out of practical reach
            return math.inf

    def to_dict(self) -> dict:
        return asdict(self)


def _fit_once(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    from scipy.optimize import least_squares

    lx = np.log(x)
    y_min = float(y.min())

    def residual(p: np.ndarray) -> np.ndarray:
        e, a, alpha = p
        return e + np.exp(a - alpha * lx) - y

    best = None
    for e0 in (0.0, 0.5 * y_min, 0.9 * y_min):  # a few starts: the problem is not convex in E
        span = max(y.max() - e0, 1e-6)
        p0 = np.array([e0, math.log(span) + 0.3 * lx.mean(), 0.3])
        res = least_squares(residual, p0, bounds=([0.0, -np.inf, 0.0], [max(y_min - 1e-9, 1e-9), np.inf, 5.0]))
        if best is None or res.cost < best.cost:
            best = res
    e, a, alpha = best.x
    return float(e), float(math.exp(a)), float(alpha)


def fit_power_law(x: list[float] | np.ndarray, y: list[float] | np.ndarray, *, bootstrap: int = 200,
                  seed: int = 0) -> PowerLaw:
    """Fit ``y = E + A x^-alpha``; with ``bootstrap`` > 0, percentile intervals for alpha and E."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3:
        raise ValueError(f"a power-law fit needs at least 3 points, got {len(x)}")
    if np.any(x <= 0):
        raise ValueError("power-law fits need positive x (compute, parameters or seconds)")
    e, a, alpha = _fit_once(x, y)
    law = PowerLaw(e, a, alpha, n_points=len(x))
    if bootstrap and len(x) >= 4:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(x), len(x))
            if len(np.unique(x[idx])) < 3:
                continue
            samples.append(_fit_once(x[idx], y[idx]))
        if samples:
            arr = np.array(samples)
            law.alpha_ci = tuple(float(v) for v in np.percentile(arr[:, 2], [2.5, 97.5]))
            law.E_ci = tuple(float(v) for v in np.percentile(arr[:, 0], [2.5, 97.5]))
    return law


def isoflop_minimum(params: list[float], losses: list[float]) -> dict[str, float] | None:
    """Vertex of the parabola ``loss(ln N)`` through one compute budget's runs (needs 3 sizes, a convex fit)."""
    if len(params) < 3:
        return None
    ln_n = np.log(np.asarray(params, dtype=float))
    c2, c1, c0 = np.polyfit(ln_n, np.asarray(losses, dtype=float), 2)
    if c2 <= 0:
        return None
    v = -c1 / (2 * c2)
    return {"params": float(math.exp(v)), "loss": float(c0 + c1 * v + c2 * v * v), "curvature": float(c2)}


def compute_to_reach(xs: list[float], losses: list[float], loss: float) -> float:
    """Compute at which the measured frontier (running minimum of loss over increasing x) first reaches ``loss``,
    interpolated linearly in log x; inf if it never does."""
    pts = sorted(zip(xs, losses, strict=True))
    best = math.inf
    prev: tuple[float, float] | None = None
    for x, y in pts:
        y = min(y, best)
        if y <= loss:
            if prev is None or prev[1] == y:
                return x
            t = (prev[1] - loss) / (prev[1] - y)
            return math.exp(math.log(prev[0]) + t * (math.log(x) - math.log(prev[0])))
        best, prev = y, (x, y)
    return math.inf


def frontier_multiplier(a: tuple[list[float], list[float]], b: tuple[list[float], list[float]], loss: float) -> float:
    """How many times arm b's compute arm a needs to reach ``loss``, from the measured frontiers ``(x, loss)``."""
    ca, cb = compute_to_reach(*a, loss), compute_to_reach(*b, loss)
    return ca / cb if math.isfinite(cb) and cb > 0 else math.nan


def compute_multiplier(a: PowerLaw, b: PowerLaw, loss: float) -> float:
    """How many times arm b's compute arm a needs to reach ``loss`` by the fitted laws (inf if a never does)."""
    ca, cb = a.inverse(loss), b.inverse(loss)
    if not (math.isfinite(cb) and cb > 0):
        return math.nan
    return ca / cb
