"""The B-spline basis' fast paths (layers/bspline.py has the basis itself: Liu et al.'s splines by the Cox-de Boor
recursion, and their grids): ``BSplinePaths``, the methods the lean, fused and Triton paths (layers/lean.py,
layers/triton_kan.py) ask of a basis, and the tables they run on.

Legend: N tokens, I inputs, G grid intervals, k spline order, B = G + k basis functions per input, M = G + 2k + 1
knots per input.

- A uniform grid (per input: first knot t_0, step h; checked once per grid tensor and version, ``_uniform``): the
  k + 1 splines not zero at x are fixed polynomials of x's local coordinate in its interval (de Boor's local
  triangle; ``_local_polynomials``), for the eager lean path (``lean_features`` / ``lean_input_grad``) and the fused
  one (``fused_terms``) alike.
- An adapted grid (fitted to data): eagerly, each interval's k + 1 splines as polynomials tabled per grid
  (``_piece_tables``); fused, the recursion written elementwise on knot tables (``_knot_terms``); inside a compiled
  model's graph, the reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch._subclasses.fake_tensor import is_fake


def _knot_tables(grid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An (I, M) knot vector per input as ``BSplinePaths._knot_terms`` reads it: the knots knot-major, (M, I), and for
    each order p = 1..k the inverse spans 1 / (t_j+p - t_j), j = 0..M-1-p, stacked, (R, I) with R = kM - k(k+1)/2
    (zero for an empty span, ``_spans``)."""
    from .bspline import _spans  # (bspline.py imports this module)
    spans = [_spans(grid, p) for p in range(1, k + 1)]
    inv = torch.cat([1.0 / s for s in spans], dim=1) if spans else grid.new_zeros(grid.shape[0], 0)
    return grid.T.contiguous(), inv.T.contiguous()


