"""The memory-lean KAN layer path: an autograd Function that saves only the layer input and recomputes the basis in
the backward pass, so no (tokens, in, n_basis) tensor lives between forward and backward.

Legend: N tokens, I inputs, O outputs, B basis functions per input.

    forward:  F = [basis(x), silu(x)] (N, (B+1)*I);  y = F @ [C, W]^T + bias          saves x (N, I) only
    backward: F recomputed;  d[C, W] = gy^T F;  dF = gy @ [C, W];  dx = sum_b dF_b * f_b'(x)

Here the features are laid out basis-major, (N, B, I): each basis function's values for all inputs form one
contiguous row segment, so a basis is evaluated with whole-row vector operations instead of stride-B writes; the
SiLU base branch, where the layer has one, is appended as basis B, so one matmul serves both branches. The
coefficients are permuted (and the base weights appended) to match: (O, I, B) -> (O, (B+1)*I), a small copy per
call. In the fused mode the forward and the backward of a layer are one compiled graph each.

A basis opts in by implementing ``lean_features(u) -> (N, B, I)`` (equal to its reference ``forward`` within dtype
tolerance) and, for speed, ``lean_input_grad(u, g) -> (N, I)`` (the analytic ``sum_b g[:, b] * f_b'(u)``, or None
to decline), and, where the two share work, ``lean_features_and_input_grad(u, g)`` (both from one pass, for the
backward). Without an analytic derivative the recomputed basis is differentiated by autograd inside the backward
(still lean: nothing was saved for it).
A basis with a pre-transform of its input (RBF's LayerNorm) gives it as ``lean_pre(x, *p, stats=None) -> (u, stats)``
with its parameters ``lean_pre_params()`` and the analytic ``lean_pre_backward(x, stats, g_u, *p) -> (g_x, *g_p)``:
it runs inside the layer's forward and backward (recomputed there, in the same compiled graph), so u is not saved
either; only its per-token ``stats`` (RBF: mean and 1 / std, 8 bytes a token) are, so the backward does not reduce
over the inputs again. In the fused mode a basis may keep a few per-input values of its per-function form for the
backward beside them (``fused_kept``: RBF's exponential of the recurrence on a CPU, 4 bytes an input); a layer's
forward returns both as one tuple, the statistics first (``_split_saved``).

Which path runs (reference, eager lean, fused, Triton) is chosen in ``dispatch.py``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from .dispatch import _TRITON, _fused, _kernel_fn, get_kernel, per_token, prepare_products, realized, scoped_kernel
from .gemm import aligned_pad, mm, native_low_precision
from .triton_kan import bspline_kan, triton_available
from .triton_kan import rational_backward as triton_rational_backward
from .triton_kan import rational_forward as triton_rational_forward
from .vecmath import loop_sigmoid

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _silu(x: torch.Tensor) -> torch.Tensor:
    """silu(x) written with the sigmoid its gradient (``_silu_grad``) uses, so a compiled backward that recomputes
    the base branch and differentiates it evaluates one exponential and one division a pass, not two. In a compiled
    CPU loop the exponential is inline arithmetic (vecmath.py)."""
    return x * loop_sigmoid(x)


def _silu_grad(x: torch.Tensor) -> torch.Tensor:
    s = loop_sigmoid(x)
    return s * (1 + x * (1 - s))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _terms(basis: Any, u: torch.Tensor, state: tuple[torch.Tensor, ...], g: torch.Tensor | None = None,
           start: torch.Tensor | None = None, kept: tuple[torch.Tensor, ...] = ()
           ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The basis' per-function form (``fused_terms(u, *state)``: (f_j(u), f_j'(u)) for each j, each (N, I); a slope
    None for a constant function, whose gradient slot is then not read): the values f_j(u), and with ``g`` (N, B, I)
    also ``start + sum_j g_j f_j'(u)`` (``start``: a gradient already made, None for none). Written as one expression
    per function, so a compiler evaluates each function once for its value and its slope, in one loop over (N, I) with
    the values stored as they come (the backward's recomputed features and input gradient in one pass). The sum ends on
    the last function's term, which reads ``g``; why that order matters: ``_input_grads``. ``kept``: the values
    the forward kept (``fused_kept``), () where it kept none."""
    values, acc = [], start
    terms = basis.fused_terms(u, *state, kept=kept) if kept else basis.fused_terms(u, *state)
    for j, (value, slope) in enumerate(terms):
        values.append(value)
        if g is not None and slope is not None:
            acc = g[:, j] * slope if acc is None else acc + g[:, j] * slope
    return values, (torch.zeros_like(u) if g is not None and acc is None else acc)


def terms_input_grad(basis: Any, u: torch.Tensor, g: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
    """``sum_j g[:, j] f_j'(u)`` from the basis' ``fused_terms`` (a sum of (N, I) terms: eager-friendly too)."""
    return _terms(basis, u, state, g)[1]


def _low(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in _LOW_PRECISION else t  # bases evaluate low-precision inputs in fp32


def _low_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ``_low`` gives a tensor of ``dtype``."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _features(basis: Any, u: torch.Tensor, x: torch.Tensor | None, state: tuple[torch.Tensor, ...] | None,
              dtype: torch.dtype, values: list[torch.Tensor] | torch.Tensor | None = None,
              kept: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """(N, B, I) basis values in ``dtype``, with ``silu(x)`` appended as basis B when ``x`` is given (the SiLU base
    branch, so one matmul serves both branches). ``state`` (not None): from the basis' per-function form (``_terms``);
    ``values``: already evaluated (with ``state`` the per-function values, without it the (N, B, I) features of
    ``lean_features_and_input_grad``); ``kept``: the basis' kept values (``fused_kept``). Low-precision inputs are
    evaluated in fp32 (as the reference does)."""
    uc = _low(u)
    if state is not None:
        values = values if values is not None else _terms(basis, uc, state, kept=kept)[0]
        if x is not None:
            values = [*values, _silu(x.to(uc.dtype))]
        # one write of each value into its slot, in the matmul's dtype (stacked first, a bf16 matmul's features took
        # an fp32 tensor and a pass to cast it)
        return torch.stack([v.to(dtype) for v in values], dim=1)
    feats = values if values is not None else basis.lean_features(uc)
    if x is not None:
        feats = torch.cat([feats, _silu(x.to(feats.dtype)).unsqueeze(1)], dim=1)
    return feats.to(dtype)


def _input_grads(basis: Any, u: torch.Tensor, x: torch.Tensor | None, g: torch.Tensor,
                 state: tuple[torch.Tensor, ...] | None, analytic: bool, fold: bool = False, features: bool = False,
                 kept: tuple[torch.Tensor, ...] = ()
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor] | torch.Tensor | None]:
    """From dL/dfeatures ``g`` (N, B[+1], I): dL/du through the basis (the analytic ``sum_b g_b f_b'(u)``, None where
    the basis has none or ``analytic`` is off) and dL/dx through the base branch (None without one). Third, the basis
    values of the same pass (for ``_features``), else None: with a per-function form (``state``) always (a compiler
    drops them where unused); eagerly where the caller will recompute the features (``features``) and the basis makes
    them with its input gradient in one pass (``lean_features_and_input_grad``).

    ``fold`` (u is x itself: no pre-transform between them): with a per-function form, the base branch's gradient is
    made first and the basis' terms are added to it, so the first result is the whole dL/dx and the second None. Added
    the other way, last (``dL/dx = base + basis``), the compiled CPU loop's final sum read two fp32 partial sums the
    compiler had stored apart (each too large to inline), and a loop with one body that touches no bf16 value is
    vectorised at fp32's width: a bf16 backward's loads and stores of the features and their gradients ran at half
    width, masked (the layer-1 loop of a d 384 B-spline FFN, 2048 tokens, bf16 autocast, 2-core Zen 5: 2.1 - 2.6 ms,
    1.2 - 1.3 ms ending on a term that reads ``g``)."""
    uc = _low(u)
    g_basis = g[:, : basis.n_basis].to(uc.dtype)
    g_x = None
    if x is not None:
        xc = _low(x)
        g_x = g[:, -1].to(xc.dtype) * _silu_grad(xc)
    g_u, values = None, None
    if analytic and state is not None:
        start = g_x if fold else None
        values, g_u = _terms(basis, uc, state, g_basis, start, kept)
        if start is not None:
            g_x = None
    elif analytic:
        both = basis.lean_features_and_input_grad(uc, g_basis) if features else None
        values, g_u = both if both is not None else (None, basis.lean_input_grad(uc, g_basis))  # g_u None: declined
    return g_u, g_x, values


def _pre(basis: Any, x: torch.Tensor, pre: tuple[torch.Tensor, ...] | None,
         stats: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The basis input u: the layer input through the basis' pre-transform (``lean_pre``; ``stats``: its per-token
    statistics from the forward), or x itself; and the statistics."""
    return (x, ()) if pre is None else basis.lean_pre(_low(x), *pre, stats=stats)


def _split_saved(basis: Any, pre: tuple[torch.Tensor, ...] | None, saved: tuple[torch.Tensor, ...]
                 ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """What a layer's forward kept beside its input (``_lean_forward``'s second result) as (the pre-transform's
    per-token statistics, the basis' kept values). A basis that keeps none has all of it as its statistics, however
    many its pre-transform makes; one that keeps some says how many statistics come first (``lean_pre_stats``)."""
    if not basis.has_fused_kept:
        return saved, ()
    n = 0 if pre is None else basis.lean_pre_stats
    return saved[:n], saved[n:]


def _basis_major(coef: torch.Tensor, base: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """(O, I, B) [and the base weights (O, I)] -> (O, (B[+1]) * I), matching the (N, B[+1], I) feature layout."""
    w = coef.to(dtype).permute(0, 2, 1)  # (O, B, I)
    if base is not None:
        w = torch.cat([w, base.to(dtype).unsqueeze(1)], dim=1)
    return w.reshape(coef.shape[0], -1)


def _feature_major(coef: torch.Tensor, base: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``_basis_major`` transposed and laid out row-major, ((B[+1]) * I, O): the first operand of the input-major
    ``W^T @ gy^T``. oneDNN's product copies a transposed first operand to row-major before it multiplies (each call,
    outside the compiled graph's loops); made so here, the layout is written by the copy that gathers the weights."""
    w = coef.to(dtype).permute(2, 1, 0)  # (B, I, O)
    if base is not None:
        w = torch.cat([w, base.to(dtype).T.unsqueeze(0)])
    return w.reshape(-1, coef.shape[0])


def _input_pad(basis: Any, per_input: int, width: int, state: tuple[torch.Tensor, ...] | None, dtype: torch.dtype,
               device: torch.device) -> int:
    """Zero inputs appended to the layer (so to each basis' segment of the features) where the features' width
    K = (B[+1]) * I is not a multiple of 4: I + pad becomes a multiple of 16. CPU BLAS (MKL) ran the backward's
    ``gy @ W`` ~40 % slower at B-spline's parameter-matched K = 9 * 171 = 1539 than at 9 * 176 = 1584 (2048 tokens,
    d 384: 17.9 against 12.9 ms; 9 * 172 = 1548: 17.1 ms), and at 1540 (Chebyshev's 5 * 308) as fast as at 1600;
    interleaved FFN steps, B-spline d 384: 1.22 against 1.29x the MLP. The input is padded on the eager side of the
    compiled graphs (a pad inside them made the compiler's feature loop masked and scalar), and so is the state; the
    two-layer path pads the weights inside its graphs (layers/lean_ffn.py). Padding applies in the per-function form
    (``state``: elementwise terms, finite at zero inputs and zero state) or where the basis' lean forms work on each
    input alone (``lean_paddable``: Chebyshev, Jacobi). A pre-transform (RBF's LayerNorm) gets the padded input
    and its per-input parameters padded with zeros, and reduces over the basis' ``in_features`` only (the Basis
    contract). The padded inputs' weights are zero, so they add nothing; their gradients are dropped. Not for a bf16 or
    fp16 matmul on a CPU with native products for it (``dtype``: the matmul's), whose BLAS measured no such penalty
    (the backward's and forward's three bf16 products at K = 1539 against 1584: 18.9 against 18.9 ms; 3078 against
    3168, d 768 / 4096 tokens: 151.7 against 153.7 ms), so padding only added work: same-process A/Bs at d 384, bf16
    autocast, padded against not, in both orders: B-spline 1.14 / 1.14 against 1.12 / 1.11x the MLP, RBF 1.26 / 1.22
    against 1.24 / 1.20, the wavelet 1.48 / 1.48 against 1.40 / 1.41. Where the CPU has none, ``gemm.mm`` takes the
    product in fp32 on the rounded operands, and the fp32 rule holds: bf16 autocast on an AVX2-only Zen 3, FFN steps
    padded / unpadded in alternating turns of one process (median of 8 turns each), d 768 / 4096 tokens: RBF 0.93,
    B-spline 0.95, MultKAN 0.94 (every RBF and B-spline turn faster); d 384 / 2048 tokens, two runs: RBF 0.96 / 0.94,
    B-spline 0.97 / 1.00, MultKAN 1.04 / 0.99, the wavelet 1.03 / 1.00."""
    if (state is None and not basis.lean_paddable) or not _fused():
        return 0
    if _aligned_rows(device):
        return aligned_pad(width)
    if dtype in _LOW_PRECISION and device.type == "cpu" and native_low_precision(dtype):
        return 0  # where the CPU has no such products, gemm.mm takes them in fp32: the fp32 rule
    pad = -width % 16
    # at most 6.25% more inputs: at the demo's widths (B-spline 57 -> 64, Chebyshev 103 -> 112; 1024 tokens: +12%,
    # +9%) the copies and the extra work cost more than the BLAS gained (interleaved A/B: 1.64 against 1.52x, 1.25
    # against 1.21x); at +3.5% (wavelet 170 -> 176, d 384), +3.2% (RBF 341 -> 352, d 768) and +5.1% (MultKAN 137 -> 144,
    # d 384) padding won: 1.34 against 1.39x, 1.20 against 1.32x, and (same-process A/Bs, fp32) 1.08 / 1.19 / 1.15
    # against 1.13 / 1.24 / 1.20
    return pad if per_input * width % 4 and pad * 16 <= width else 0


def _pad_inputs(pad: int, x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None,
                state: tuple[torch.Tensor, ...] | None, pre: tuple[torch.Tensor, ...] | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...] | None,
                           tuple[torch.Tensor, ...] | None]:
    """x (N, I), coef (O, I, B), base (O, I), and the per-input tensors (..., I) of ``state`` and ``pre`` with
    ``pad`` zero inputs."""
    if not pad:
        return x, coef, base, state, pre
    i = coef.shape[1]
    coef, base = _pad_weights(pad, coef, base)
    return F.pad(x, (0, pad)), coef, base, _pad_per_input(pad, i, state, keep=True), _pad_per_input(pad, i, pre)