def _piece_tables(grid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An adapted grid's splines interval by interval, for the eager lean path (``BSplinePaths._piece_values``), one
    row per input i and knot interval m (of the M - 1), at row i (M-1) + m: its left knot t_m and inverse width (0
    where knots repeat: an interval no input falls in), (I (M-1), 2); and for the k + 1 splines not zero there (m - k
    .. m; zero for one outside 0 .. B-1), the coefficients of t^0 .. t^k of each as a polynomial of the local
    coordinate t = (x - t_m) / (t_m+1 - t_m) in [0, 1), then those of their derivatives in x (t^k's zero), (I (M-1),
    2 (k+1), k+1): one small product with the powers of t gives both. Fitted in fp64 to the recursion at k + 1 points
    inside each interval, which a polynomial of degree k matches exactly; made on the CPU (the grid's device may lack
    fp64) and moved to the grid's."""
    from .bspline import _cox_de_boor  # (bspline.py imports this module)
    g = grid.detach().to("cpu", torch.float64)  # (I, M)
    n_in, n_int = g.shape[0], g.shape[1] - 1
    width = g[:, 1:] - g[:, :-1]  # (I, M-1)
    at = (torch.arange(k + 1, dtype=torch.float64) + 0.5) / (k + 1)  # (k+1,) sample points of t
    x = g[:, :-1, None] + width[..., None] * at  # (I, M-1, k+1)
    values = _cox_de_boor(rearrange(x, "i m q -> (m q) i"), g, k)  # (M-1 * k+1, I, B)
    values = F.pad(values, (k, k)).view(n_int, k + 1, n_in, -1)  # spline j at column j + k: (M-1, q, I, B+2k)
    columns = (torch.arange(n_int)[:, None] + torch.arange(k + 1))  # interval m's splines m-k+r at column m+r
    local = values.gather(3, columns[:, None, None, :].expand(n_int, k + 1, n_in, k + 1))  # (M-1, q, I, r)
    vandermonde = at[:, None] ** torch.arange(k + 1, dtype=torch.float64)  # (q, power)
    coef = torch.linalg.solve(vandermonde, local.reshape(n_int, k + 1, -1))  # (M-1, power, I * r)
    coef = rearrange(coef, "m p (i r) -> i m r p", r=k + 1)
    inv_width = torch.where(width > 0, 1.0 / width, torch.zeros_like(width))  # (I, M-1)
    coef = coef * (inv_width > 0)[..., None, None]  # an interval of repeated knots: nothing
    slopes = coef[..., 1:] * torch.arange(1, k + 1, dtype=torch.float64) * inv_width[..., None, None]
    head = torch.stack([g[:, :-1], inv_width], dim=-1).flatten(0, 1)  # (I (M-1), 2)
    coef = torch.cat([coef, F.pad(slopes, (0, 1))], dim=2).flatten(0, 1)  # (I (M-1), 2 (k+1), k+1)
    return head.to(grid.device, grid.dtype), coef.to(grid.device, grid.dtype)


_COUNT_LOOP_KNOTS = 32  # up to this many knots an input, ``_count_knots`` compares them one by one


def _count_knots(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """How many of its input's knots lie at or below each x (N, I) (NaN: none), ``knots`` knot-major (M, I), sorted.
    Up to ``_COUNT_LOOP_KNOTS`` knots, one compare-and-add pass a knot into 8-bit counts (12 knots, d 384, 2048
    tokens, 2-core Zen 5: 3.1 ms against 9.3 ms comparing all at once into an (N, I, M) mask and summing it, 8.5 ms
    by ``torch.searchsorted``); more, a binary search an element."""
    if knots.shape[0] > _COUNT_LOOP_KNOTS:
        return torch.searchsorted(knots.T.contiguous(), x.T.contiguous(), right=True).T.contiguous()
    count = (x >= knots[0]).to(torch.int8)
    for j in range(1, knots.shape[0]):
        count += x >= knots[j]
    return count


_POLYNOMIALS: dict[tuple[int, bool], list[list[float]]] = {}


def _local_polynomials(order: int, derivative: bool = False) -> list[list[float]]:
    """Coefficients ``[order+1][P]`` (lowest power first; plain floats, constants to a compiler) of the order+1
    uniform B-splines non-zero in an interval, as polynomials of the local coordinate t in [0, 1): de Boor's triangle
    with knot differences in units of h, run on polynomials. ``derivative``: their derivatives d/dt (P = order, or 1
    for order 0)."""
    key = (order, derivative)
    if key not in _POLYNOMIALS:  # a plain dict, not functools.cache: torch.compile traces through it silently
        _POLYNOMIALS[key] = _polynomials(order, derivative)
    return _POLYNOMIALS[key]


_MATRICES: dict[tuple[int, bool, torch.device, torch.dtype], torch.Tensor] = {}


def _local_matrix(order: int, derivative: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``_local_polynomials`` as a tensor on ``device``, made once per device and dtype: made from the host's list in
    every call, the eager lean path copied it to a GPU in each layer's forward and backward, a copy that waits for
    the device's queue to drain (six a B-spline FFN training step). In a compiled graph, a constant."""
    if torch.compiler.is_compiling():
        return torch.tensor(_local_polynomials(order, derivative), device=device, dtype=dtype)
    key = (order, derivative, torch.device(device), dtype)
    if key not in _MATRICES:
        _MATRICES[key] = torch.tensor(_local_polynomials(order, derivative), device=device, dtype=dtype)
    return _MATRICES[key]


def _polynomials(order: int, derivative: bool) -> list[list[float]]:
    def add(p: list[float], q: list[float]) -> list[float]:
        n = max(len(p), len(q))
        return [(p[i] if i < len(p) else 0.0) + (q[i] if i < len(q) else 0.0) for i in range(n)]

    def mul(p: list[float], q: list[float]) -> list[float]:
        out = [0.0] * (len(p) + len(q) - 1)
        for i, a in enumerate(p):
            for j, b in enumerate(q):
                out[i + j] += a * b
        return out

    values = [[1.0]]  # polynomials in t, lowest power first
    for j in range(1, order + 1):
        saved, nxt = [0.0], []
        for r in range(j):
            temp = [c / j for c in values[r]]
            nxt.append(add(saved, mul([r + 1.0, -1.0], temp)))  # (r + 1 - t) * temp
            saved = mul([j - r - 1.0, 1.0], temp)  # (t + j - r - 1) * temp
        nxt.append(saved)
        values = nxt
    if derivative:
        values = [[i * c for i, c in enumerate(v)][1:] or [0.0] for v in values]
    width = max(len(v) for v in values)
    return [v + [0.0] * (width - len(v)) for v in values]


def _poly(coeffs: list[float], t: torch.Tensor) -> torch.Tensor:
    """sum_p coeffs[p] t^p by Horner's rule, skipping zero terms (a compiler sees only the operations needed)."""
    nonzero = [p for p, c in enumerate(coeffs) if c != 0]
    if not nonzero:
        return torch.zeros_like(t)
    lo, hi = nonzero[0], nonzero[-1]
    value = t * coeffs[hi] if hi > lo else torch.full_like(t, coeffs[hi])
    for p in range(hi - 1, lo - 1, -1):
        value = value + coeffs[p] if coeffs[p] != 0 else value
        if p > lo:
            value = value * t
    for _ in range(lo):
        value = value * t
    return value


_MISS = object()  # nothing cached for the grid as it is now (``BSplinePaths._grid_cached``)


class BSplinePaths:
    """The fast paths of ``BSplineBasis``, which provides ``grid`` (I, M), ``grid_size``, ``spline_order``,
    ``n_basis``, ``fit_grid_to`` and the reference ``forward``. Every verdict and table on the grid is cached per grid
    tensor and version (``_grid_cached``): a grid update writes it in place, a grid extension replaces it."""

    # -- the checks kept current: whatever replaces or writes the grid tensor refreshes them -------------------------
    def refresh_checks(self) -> None:
        """Whether the grid is uniform, checked now for the grid tensor in place (what ``fused_state`` reads inside a
        compiled graph, which cannot read values back); ``form_version`` moved (``fused_form``, the grid's size)."""
        self.form_version += 1
        if not (self.grid.is_meta or is_fake(self.grid)):  # no values to read: no verdict (the reference path)
            self._uniform()

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        out = super()._apply(fn, recurse)
        self.refresh_checks()  # .to() and the like make a new grid tensor: its check, for a compiled graph
        return out

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_checks()

    # -- lean path (layers/lean.py) ---------------------------------------------------------------------------------
    # On a uniform knot vector (per input: start t_0, step h) only k+1 splines are non-zero at x: with s = (x - t_0)/h,
    # interval m = floor(s) and t = s - m they follow de Boor's local triangle (The NURBS Book, A2.2), whose knot
    # differences are whole multiples of h. They are scattered into the (N, B, I) features at m-k..m. On an adapted
    # (non-uniform) grid each interval's k+1 splines are polynomials of its own local coordinate, tabled once per grid
    # (``_piece_tables``; ``_piece_values``), slopes included; the fused mode compiles the recursion elementwise with
    # its slopes instead (``_knot_terms``), and a compiled model's graph takes the reference, which it fuses itself.
    def _uniform(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(t0, h) per input when every knot step is equal, else None. Cached per grid tensor and version: the check
        reads a value back from the device, which must not happen on every forward. Eagerly a cached verdict is read
        here; the check itself runs outside any compiled graph (``_check_uniform``). Behind ``torch.compiler.disable``
        the cached read paid the wrapper on every call (two an eager B-spline FFN call; ~2.5 us each, 2-core CPU)."""
        if not torch.compiler.is_compiling():
            cached = self._grid_cached("_uniform_cache")
            if cached is not _MISS:
                return cached
        return self._check_uniform()

    def _grid_cached(self, attr: str) -> Any:
        """What ``_grid_cache`` stored under ``attr`` for the grid tensor as it is now (the same tensor, unwritten
        since), else ``_MISS``."""
        grid, cache = self.grid, getattr(self, attr, None)
        return cache[2] if cache is not None and cache[0] is grid and cache[1] == grid._version else _MISS

    def _grid_cache(self, attr: str, value: Any) -> Any:
        """``value`` stored under ``attr`` for the grid tensor as it is now, and returned. The entry holds the grid,
        so its identity stays unique while it is cached."""
        setattr(self, attr, (self.grid, self.grid._version, value))
        return value

    @torch.compiler.disable
    def _check_uniform(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The check, outside any compiled graph (it reads a value back), and its verdict cached; a verdict already
        cached for this grid is returned as it is (a call from inside a graph reads the cache here)."""
        cached = self._grid_cached("_uniform_cache")
        if cached is not _MISS:
            return cached
        result = None
        if self.spline_order >= 1:
            steps = self.grid[:, 1:] - self.grid[:, :-1]  # (I, G+2k)
            if torch.allclose(steps, steps[:, :1].expand_as(steps), rtol=1e-5, atol=0):
                result = (self.grid[:, 0].clone(), steps.mean(dim=1))  # (I,), (I,)
        return self._grid_cache("_uniform_cache", result)

    def _traced_uniform(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``_uniform`` inside a compiled graph, which reads no values back: the last eager check's verdict and (t0, h)
        where it was made for this very grid tensor, else None (a grid replaced since, by a loader that sets buffers
        say: the reference path, correct and slower). The graph checks that the grid still fits them (written in
        place since, it raises). (t0, h) as the check made them, graph inputs: computed in the graph from the grid,
        the compiler folded that into the fused loops, and the B-spline FFN step took 1.51 against 1.04x the MLP's
        (d 128, 1024 tokens, fp32)."""
        cache = getattr(self, "_uniform_cache", None)
        if cache is None or cache[0] is not self.grid or cache[2] is None:
            return None
        t0, h = cache[2]
        steps = self.grid[:, 1:] - self.grid[:, :-1]  # (I, G+2k)
        first = steps[:, :1]
        fits = (((steps - first).abs() <= 1e-5 * first.abs()).all() & (self.grid[:, 0] == t0).all()
                & ((first[:, 0] - h).abs() <= 2e-5 * h.abs()).all())
        torch._assert_async(fits, "B-spline grid written in place since its last check; call "
                                  "kanformer.layers.refresh_checks(model) after writing grids by other means than "
                                  "update_grid / extend_grid / load_state_dict")
        return t0, h

    def _uniform_now(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._traced_uniform() if torch.compiler.is_compiling() else self._uniform()

    def _interval(self, x: torch.Tensor, t0: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
        """Interval index m (0 where outside the extended grid), local coordinate t, and the inside mask."""
        s = (x - t0.to(x.dtype)) / h.to(x.dtype)  # (N, I)
        m = torch.floor(s)
        inside = (m >= 0) & (m < self.grid_size + 2 * self.spline_order)  # NaN: outside
        m = torch.where(inside, m, torch.zeros_like(m))
        return m, s - m, inside

    def _local_values(self, t: torch.Tensor, order: int, derivative: bool = False) -> torch.Tensor:
        """The order+1 splines non-zero in an interval (value r is spline m - order + r) at local coordinate t,
        ``(order+1, N, I)``: fixed polynomials of t (``_local_polynomials``), so one small matmul with the powers of
        t; with ``derivative`` their derivatives d/dt (divide by h for d/dx)."""
        coef = _local_matrix(order, derivative, t.device, t.dtype)  # (order+1, P)
        powers = t.new_empty(coef.shape[1], *t.shape)  # (P, N, I): 1, t, t^2, ...
        powers[0] = 1
        for p in range(1, coef.shape[1]):
            torch.mul(powers[p - 1], t, out=powers[p])
        return (coef @ powers.view(coef.shape[1], -1)).view(coef.shape[0], *t.shape)

    def triton_params(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """(t0, 1/h, k) for the fused Triton kernels (layers/triton_kan.py), or None on a non-uniform grid."""
        uniform = self._uniform_now()
        return None if uniform is None else (uniform[0], self._inverse_step(uniform[1]), self.spline_order)

    # The fused mode compiles elementwise forms instead: spline j at x is local piece k - (m - j) of the k+1 above
    # (zero for any other interval, NaN included), one expression per (token, input) and spline, value and slope
    # together, which a compiler turns into a single vectorised loop (no scatter): the k+1 polynomials are the same
    # for every j, written once, and each spline costs k+1 selects. (The cardinal spline folded about its centre,
    # evaluated per j, cost 2.4x the operations: the B-spline layer's backward graph took 0.85 against 0.71 ms at 1024
    # tokens, 128 -> 57.)
    def fused_state(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(t0, 1/h) per input for ``fused_terms``, each (I,); on an adapted (non-uniform) grid the knot tables
        (``_knot_tables``: (M, I) and (R, I)). Inside a compiled model's graph, None on a non-uniform grid: the
        reference serves it there, which the model's compiler fuses itself."""
        uniform = self._uniform_now()
        if uniform is None:
            return None if torch.compiler.is_compiling() else self._knot_state()
        return uniform[0], self._inverse_step(uniform[1])

    def fused_form(self) -> str:
        """"knots" on an adapted grid (``fused_state``'s knot tables, graphs of their own), "" on a uniform one: a grid
        update changes it in place (a grid extension, the configuration too). A grid without values (meta, fake): its
        form as built, the uniform one's. Cached per grid tensor and version, as the uniform check is: asked in every
        fused call (the compiled copies' tags), where the meta and fake checks cost ~4 us a layer."""
        cached = self._grid_cached("_form_cache")
        if cached is not _MISS:
            return cached
        grid = self.grid
        if grid.is_meta or is_fake(grid):
            return "" if self.spline_order >= 1 else "knots"
        return self._grid_cache("_form_cache", "" if self._uniform() is not None else "knots")

    def fitted_form(self) -> str:
        return "knots"  # quantiles of data make unequal steps

    @torch.no_grad()
    def take_form(self, form: str) -> None:
        """"knots": the grid fitted to a standard normal sample (unequal steps). A stand-in is built uniform (or, of
        order 0, on its knots already), the form it keeps for ""."""
        if form == "knots" and self.fused_form() != form:
            sample = torch.randn(256, self.in_features, generator=torch.Generator().manual_seed(0))
            self.fit_grid_to(sample.to(self.grid.device))
        if form != self.fused_form():
            raise ValueError(f"this B-spline basis (order {self.spline_order}, its form {self.fused_form()!r}) cannot "
                             f"take the fused form {form!r}: the forms are 'knots' (an adapted grid) and '' (a uniform "
                             "grid, as built)")

    def _knot_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``_knot_tables`` of the grid, made once per grid tensor and version (a grid update writes it in place)."""
        cached = self._grid_cached("_knot_cache")
        if cached is _MISS:
            with torch.no_grad():
                cached = self._grid_cache("_knot_cache", _knot_tables(self.grid, self.spline_order))
        return cached

    def _pieces(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The knots knot-major (M, I), and ``_piece_tables`` (the left knots and inverse widths; the values' and
        slopes' coefficients, and the values' alone, the rows a forward reads) in ``dtype``, made once per grid tensor
        and version and dtype."""
        cached = self._grid_cached("_piece_cache")
        if cached is _MISS:
            cached = self._grid_cache("_piece_cache", {})
        if dtype not in cached:
            with torch.no_grad():
                if self.grid.dtype not in cached:
                    head, coef = _piece_tables(self.grid, self.spline_order)
                    values = coef[:, : self.spline_order + 1].contiguous()
                    cached[self.grid.dtype] = (self.grid.T.contiguous(), head, coef, values)
                cached[dtype] = tuple(t.to(dtype) for t in cached[self.grid.dtype])
        return cached[dtype]

    def _piece_values(self, x: torch.Tensor, values: bool = True, slopes: bool = False
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """On an adapted grid, the k + 1 splines not zero at each x (N, I) and / or their derivatives, each (N, k+1,
        I) (None where not asked for), and their indices into the B splines (N, k+1, I): x's knot interval m (its
        input's knots at or below it, counted: ``_count_knots``), its rows of ``_piece_tables`` (``index_select`` of
        whole rows: indexed by the (N, I) row numbers, the same lookup took ~3x as long, 10 against 3.2 - 3.6 ms for
        the coefficients at d 384, 2048 tokens), and one batched product of each element's coefficients with the
        powers of its local coordinate, values and slopes together (by Horner's rule on the strided coefficients,
        the values alone took 1.6 - 2.4x the product's time); zero outside the grid. The reference recursion
        evaluates all G + 2k splines of every order, and under autograd (its backward without slopes) keeps each
        order's."""
        knots, head, both, first = self._pieces(x.dtype)
        k, n_int = self.spline_order, knots.shape[0] - 1
        count = _count_knots(x, knots)  # (N, I): t_m <= x < t_m+1 for m = count - 1
        inside = ((count >= 1) & (count <= n_int)).view(-1)
        m = (count.long() - 1).clamp_(0, n_int - 1)
        rows = (m + torch.arange(0, m.shape[1] * n_int, n_int, device=x.device)).view(-1)  # (N I,): i (M-1) + m
        h = head.index_select(0, rows)  # (N I, 2)
        t = torch.where(inside, (x.reshape(-1) - h[:, 0]) * h[:, 1], 0)  # in [0, 1); outside (NaN too): 0
        powers = [inside.to(t.dtype), t][: k + 1]  # 1, t, t^2, ...; outside the grid all zero
        while len(powers) < k + 1:
            powers.append(powers[-1] * t)
        powers = torch.stack(powers, dim=1)  # (N I, k+1)
        coef = (both if slopes else first).index_select(0, rows)  # (N I, [2] (k+1), k+1)
        local = torch.bmm(coef, powers.unsqueeze(-1)).view(*x.shape, -1).transpose(1, 2)  # (N, [2] (k+1), I)
        return (local[:, : k + 1] if values else None), (local[:, k + 1:] if slopes else None), self._spline_indices(m)

    def _inverse_step(self, h: torch.Tensor) -> torch.Tensor:
        """1/h, computed once per step tensor the uniform check made (eagerly a division on every call, two kernel
        launches a layer on a GPU), in a compiled graph by the graph."""
        if torch.compiler.is_compiling():
            return 1.0 / h
        cache = getattr(self, "_inverse_cache", None)
        if cache is None or cache[0] is not h:
            cache = self._inverse_cache = (h, 1.0 / h)
        return cache[1]

    def fused_terms(self, x: torch.Tensor, t0: torch.Tensor, inv_h: torch.Tensor
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """On a uniform grid (``t0``, ``inv_h`` per input, (I,)): the interval, the k+1 local polynomials and their
        slopes (in units of x) once, then each spline's k+1 selects; on an adapted one (the knot tables, 2-d),
        ``_knot_terms``. Written per spline (the polynomials inside the loop), the compiled C++ loops came out
        identical after the compiler's common-subexpression elimination, but dynamo first traced ~4x the bytecode
        (61,862 against 15,974 steps for the FFN's four graphs): a fresh process's first B-spline FFN step on a warm
        compiler cache, mostly that tracing, took 9.4 - 10.0 s against 6.0 - 7.9 s now (d 384, 2048 tokens), 5.7 - 6.1
        against 2.5 - 3.6 s (d 128); a cold compile (d 128) 53.8 against 46.1 s."""
        if t0.dim() == 2:
            return self._knot_terms(x, t0, inv_h)
        inv_h = inv_h.to(x.dtype)
        s = (x - t0.to(x.dtype)) * inv_h  # (N, I): position in units of h from the first knot
        m = torch.floor(s)  # the interval; spline j is its local piece k - (m - j), or zero
        t = s - m
        k = self.spline_order
        values = [_poly(c, t) for c in _local_polynomials(k)]
        slopes = [_poly(c, t) * inv_h for c in _local_polynomials(k, derivative=True)]
        # m - j == k - r written as a comparison of m with a constant, which the splines share: B + k compares a pass
        # instead of B * (k+1) (a subtraction and k+1 compares each)
        at = [m == float(c) for c in range(self.n_basis + k)]
        zero = torch.zeros_like(t)
        out = []
        for j in range(self.n_basis):
            value, slope = zero, zero
            for r in range(k + 1):
                value = torch.where(at[j + k - r], values[r], value)
                slope = torch.where(at[j + k - r], slopes[r], slope)
            out.append((value, slope))
        return out

    def _knot_terms(self, x: torch.Tensor, knots: torch.Tensor, inv_spans: torch.Tensor
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every spline and its slope on an adapted grid, by the Cox-de Boor recursion written elementwise (the
        reference's, with its divisions by knot spans as products with their inverses): ``knots`` (M, I) and
        ``inv_spans`` (R, I) from ``_knot_tables``, rows per knot, each contiguous over the inputs. Order 0 is the
        indicator of x's knot interval (zero outside the grid, NaN included); order p mixes neighbours, B_j,p = (x -
        t_j) / (t_j+p - t_j) B_j,p-1 + (t_j+p+1 - x) / (t_j+p+1 - t_j+1) B_j+1,p-1; the slope of spline j is
        k (B_j,k-1 / (t_j+k - t_j) - B_j+1,k-1 / (t_j+k+1 - t_j+1)). All G + 2k of order 0 are made, not the
        k + 1 non-zero at x (no gather of each element's knots in a vector loop): about twice the uniform form's
        operations an element, in the same single loop."""
        knots, inv_spans = knots.to(x.dtype), inv_spans.to(x.dtype)
        m, k = knots.shape[0], self.spline_order
        d = [x - knots[j] for j in range(m)]
        at_or_above = [d[j] >= 0 for j in range(m)]  # NaN: False
        bases = [(at_or_above[j] & ~at_or_above[j + 1]).to(x.dtype) for j in range(m - 1)]
        lower, row = bases, 0
        for p in range(1, k + 1):
            inv = [inv_spans[row + j] for j in range(m - p)]  # 1 / (t_j+p - t_j)
            row += m - p
            lower = bases
            bases = [d[j] * inv[j] * lower[j] - d[j + p + 1] * inv[j + 1] * lower[j + 1] for j in range(m - 1 - p)]
        if not k:
            return [(b, torch.zeros_like(b)) for b in bases]
        # the last order's inverse spans (inv) and lower-order splines (lower) give the slopes
        return [(bases[j], k * (inv[j] * lower[j] - inv[j + 1] * lower[j + 1])) for j in range(m - 1 - k)]

    def _local(self, x: torch.Tensor, values: bool, slopes: bool
               ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor] | None:
        """Eagerly, the k + 1 splines not zero at each x and / or their slopes in x, each (N, k+1, I) (None where not
        asked for), and their indices into the B splines (N, k+1, I); x's interval found once for both. None inside a
        compiled graph on an adapted grid (the reference serves there)."""
        uniform = self._uniform()
        if uniform is None:
            return None if torch.compiler.is_compiling() else self._piece_values(x, values, slopes)
        k, b = self.spline_order, self.n_basis
        m, t, inside = self._interval(x, *uniform)
        # local value r is spline m - k + r: zero unless that is one of the B real bases and x lies inside the grid
        masks = [inside & (m >= k - r) & (m < b + k - r) for r in range(k + 1)]
        out = []
        for wanted, derivative in ((values, False), (slopes, True)):
            local = self._local_values(t, k, derivative) if wanted else None  # (k+1, N, I)
            if local is not None:
                for r in range(k + 1):
                    local[r].mul_(masks[r])
                if derivative:  # d/dt -> d/dx
                    local.mul_(self._inverse_step(uniform[1]).to(x.dtype))
                local = local.transpose(0, 1)
            out.append(local)
        return out[0], out[1], self._spline_indices(m)

    def _spline_indices(self, m: torch.Tensor) -> torch.Tensor:
        """The indices m - k .. m of the splines not zero in interval m (N, I), clamped to the B real ones (those
        outside carry zero values): (N, k+1, I)."""
        k = self.spline_order
        return (m.long().unsqueeze(1) + torch.arange(-k, 1, device=m.device)[:, None]).clamp_(0, self.n_basis - 1)

    def _scatter(self, values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(N, k+1, I) local values -> the (N, B, I) features; masked (zero) values land on clamped duplicate slots,
        hence an add."""
        return values.new_zeros(values.shape[0], self.n_basis, values.shape[2]).scatter_add_(1, idx, values)

    def lean_features(self, x: torch.Tensor) -> torch.Tensor:
        local = self._local(x, values=True, slopes=False)
        if local is None:  # inside a compiled model's graph on an adapted grid: the reference, which it fuses
            return self(x).transpose(1, 2)  # (N, B, I)
        values, _, idx = local
        return self._scatter(values, idx)

    def lean_input_grad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        local = self._local(x, values=False, slopes=True)
        if local is None:
            return None  # autograd through the reference (``lean_features``)
        _, slopes, idx = local
        return (g.gather(1, idx) * slopes).sum(1)

    def lean_features_and_input_grad(self, x: torch.Tensor, g: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        local = self._local(x, values=True, slopes=True)
        if local is None:
            return None
        values, slopes, idx = local
        return self._scatter(values, idx), (g.gather(1, idx) * slopes).sum(1)