def _pad_weights(pad: int, coef: torch.Tensor, base: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """coef (O, I, B) and base (O, I) with ``pad`` zero inputs: eagerly on the per-layer path (``_pad_inputs``);
    inside the two-layer path's compiled graphs, where the pad joins the copy that lays the weights out basis-major
    (``_basis_major``): no pass of its own, and no eager operator (on a GPU, two kernel launches a tensor)."""
    if not pad:
        return coef, base
    return F.pad(coef, (0, 0, 0, pad)), None if base is None else F.pad(base, (0, pad))


# padded copies of a basis' per-function state by the tensor they pad: the state (the B-spline's knot origin and
# inverse step per input) changes only when its grid does, so it is padded once, not on every call
_PADDED_STATE = WeakIdKeyDictionary()  # by identity: a tensor's == compares values


def _pad_per_input(pad: int, i: int, ts: tuple[torch.Tensor, ...] | None, keep: bool = False
                   ) -> tuple[torch.Tensor, ...] | None:
    """0-d tensors as they are, per-input tensors (..., I) padded along their last dim (the ``fused_state`` /
    ``lean_pre`` contract). ``keep``: each padded copy kept for the next call with the same tensor, unchanged since (its
    version), for tensors that do not change from call to call (a basis' fused state)."""
    if ts is None or not pad:
        return ts
    if any(t.dim() and t.shape[-1] != i for t in ts):
        raise ValueError(f"a basis' fused state and pre-transform parameters must be 0-d or per-input (..., {i}) "
                         f"to be padded, got shapes {[tuple(t.shape) for t in ts]}")

    def padded(t: torch.Tensor) -> torch.Tensor:
        if not t.dim():
            return t
        if not keep or torch.compiler.is_compiling() or t.is_inference():  # an inference tensor has no version
            return F.pad(t, (0, pad))
        kept = _PADDED_STATE.get(t)
        if kept is None or kept[0] != (t._version, pad):
            kept = _PADDED_STATE[t] = ((t._version, pad), F.pad(t, (0, pad)))
        return kept[1]

    return tuple(padded(t) for t in ts)


def _unpad(pad: int, i: int, g_coef: torch.Tensor | None, g_base: torch.Tensor | None,
           g_pre: tuple[torch.Tensor, ...]
           ) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, ...]]:
    """The weight and pre-transform gradients of a layer's real inputs (``i`` of them), the ``pad`` inputs' dropped."""
    if not pad:
        return g_coef, g_base, g_pre
    g_coef, g_base = (None if g is None else g[:, :i] for g in (g_coef, g_base))
    return g_coef, g_base, tuple(g[..., :i] for g in g_pre)


def _fused_state(basis: Any) -> tuple[torch.Tensor, ...] | None:
    """The arguments of the basis' elementwise form in the fused mode, None where it has none (or does not apply)."""
    return basis.fused_state() if _fused() else None


def _lean_forward(basis: Any, x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None,
                  bias: torch.Tensor | None, state: tuple[torch.Tensor, ...] | None, dtype: torch.dtype,
                  pre: tuple[torch.Tensor, ...] | None, keep_pad: bool = False
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``y = F(u) @ W^T (+ bias)`` with u the pre-transformed input, and what the backward takes from the forward: the
    pre-transform's statistics, then the basis' kept values (``fused_kept``, with a per-function form). The whole
    layer, one compiled graph in the fused mode (pre-transform, features, weight layout and the matmul; one call per
    layer, so the per-call overhead is paid once). ``keep_pad``: y with the zero columns of a padded output width
    (``output_pad``) kept."""
    u, stats = _pre(basis, x, pre)
    kept = () if state is None else basis.fused_kept(_low(u), *state)
    feats = _features(basis, u, x if base is not None else None, state, dtype,
                      kept=kept).reshape(x.shape[0], -1)  # (N, B[+1]*I)
    o = coef.shape[0]
    pad = output_pad(o, x.device)
    w, b = _basis_major(coef, base, dtype), None if bias is None else bias.to(dtype)  # (O, B[+1]*I), (O,)
    if pad:  # zero rows of weights (a pad of nothing would copy them all the same)
        w, b = F.pad(w, (0, 0, 0, pad)), None if b is None else F.pad(b, (0, pad))
    y = mm(feats, w.T, b)  # (N, O + pad)
    return (y[:, :o].contiguous() if pad and not keep_pad else y), (*stats, *kept)


def output_pad(o: int, device: torch.device) -> int:
    """Zero output columns for a matmul-friendly width (rows of zeros in the weights, sliced off after): CPU BLAS
    (MKL) ran the parameter-matched width 171 ~25 % slower than 176; widths that are multiples of 4 (Chebyshev's 308
    against 320) measured no gain worth the copies. On CUDA, ``gemm.aligned_pad``."""
    if _aligned_rows(device):
        return aligned_pad(o)
    return -o % 16 if o % 4 else 0


def _aligned_rows(device: torch.device) -> bool:
    """Whether the layers' widths on ``device`` follow ``gemm.aligned_pad`` (CUDA) rather than the CPU BLAS' rules."""
    return device.type == "cuda"


def _lean_backward(basis: Any, x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None, gy: torch.Tensor,
                   state: tuple[torch.Tensor, ...] | None, dtype: torch.dtype, need_w: bool, analytic: bool,
                   pre: tuple[torch.Tensor, ...] | None, saved: tuple[torch.Tensor, ...], input_major: bool = False
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None,
                              tuple[torch.Tensor, ...], torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None]:
    """dL/dcoef, dL/dbase (when ``need_w``), dL/dx and dL/d(pre-transform parameters) from dL/dy, the pre-transform and
    the features recomputed; ``saved``: what the forward kept beside x (``_lean_forward``). ``gy`` may come at the
    forward's padded output width (``output_pad``; the two-layer path hands layer 1 its gradient so), its extra columns
    meeting zero rows of weights; on CUDA an unpadded one is padded here, so the products' rows are aligned
    (``gemm.aligned_pad``). Where the basis has no analytic derivative, dL/dx
    covers the base branch only (None without one), and the last result is dL/dfeatures of the basis (the caller
    differentiates the recomputed basis by autograd); else that is None. ``input_major`` (for the basis'
    ``lean_params_backward``): that result is the pair (dL/dfeatures of the basis (B, I, N), made so by the matmul
    itself; x transposed (I, N)), the compiler's tiled transpose (eagerly, the copy took 1.0 against 0.14 ms at 2048 x
    384). One compiled graph in the fused mode, where the input gradient comes first and the recomputed features are the
    values of the same pass."""
    n, i_in = x.shape
    o, _, b = coef.shape
    xl = _low(x)  # the pre-transform and its backward evaluate low-precision inputs in fp32
    stats, kept = _split_saved(basis, pre, saved)
    u, _ = _pre(basis, xl, pre, stats)
    xb = x if base is not None else None
    pad = output_pad(o, x.device) if gy.shape[1] == o and _aligned_rows(x.device) else 0
    if pad:  # the per-layer path's gradient, padded as the forward's output was
        gy = F.pad(gy, (0, pad))
    extra = gy.shape[1] - o  # zero rows of weights to gy's width (a zero pad would still copy)
    if input_major:  # the basis' part as (B*I, O) @ (O, N), its first operand row-major; the base branch's (N, I) apart
        w_t = _feature_major(coef, None, dtype)  # (B*I, O)
        g_basis = mm(F.pad(w_t, (0, extra)) if extra else w_t, gy.T).view(b, i_in, n)
        g_u, g_x, values = None, None, None
        if base is not None:
            w_base = F.pad(base.to(dtype), (0, 0, 0, extra)) if extra else base.to(dtype)
            g_x = _input_grads(basis, u, xb, mm(gy, w_base).view(n, 1, i_in), None, False)[1]
    else:
        w = _basis_major(coef, base, dtype)  # (O, B[+1]*I)
        g_feats = mm(gy, F.pad(w, (0, 0, 0, extra)) if extra else w).view(n, -1, i_in)  # (N, B[+1], I)
        g_basis = g_feats[:, :b]
        g_u, g_x, values = _input_grads(basis, u, xb, g_feats, state, analytic, fold=pre is None, features=need_w,
                                        kept=kept)
    g_pre: tuple[torch.Tensor, ...] = ()
    if g_u is not None:
        if pre is not None:
            g_u, *rest = basis.lean_pre_backward(xl, stats, g_u, *pre)
            g_pre = tuple(rest)
        g_x = g_u if g_x is None else g_x + g_u
    g_coef, g_base = None, None
    if need_w:
        feats = _features(basis, u, xb, state, dtype, values, kept).reshape(n, -1)  # recomputed (N, B[+1]*I)
        g_w = mm(gy.T, feats).view(gy.shape[1], -1, i_in)[:o]  # (O, B[+1], I)
        g_coef = g_w[:, :b].permute(0, 2, 1).contiguous().to(coef.dtype)
        if base is not None:
            g_base = g_w[:, b].to(base.dtype)
    if input_major:
        return g_coef, g_base, g_x, g_pre, (g_basis, x.t().contiguous())
    return g_coef, g_base, g_x, g_pre, g_basis if g_u is None else None


def _params_backward(basis: Any, x_t: torch.Tensor, g_t: torch.Tensor, *params: torch.Tensor
                     ) -> tuple[torch.Tensor, ...]:
    """dL/dx through the basis, input-major (I, N), and dL/d(its own parameters), from the basis' analytic
    ``lean_params_backward`` on the input-major ``x_t`` (I, N) and dL/dfeatures ``g_t`` (B, I, N) (one compiled loop
    in the fused mode)."""
    xl = _low(x_t)
    return tuple(basis.lean_params_backward(xl, g_t.to(xl.dtype), *(p.to(xl.dtype) for p in params))[:-1])


def input_major_backward(basis: Any, x_t: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None,
                         gy_t: torch.Tensor, dtype: torch.dtype, need_w: bool, own: tuple[torch.Tensor, ...]
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, ...]]:
    """A layer's backward for a basis with parameters of its own (``lean_params_backward``), input-major throughout:
    the input ``x_t`` (I, N) and dL/dy ``gy_t`` (O, N) come transposed, and dL/dx leaves so (I, N), which is the layer
    before's dL/dy as that layer takes it here (layers/lean_ffn.py chains two such layers with no transpose between
    them). ``coef`` and ``base`` may carry zero inputs past x_t's I (``_input_pad``). One matmul gives dL/dfeatures of
    the basis and of the base branch, ((B[+1]) * I, N); the basis' pass over each input's row
    (``lean_params_backward``) makes dL/dx from the base branch's share on, the parameter sums over tokens, and the
    values, the weight gradient's features. Returns dL/dcoef, dL/dbase (when ``need_w``; of x_t's inputs only), dL/dx
    (I, N) in fp32 for low-precision inputs, and dL/d(own parameters)."""
    n_in, n = x_t.shape
    o, i_all, b = coef.shape
    x = _low(x_t)
    g_all = mm(_feature_major(coef, base, dtype), gy_t).view(-1, i_all, n)[:, :n_in].to(x.dtype)  # (B[+1], I, N)
    g_base_x = None if base is None else g_all[b] * _silu_grad(x)
    g_x, *g_own, values = basis.lean_params_backward(x, g_all[:b], *(p.to(x.dtype) for p in own), g_x=g_base_x)
    g_coef, g_base = None, None
    if need_w:
        if base is not None:
            values.append(_silu(x))
        feats_t = torch.stack([v.to(dtype) for v in values]).view(-1, n)  # ((B[+1]) * n_in, N)
        # dL/dW transposed, ((B[+1]) * n_in, O): its first operand row-major whichever layout gy_t has (layer 2's
        # arrives transposed, which oneDNN would copy as the first operand of gy_t @ feats_t^T)
        g_w = mm(feats_t, gy_t.T).view(-1, n_in, o)  # (B[+1], n_in, O)
        g_coef = g_w[:b].permute(2, 1, 0).contiguous().to(coef.dtype)
        if base is not None:
            g_base = g_w[b].T.to(base.dtype)
    return g_coef, g_base, g_x, tuple(g_own)


def _add_transposed(g_x: torch.Tensor | None, g_t: torch.Tensor) -> torch.Tensor:
    """``g_x + g_t^T`` (N, I) from the input-major ``g_t`` (I, N), ``g_t^T`` alone without ``g_x``: a compiled
    helper of its own in the fused mode, the compiler's tiled transpose (eager: 1.5 against 0.2 ms at 2048 x 384).
    Inside ``_params_backward``'s graph the transposed output turned that graph's loop token-major, which stored every
    wavelet's (N, I) term again: the layer's backward took as long as before the input-major form."""
    return g_t.t().contiguous() if g_x is None else g_x + g_t.t()


def basis_tag(basis: Any) -> str:
    """The basis' part of a compiled copy's tag (``dispatch._kernel_fn``): its class, and its fused form where it has
    more than one (``Basis.fused_form``: a B-spline's adapted grid). A form of its own gives the form a copy of its
    own: met second by the copy of the first, the knot tables (2-d where the uniform grid's state is 1-d) compiled
    with their sizes symbolic (dynamo's automatic dynamic shapes), a graph no background compile had made (it makes
    the knots' first), so the call after a grid update compiled it (~20 s at d 128). Inside a compiled model, where
    no copy is made (its graph compiles the helpers), the class alone: the form's check reads a value back."""
    form = "" if torch.compiler.is_compiling() else basis.fused_form()
    return f"{type(basis).__name__}[{form}]" if form else type(basis).__name__


def _detached(*args: Any) -> tuple[Any, ...]:
    """The tensors (and tuples of tensors) in ``args`` detached, None as it is: for a compiled forward helper, whose
    graph is guarded on its inputs' ``requires_grad``. Detached, a training call (inputs that require grad) and an
    evaluation without autograd (inputs that do not) share one graph; the Function's forward runs without grad, so
    nothing else changes."""
    def one(a: Any) -> Any:
        if isinstance(a, tuple):
            return tuple(one(t) for t in a)
        return a.detach() if isinstance(a, torch.Tensor) else a
    return tuple(one(a) for a in args)


class LeanKANFunction(torch.autograd.Function):
    """``y = F(pre(x)) @ coef^T (+ silu(x) @ base^T) (+ bias)``, saving ``x`` and the weights only. ``params``: the
    pre-transform's parameters first (``n_pre`` of them; ``n_pre`` None: the basis has no pre-transform), then the
    basis' own (differentiated by autograd through the recomputed basis)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None, bias: torch.Tensor | None,
                basis: Any, state: tuple[torch.Tensor, ...] | None, n_pre: int | None,
                *params: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        pre = None if n_pre is None else params[:n_pre]
        with torch.autocast(x.device.type, enabled=False):
            ctx.pad = _input_pad(basis, basis.n_basis + (base is not None), x.shape[1], state, dtype, x.device)
            # a compiled copy per layer configuration and padding (which depends on the dtype: one copy meeting two
            # widths would recompile with the width symbolic)
            ctx.tag = f"{basis_tag(basis)}{tuple(coef.shape)}+{ctx.pad}"
            x_, coef_, base_, bias_, pre_ = _detached(x, coef, base, bias, pre)
            xp, coef_p, base_p, state_p, pre_p = _pad_inputs(ctx.pad, x_, coef_, base_, state, pre_)
            per_token(xp)
            y, stats = _kernel_fn(_lean_forward, tag=ctx.tag)(basis, xp, coef_p, base_p, bias_, state_p, dtype, pre_p)
        ctx.basis, ctx.dtype, ctx.state, ctx.n_pre, ctx.n_stats = basis, dtype, state, n_pre, len(stats)
        ctx.has_base, ctx.has_bias = base is not None, bias is not None
        ctx.mode = get_kernel()  # the backward takes the path the forward took
        ctx.save_for_backward(x, coef, base if base is not None else torch.empty(0), *stats, *params)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with scoped_kernel(ctx.mode):
            return LeanKANFunction._backward(ctx, gy)

    @staticmethod
    def _backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, coef, base, *saved = ctx.saved_tensors
        stats, params = tuple(saved[: ctx.n_stats]), saved[ctx.n_stats:]
        basis = ctx.basis
        base = base if ctx.has_base else None
        n_pre = ctx.n_pre or 0
        pre, own = (None if ctx.n_pre is None else tuple(params[:n_pre])), params[n_pre:]
        need_w = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        with torch.autocast(x.device.type, enabled=False):
            xp, coef_p, base_p, state_p, pre_p = _pad_inputs(ctx.pad, x, coef, base, ctx.state, pre)
            g_y = gy.to(ctx.dtype)
            per_token(xp, g_y, *stats)
            params_backward = bool(own) and pre is None and basis.has_params_backward  # analytic, own parameters too
            g_coef, g_base, g_x, g_pre, g_feats = _kernel_fn(_lean_backward, tag=ctx.tag)(
                basis, xp, coef_p, base_p, g_y, state_p, ctx.dtype, need_w, not own, pre_p, stats, params_backward)
            if ctx.pad:  # the padded inputs' gradients dropped
                i = x.shape[1]
                g_coef, g_base, g_pre = _unpad(ctx.pad, i, g_coef, g_base, g_pre)
                g_x = None if g_x is None else g_x[:, :i]
                if params_backward:
                    g_feats = tuple(g[..., :i, :] for g in g_feats)
                elif g_feats is not None:
                    g_feats = g_feats[..., :i]
            g_params: tuple[torch.Tensor | None, ...] = (*g_pre, *(None,) * len(own))
            if params_backward:  # input-major: (B, I, N) and (I, N)
                g_t, x_t = g_feats
                per_token(x_t, g_t, dim=-1)
                g_u_t, *g_own = _kernel_fn(_params_backward, tag=ctx.tag)(basis, x_t, g_t, *own)
                if g_x is not None:
                    per_token(g_x)
                per_token(g_u_t, dim=-1)
                g_x = _kernel_fn(_add_transposed, tag=ctx.tag)(g_x, g_u_t)
                g_params = tuple(g_own)
            elif g_feats is not None:  # autograd through the recomputed basis, here and now (nothing was saved for it)
                with torch.enable_grad():
                    xr = _low(x).detach().requires_grad_(True)
                    pr = tuple(p.detach().requires_grad_(True) for p in pre) if pre is not None else None
                    values = basis.lean_features(_pre(basis, xr, pr)[0])
                    inputs = [xr, *(pr or ()), *own]
                    grads = (torch.autograd.grad(values, inputs, g_feats.to(values.dtype), allow_unused=True)
                             if values.requires_grad else (None,) * len(inputs))  # piecewise constant: order-0 splines
                g_x0 = torch.zeros_like(xr) if grads[0] is None else grads[0]
                g_x = g_x0 if g_x is None else g_x + g_x0
                g_params = tuple(grads[1:])
            g_bias = gy.sum(0).to(coef.dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
        g_params = tuple(None if g is None else g.to(p.dtype) for g, p in zip(g_params, params, strict=True))
        return (g_x.to(x.dtype), g_coef if ctx.needs_input_grad[1] else None,
                g_base if ctx.needs_input_grad[2] else None, g_bias, None, None, None, *g_params)


def _triton_kan_linear(x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None, bias: torch.Tensor | None,
                       basis: Any) -> torch.Tensor | None:
    """The fused Triton kernels (layers/triton_kan.py) where they apply: a basis that offers them (B-spline on a
    uniform grid) and a device they run on (CUDA, or the CPU interpreter). None otherwise."""
    mode = get_kernel()
    if mode not in ("auto", "triton") or not triton_available(x):
        if mode == "triton" and not (triton_available(x) or torch.compiler.is_compiling()):
            raise ValueError("kernel 'triton' needs Triton and a CUDA tensor (or TRITON_INTERPRET=1 on CPU); "
                             "use auto, lean, fused or reference")
        return None
    params = basis.triton_params()
    if params is None:  # e.g. a data-adapted (non-uniform) grid: the lean path serves
        return None
    dtype = _compute_dtype(x)
    coef_t = coef.to(dtype).permute(2, 1, 0)  # (B, I, O)
    y = bspline_kan(x.to(dtype), coef_t, *params).to(dtype)
    if bias is not None:
        y = y + bias.to(dtype)
    if base is not None:
        y = y + F.linear(F.silu(x.to(dtype)), base.to(dtype))
    return y


def lean_kan_linear(x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None, bias: torch.Tensor | None,
                    basis: Any) -> torch.Tensor:
    """The fast paths of ``KANLinear`` on flat inputs ``(N, I)``: Triton kernels where they apply, else lean."""
    prepare_products(x)  # a layer called outside an FFN (an FFN's call prepared it in tuned_call)
    y = _triton_kan_linear(x, coef, base, bias, basis)
    if y is not None:
        return y
    pre = basis.lean_pre_params()
    own = tuple(basis.lean_params())
    return LeanKANFunction.apply(x, coef, base, bias, basis, _fused_state(basis), None if pre is None else len(pre),
                                 *(pre or ()), *own)


# -- MultKAN: the hidden nodes between two layers (layers/lean_ffn.py's graphs, layers/few_tokens.py's) ---------
def node_products(sub: torch.Tensor, n_sum: int, pad: int = 0) -> torch.Tensor:
    """MultKAN's hidden nodes (..., S + M) from its S + 2M subnodes: the first S pass on, each following pair
    multiplies; with ``pad`` zero columns appended (layer 2's padded inputs)."""
    parts = [sub[..., :n_sum], sub[..., n_sum::2] * sub[..., n_sum + 1::2]]
    if pad:
        parts.append(sub.new_zeros(*sub.shape[:-1], pad))
    return torch.cat(parts, dim=-1)


def node_products_backward(sub: torch.Tensor, g: torch.Tensor, n_sum: int) -> torch.Tensor:
    """dL/dsubnodes (..., S + 2M) from dL/dnodes ``g`` (..., S + M) of :func:`node_products`."""
    g_prod = g[..., n_sum:]
    pairs = torch.stack([g_prod * sub[..., n_sum + 1::2], g_prod * sub[..., n_sum::2]], dim=-1).flatten(-2)
    return torch.cat([g[..., :n_sum], pairs], dim=-1)


# -- GR-KAN: rational activation fused with the linear layer after it --------------------------------------------
# Coefficients are coefficient-major here, (J, C): power j of every channel is one contiguous row, so a compiled loop
# over channels reads them with vector loads (the (C, J) layout makes those strided gathers: ~4x slower on CPU).
def _horner(coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_j coeffs[j] x^j with per-channel coefficients ``(J, C)`` on ``x`` ``(N, C)``."""
    out = coeffs[-1].expand_as(x).clone()
    for j in range(coeffs.shape[0] - 2, -1, -1):
        out.mul_(x).add_(coeffs[j])
    return out


def _rational_parts(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
    """P(x), z(x) = sum_j b_j x^j and Q = 1 + |z| (layers/rational.py's safe denominator)."""
    p = _horner(a, x)
    z = _horner(b, x).mul_(x) if b.shape[0] else torch.zeros_like(x)
    return p, z, z.abs().add_(1)


# The helpers take x and dL/dR as they come and return R in the matmul's dtype: the casts of a bf16 step happen
# inside the compiled loops, not as passes of their own over (N, C).
def rational_values(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """R(x) = P(x) / Q(x) in ``dtype``, with per-channel coefficients a (m+1, C), b (n, C), evaluated in fp32 for
    low-precision x (elementwise; compiled in the fused mode)."""
    p, _, q = _rational_parts(_low(x), a, b)
    return p.div_(q).to(dtype)


def rational_backward(x: torch.Tensor, g_r: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """From dL/dR (N, C): R(x) (recomputed, in ``dtype``), dL/dx (in x's dtype), and the per-channel coefficient
    gradients dL/da (C, m+1), dL/db (C, n), reduced over tokens without a (N, C, degree) tensor of powers (compiled
    in the fused mode)."""
    m, n = a.shape[0] - 1, b.shape[0]
    x_in, x = x, _low(x)
    g_r = g_r.to(x.dtype)
    p, z, q = _rational_parts(x, a, b)
    r = p / q
    gq = g_r / q  # dL/dR / Q
    share = r * torch.sign(z) * gq  # dL/dR * R/Q * sign(z): the denominator's share
    # dR/dx = P'/Q - (R/Q) sign(z) z'
    g_x = gq * _horner(a[1:] * torch.arange(1, m + 1, device=a.device, dtype=a.dtype)[:, None], x) if m else 0 * x
    if n:
        g_x = g_x - share * _horner(b * torch.arange(1, n + 1, device=b.device, dtype=b.dtype)[:, None], x)
    g_a, g_b = [gq.sum(0)], []
    power = x
    for j in range(1, max(m, n) + 1):
        if j <= m:
            g_a.append((gq * power).sum(0))
        if j <= n:
            g_b.append(-(share * power).sum(0))
        if j < max(m, n):
            power = power * x
    g_b_t = torch.stack(g_b, dim=1) if g_b else x.new_zeros(x.shape[1], 0)
    return r.to(dtype), g_x.to(x_in.dtype), torch.stack(g_a, dim=1), g_b_t


def _triton_rational_values(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return triton_rational_forward(x, a.T, b.T).to(dtype)  # the kernel reads (C, J) tables, any x dtype, in fp32


def _triton_rational_backward(x: torch.Tensor, g_r: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g_x, g_a, g_b = triton_rational_backward(x, g_r, a.T, b.T)
    return r.to(dtype), g_x.to(x.dtype), g_a, g_b


_TRITON.update(rational_values=_triton_rational_values, rational_backward=_triton_rational_backward)


def _tables_tag(a: torch.Tensor, b: torch.Tensor) -> str:
    """The compiled-copy tag of GR-KAN's helpers (dispatch._kernel_fn): the coefficient tables' shapes."""
    return f"{tuple(a.shape)}{tuple(b.shape)}"


def _channel_tables(num: torch.Tensor, den: torch.Tensor, group_index: torch.Tensor, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel coefficient tables from the per-group ones: (m+1, C) and (n, C), coefficient-major; in a compiled
    graph, buffers of their own (``realized``), which its loops read directly."""
    return realized(num.to(dtype).T[:, group_index].contiguous(), den.to(dtype).T[:, group_index].contiguous())


def _per_group(g: torch.Tensor, table: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Per-channel coefficient gradients ``g`` (C, J) summed into their groups' rows of ``table`` (G, J)."""
    return torch.zeros_like(table, dtype=g.dtype).index_add_(0, group_index, g).to(table.dtype)


class LeanRationalLinearFunction(torch.autograd.Function):
    """``y = R(x) @ W^T + bias`` with the group-rational R of layers/rational.py, saving only ``x``: R(x) is
    recomputed in the backward, and the coefficient gradients are reduced over tokens per channel, then per group."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, num: torch.Tensor, den: torch.Tensor, group_index: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            a, b = _channel_tables(num, den, group_index, _low_dtype(x.dtype))
            x_ = x.detach()  # one graph for training and evaluation (``_detached``)
            per_token(x_)
            r = _kernel_fn(rational_values, x, tag=_tables_tag(a, b))(x_, a, b, dtype)
            w = weight.to(dtype)
            y = mm(r, w.T, None if bias is None else bias.to(dtype))
        ctx.dtype, ctx.has_bias, ctx.mode = dtype, bias is not None, get_kernel()
        # the per-channel tables too (a few numbers a channel): the backward does not gather them again
        ctx.save_for_backward(x, num, den, group_index, weight, a, b)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with scoped_kernel(ctx.mode):
            return LeanRationalLinearFunction._backward(ctx, gy)

    @staticmethod
    def _backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, num, den, group_index, weight, a, b = ctx.saved_tensors
        dtype = ctx.dtype
        gy = gy.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            g_r = mm(gy, weight.to(dtype))  # dL/dR (N, C)
            per_token(x, g_r)
            r, g_x, g_a, g_b = _kernel_fn(rational_backward, x, tag=_tables_tag(a, b))(
                x, g_r, a, b, dtype)
            g_w = mm(gy.T, r).to(weight.dtype) if ctx.needs_input_grad[4] else None
            g_bias = gy.sum(0).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[5] else None
            g_num, g_den = _per_group(g_a, num, group_index), _per_group(g_b, den, group_index)
        return g_x.to(x.dtype), g_num, g_den, None, g_w, g_bias


def lean_rational_linear(x: torch.Tensor, act: Any, linear: Any) -> torch.Tensor:
    """``linear(act(x))`` for a GroupRational ``act`` and nn.Linear ``linear`` on flat inputs ``(N, C)``."""
    prepare_products(x)
    return LeanRationalLinearFunction.apply(x, act.numerator, act.denominator, act.group_index, linear.weight,
                                            linear.bias)
