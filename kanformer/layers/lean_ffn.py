"""A KAN FFN's two layers as one autograd Function: one compiled graph for the forward of both, one for the backward.

Per layer, the fused path (layers/lean.py) runs an autograd Function whose forward and backward are compiled graphs:
four graph calls and two Function calls an FFN step, each with fixed costs (guards, wrappers, argument preparation,
OpenMP regions) that do not shrink with the token count. At the demo's widths they weigh: B-spline FFN, d_model 128,
1024 tokens, fp32, 2-core CPU: 0.90x the two-layer step's time in one Function (median of 7 interleaved pairs).

    forward:  h = layer1(x);  y = layer2(h)                        saves x and h (what the two layers saved)
    backward: dh, d(layer2) = layer2'(h, dy);  dx, d(layer1) = layer1'(x, dh)

Layer 2 reads layer 1's output inside the graph, so an output width padded for the matmul (``lean.output_pad``) is
kept as layer 2's padded input where layer 2 pads its inputs to the same width (``lean._input_pad``), and sliced off
otherwise; the backward hands layer 1 its output gradient at that padded width too (the extra columns meet zero rows
of weights), so layer 1's backward products keep the aligned rows (on CUDA: 16-byte rows, ``gemm.aligned_pad``). The
two layers' computations are lean.py's ``_lean_forward`` and ``_lean_backward`` as they are: the
results equal the per-layer path's to rounding.

A MultKAN's hidden nodes (:func:`node_products`: layer 1's outputs passed on or multiplied in pairs) are made inside
both graphs: the forward saves layer 1's output, the subnodes, and the backward makes the nodes again from them for
layer 2's, then takes the products' backward before layer 1's. Layer 2's zero input columns are appended to the nodes.

A basis with parameters of its own and their analytic gradients (``lean_params_backward``: the wavelet's translations
and scales) runs its layer's backward input-major (``lean.input_major_backward``): the parameters' sums over tokens
run along contiguous rows, in the pass that makes the input gradient. The forward keeps such a layer's input
transposed, (I, N), as large as the (N, I) it replaces; layer 2's input gradient leaves input-major, which is how an
input-major layer 1 takes its output gradient, so nothing is transposed between the layers; layer 1's input gradient
is transposed back by a compiled helper of its own. Against the per-layer path (per layer a forward graph and three
backward graphs, the base branch's gradient a matmul of its own): the wavelet FFN step, d_model 128, 1024 tokens,
fp32, 2-core CPU, 1.54 -> 1.36 - 1.45x the MLP's (two runs each).

It serves the layers it can chain (:func:`plan`): both on the fused path with an analytic input gradient (and, for a
basis with parameters of its own, their analytic gradients and no pre-transform), no module hooks on either layer
(hooks see every layer's call on the per-layer path), no Triton kernel that applies, no MultKAN products between
layers with parameters of their own. Everything else takes the per-layer path.

Inside a ``torch.compile``'d model (``dispatch.traced``: ``auto``, ``fused`` or ``lean`` while a graph is traced) the
two Functions are traced into the model's graph: dynamo takes their forward and backward apart, the compiler compiles
the lean forms with the rest of the model, and no helper is compiled on its own (``dispatch._kernel_fn`` gives the
helpers themselves). There the plan reads no values back (the B-spline's grid: its last eager check's verdict, which its
graph checks). A basis with parameters of its own (the wavelet) is not traced so: its input-major backward in one graph
with the rest ran slower than the compiled reference. Its FFN is one operator of the graph instead (``own_params_ffn``),
whose forward and backward are this Function's, on the fused path's own compiled helpers; the graph keeps what the eager
path keeps (the lean memory rule or not), and without autograd, or on ``lean``, the reference serves it. What the graph
saves for the backward of the traced Functions follows the memory rule: under ``lean`` the backward recomputes the
features from opaque copies of x and h (``dispatch.kept_for_recompute``), so the graph keeps what the eager path keeps;
under ``fast`` the compiler's partitioner merges the backward's recomputed features with the forward's and keeps them
(about what the compiled reference keeps; RBF FFN, d 128, 1024 tokens: 9.6 against 9.0 MB, 0.8 MB eager).

A call without autograd of few tokens (a generation step's) takes a graph of its own instead (layers/few_tokens.py);
GR-KAN's two rational -> linear pairs have a Function of their own (layers/lean_rational.py).
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from typing import Any

import torch

from .autotune import kernel_memory
from .dispatch import (
    _fused,
    _global_hooks,
    _hooked,
    _kernel_fn,
    get_kernel,
    kept_for_recompute,
    kernel,
    on_forward_path,
    per_token,
    scoped_kernel,
    traced,
    use_lean,
)
from .few_tokens import _drop_kept, _few_tokens_call
from .lean import (
    _add_transposed,
    _compute_dtype,
    _detached,
    _input_pad,
    _lean_backward,
    _lean_forward,
    _pad_per_input,
    _pad_weights,
    _unpad,
    basis_tag,
    input_major_backward,
    node_products,
    node_products_backward,
    output_pad,
)
from .triton_kan import triton_available

# One op namespace per copy of this file (as dispatch.py's): a checkpoint's portable modeling code carries its own copy.
_NS = re.sub(r"\W", "_", __name__)


@dataclass(frozen=True)
class Plan:
    """What one call of the two-layer Function needs beside its tensors: each layer's basis, per-function state (None:
    the basis' lean forms), input padding and number of pre-transform parameters, the matmul dtype, and the tag of
    the compiled copies."""

    basis1: Any
    basis2: Any
    state1: tuple[torch.Tensor, ...] | None
    state2: tuple[torch.Tensor, ...] | None
    pad1: int
    pad2: int
    n_pre1: int | None  # None: no pre-transform (as lean.py's LeanKANFunction takes it)
    n_pre2: int | None
    dtype: torch.dtype
    tag: str
    products: tuple[int, int] | None = None  # MultKAN's (sum nodes, multiplication nodes) between the layers
    n_own1: int = 0  # the basis' own parameters (``lean_params``: a wavelet's), whose layer runs input-major
    n_own2: int = 0
    opaque: bool = False  # inside a compiled graph, the operator ``own_params_ffn`` (layer 1 has parameters of its own)

    def split_pre(self, pre: tuple[torch.Tensor, ...]
                  ) -> tuple[tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Layer 1's and layer 2's pre-transform parameters from the Function's ``pre`` (None: no pre-transform)."""
        n1 = self.n_pre1 or 0
        return (None if self.n_pre1 is None else tuple(pre[:n1]),
                None if self.n_pre2 is None else tuple(pre[n1:]))

    def split_params(self, params: tuple[torch.Tensor, ...]
                     ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The Function's ``params`` as (both layers' pre-transform parameters, layer 1's own, layer 2's own)."""
        n_pre = (self.n_pre1 or 0) + (self.n_pre2 or 0)
        return params[:n_pre], params[n_pre:n_pre + self.n_own1], params[n_pre + self.n_own1:]


def _chainable(layer: Any, mode: str, x: torch.Tensor, tracing: bool) -> tuple[torch.Tensor, ...] | None | bool:
    """The layer's per-function state (None: none) where its call can be chained with the other's, False where not.
    ``tracing``: inside a compiled model's graph (dispatch.traced)."""
    basis = layer.basis
    if layer.kernel_mode not in (None, mode) or _hooked(layer) or not (basis.has_lean if tracing
                                                                        else use_lean(basis.has_lean)):
        return False
    if tracing and basis.has_lean_params and (mode not in ("auto", "fused") or not torch.is_grad_enabled()
                                             or kernel_memory() != "lean" or not basis.has_lean_spec):
        return False  # the wavelet's operator serves the lean memory rule in training; else the compiled reference
    if not tracing and mode in ("auto", "triton") and triton_available(x) and basis.triton_params() is not None:
        return False  # the layer's hand-written Triton kernels serve it
    state = basis.fused_state()
    if state is None and not basis.lean_grad_always:
        return False  # its input gradient may take autograd through the recomputed basis (a declined analytic one)
    if basis.has_lean_params and (state is None or not basis.has_params_backward
                                  or basis.lean_pre_params() is not None):
        return False  # its own parameters' gradients by autograd: the per-layer path
    return state


def plan(ffn: Any, x: torch.Tensor, products: tuple[int, int] | None = None) -> Plan | None:
    """The two-layer Function's plan for ``ffn`` (a KANFFN: ``fc1``, ``fc2``) on ``x`` now, or None where the
    per-layer path serves (see the module's docstring). ``products``: (S, M), a MultKAN's hidden nodes made from
    layer 1's S + 2M outputs (:func:`node_products`), which layer 2 reads."""
    mode = get_kernel()
    tracing = traced()
    if (not tracing and (mode not in ("auto", "fused") or not _fused())) or _global_hooks():
        return None
    fc1, fc2 = ffn.fc1, ffn.fc2
    s, m = (fc1.out_features, 0) if products is None else products
    if (fc1.out_features, fc2.in_features) != (s + 2 * m, s + m):
        raise ValueError(f"layer 1's {fc1.out_features} outputs and layer 2's {fc2.in_features} inputs do not match "
                         f"products={products} (S sum and M multiplication nodes: S + 2M outputs, S + M inputs)")
    state1 = _chainable(fc1, mode, x, tracing)
    state2 = False if state1 is False else _chainable(fc2, mode, x, tracing)
    if state1 is False or state2 is False:
        return None
    b1, b2 = fc1.basis, fc2.basis
    n_own1, n_own2 = len(b1.lean_params()), len(b2.lean_params())
    if products is not None and (n_own1 or n_own2):
        return None  # the products' backward takes token-major gradients; no such basis today
    if tracing and n_own2 and not n_own1:
        return None  # the operator serves a layer 1 with parameters of its own (both, for the wavelet)
    dtype = _compute_dtype(x)
    pad1 = _input_pad(b1, b1.n_basis + (fc1.base_weight is not None), fc1.in_features, state1, dtype, x.device)
    pad2 = _input_pad(b2, b2.n_basis + (fc2.base_weight is not None), fc2.in_features, state2, dtype, x.device)
    if products is None and pad2 not in (0, output_pad(fc1.out_features, x.device)):
        return None  # layer 2 pads to another width than layer 1's output has: no such rule today
    pre1, pre2 = b1.lean_pre_params(), b2.lean_pre_params()
    tag = f"{basis_tag(b1)}{tuple(fc1.coef.shape)}+{pad1}/{basis_tag(b2)}{tuple(fc2.coef.shape)}+{pad2}"
    if products is not None:
        tag += f"*{products[0]},{products[1]}"
    return Plan(b1, b2, state1, state2, pad1, pad2, None if pre1 is None else len(pre1),
                None if pre2 is None else len(pre2), dtype, tag, products, n_own1, n_own2, tracing and n_own1 > 0)


def _ffn_forward(basis1: Any, basis2: Any, x: torch.Tensor, layer1: tuple[Any, ...], layer2: tuple[Any, ...],
                 dtype: torch.dtype, padded_hidden: bool, products: tuple[int, int] | None = None,
                 input_major: tuple[int, int] = (0, 0), pads: tuple[int, int] = (0, 0)
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, ...],
                            tuple[torch.Tensor, ...]]:
    """y; the two layers' inputs as the backward takes them (``input_major``: per layer, 0, or the number of its real
    inputs, whose input the backward takes input-major (I, N): made here, in the compiler's tiled transpose, as a graph
    output, so the backward's loops read it along contiguous rows); the two pre-transforms' statistics. Layer 1's
    input is None where it is ``x`` itself; layer 2's is the hidden h it read (with layer 1's zero output columns where
    ``padded_hidden``; with ``products``, layer 1's output instead, the subnodes the nodes are made from). ``layer``:
    (coef, base, bias, state, pre), the state padded for the layer's ``pads`` zero inputs, the weights and the
    pre-transform's parameters padded here. One compiled graph in the fused mode."""
    coef1, base1, bias1, state1, pre1 = layer1
    coef2, base2, bias2, state2, pre2 = layer2
    (coef1, base1, pre1), (coef2, base2, pre2) = _in_graph_pads(pads, (coef1, base1, pre1), (coef2, base2, pre2))
    n1, n2 = input_major
    x_keep = x[:, :n1].t().contiguous() if n1 else None
    hidden, stats1 = _lean_forward(basis1, x, coef1, base1, bias1, state1, dtype, pre1, keep_pad=True)
    if products is None:
        h = hidden if padded_hidden else hidden[:, : coef1.shape[0]]
        y, stats2 = _lean_forward(basis2, h, coef2, base2, bias2, state2, dtype, pre2)
        return y, x_keep, (h[:, :n2].t().contiguous() if n2 else h), stats1, stats2
    sub = hidden[:, : coef1.shape[0]]
    nodes = node_products(sub, products[0], coef2.shape[1] - sum(products))  # layer 2's padded input width
    y, stats2 = _lean_forward(basis2, nodes, coef2, base2, bias2, state2, dtype, pre2)
    return y, x_keep, sub, stats1, stats2


def _in_graph_pads(pads: tuple[int, int], *layers: tuple[Any, Any, Any]) -> list[tuple[Any, Any, Any]]:
    """Each layer's (coef, base, pre-transform parameters) with its ``pads`` zero inputs, inside the two-layer graphs
    (``_padded`` gives what is padded outside them)."""
    out = []
    for pad, (coef, base, pre) in zip(pads, layers, strict=True):
        out.append((*_pad_weights(pad, coef, base), _pad_per_input(pad, coef.shape[1], pre)))
    return out


def _ffn_backward(basis1: Any, basis2: Any, x: torch.Tensor, h: torch.Tensor, layer1: tuple[Any, ...],
                  layer2: tuple[Any, ...], gy: torch.Tensor, dtype: torch.dtype, need: tuple[bool, ...],
                  products: tuple[int, int] | None = None, pads: tuple[int, int] = (0, 0)) -> tuple[Any, ...]:
    """Layer 2's backward, then layer 1's on its input gradient: (dx, dcoef1, dbase1, dpre1, dbias1, dcoef2, dbase2,
    dpre2, dbias2, down1, down2), the weights' and pre-transforms' gradients of the real inputs alone. ``x``, ``h``:
    what the forward kept (``_ffn_forward``; with ``products``, h is the subnodes and the nodes are made again).
    ``layer``: (coef, base, state, pre, stats, own), the state padded for the layer's ``pads`` zero inputs, the
    weights and the pre-transform's parameters padded here; ``own``: the basis' own parameters, () without. A layer
    with them runs input-major (``lean.input_major_backward``), its input kept so, (I, N); where layer 1 does, dx
    comes back input-major too. ``need``: (layer 1's weights, its bias, layer 2's weights, its bias). One compiled
    graph in the fused mode."""
    coef1, base1, state1, pre1, stats1, own1 = layer1
    coef2, base2, state2, pre2, stats2, own2 = layer2
    n_in1, n_in2 = coef1.shape[1], coef2.shape[1]
    (coef1, base1, pre1), (coef2, base2, pre2) = _in_graph_pads(pads, (coef1, base1, pre1), (coef2, base2, pre2))
    need_w1, need_b1, need_w2, need_b2 = need
    g_feats1 = g_feats2 = None
    g_own1: tuple[torch.Tensor, ...] = ()
    g_own2: tuple[torch.Tensor, ...] = ()
    g_pre1: tuple[torch.Tensor, ...] = ()
    g_pre2: tuple[torch.Tensor, ...] = ()
    if own2:  # dL/dh input-major (O1, N): an input-major layer 1 takes it as it is
        g_coef2, g_base2, g_h_t, g_own2 = input_major_backward(basis2, h, coef2, base2, gy.to(dtype).t(), dtype,
                                                               need_w2, own2)
        g_h_t = g_h_t.to(h.dtype)  # the per-layer path hands layer 1 its gradient in h's dtype
        g_h = g_h_t.t()
    else:
        nodes = h if products is None else node_products(h, products[0], coef2.shape[1] - sum(products))
        g_coef2, g_base2, g_h, g_pre2, g_feats2 = _lean_backward(basis2, nodes, coef2, base2, gy.to(dtype), state2,
                                                                 dtype, need_w2, True, pre2, stats2)
        if products is None:  # in h's dtype, as the per-layer path hands it to layer 1; at h's padded width where
            # h has one (layer 1's zero rows of weights take its columns): the products stay at an aligned width
            g_h = (g_h if h.shape[1] == g_h.shape[1] and not own1 else g_h[:, : coef1.shape[0]]).to(h.dtype)
        else:  # the nodes' gradient in their dtype, as the per-layer path's layer 2 hands it to the products
            g_h = node_products_backward(h, g_h[:, : sum(products)].to(h.dtype), products[0])
        g_h_t = g_h.t()
    if own1:
        g_coef1, g_base1, g_x, g_own1 = input_major_backward(basis1, x, coef1, base1, g_h_t.to(dtype), dtype,
                                                             need_w1, own1)
    else:
        g_coef1, g_base1, g_x, g_pre1, g_feats1 = _lean_backward(basis1, x, coef1, base1, g_h.to(dtype), state1,
                                                                 dtype, need_w1, True, pre1, stats1)
    if g_feats1 is not None or g_feats2 is not None:
        raise RuntimeError("a basis declined its analytic input gradient on the two-layer path (layers/lean_ffn.py "
                           "plans it only for bases that give one)")
    g_bias1 = (g_h_t.sum(1) if own2 else g_h[:, : coef1.shape[0]].sum(0)) if need_b1 else None
    g_bias2 = gy.sum(0) if need_b2 else None
    # the padded inputs' gradients dropped here, each real one made contiguous in the copy that lays it out (an eager
    # slice after the graph left a strided view, which autograd copied again to the parameter's layout)
    g_coef1, g_base1, g_pre1 = _contiguous(*_unpad(pads[0], n_in1, g_coef1, g_base1, g_pre1))
    g_coef2, g_base2, g_pre2 = _contiguous(*_unpad(pads[1], n_in2, g_coef2, g_base2, g_pre2))
    return g_x, g_coef1, g_base1, g_pre1, g_bias1, g_coef2, g_base2, g_pre2, g_bias2, g_own1, g_own2


def _contiguous(g_coef: torch.Tensor | None, g_base: torch.Tensor | None, g_pre: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, ...]]:
    return (None if g_coef is None else g_coef.contiguous(), None if g_base is None else g_base.contiguous(),
            tuple(g.contiguous() for g in g_pre))


def _forward_tensors(p: Plan, x: torch.Tensor, coef1: torch.Tensor, base1: torch.Tensor | None,
                     bias1: torch.Tensor | None, coef2: torch.Tensor, base2: torch.Tensor | None,
                     bias2: torch.Tensor | None, params: tuple[torch.Tensor, ...]
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, ...],
                                tuple[torch.Tensor, ...]]:
    """The two-layer forward on ``p``'s path: ``_ffn_forward``'s results (y, layer 1's input kept input-major or None,
    layer 2's input as kept, the pre-transforms' statistics), with the inputs padded and detached. ``params``: as
    ``LeanKANFFNFunction`` takes them."""
    pre = p.split_params(params)[0]
    with torch.autocast(x.device.type, enabled=False):
        x_, c1, w1, b1, c2, w2, b2, pre_ = _detached(x, coef1, base1, bias1, coef2, base2, bias2, pre)
        pre1, pre2 = p.split_pre(pre_)
        xp, (s1, s2) = _padded(p, x_)
        per_token(xp)
        return _kernel_fn(_ffn_forward, tag=p.tag)(
            p.basis1, p.basis2, xp, (c1, w1, b1, s1, pre1), (c2, w2, b2, s2, pre2), p.dtype, p.pad2 > 0,
            p.products, (x.shape[1] if p.n_own1 else 0, coef2.shape[1] if p.n_own2 else 0), (p.pad1, p.pad2))


def _padded(p: Plan, x: torch.Tensor | None) -> tuple[torch.Tensor | None, tuple[Any, Any]]:
    """Layer 1's input with ``p.pad1`` zero inputs (eagerly: padded inside the graph, the compiler's feature loop
    ran masked and scalar), and each layer's per-function state padded likewise, once per grid
    (``lean._pad_per_input``); the weights and the pre-transforms' parameters are padded inside the graphs (RBF's
    LayerNorm at d 384, 2048 tokens, fp32: the FFN step 0.996x the eager pads', a same-process A/B). ``x`` None: not
    padded (an input-major layer 1's, which the backward takes as the forward kept it)."""
    if x is not None and p.pad1:
        x = torch.nn.functional.pad(x, (0, p.pad1))
    return x, (_pad_per_input(p.pad1, p.basis1.in_features, p.state1, keep=True),
               _pad_per_input(p.pad2, p.basis2.in_features, p.state2, keep=True))


def _backward_tensors(p: Plan, x: torch.Tensor, h: torch.Tensor, coef1: torch.Tensor, base1: torch.Tensor | None,
                      coef2: torch.Tensor, base2: torch.Tensor | None, stats: tuple[tuple[torch.Tensor, ...], ...],
                      params: tuple[torch.Tensor, ...], gy: torch.Tensor, need: tuple[bool, ...], n_in: int
                      ) -> tuple[Any, ...]:
    """The two-layer backward on ``p``'s path, from what ``_forward_tensors`` kept (``x``: layer 1's input, input-major
    where layer 1 has parameters of its own; ``h``; ``stats``: the two layers' statistics): (dx, dcoef1, dbase1,
    dbias1, dcoef2, dbase2, dbias2, the ``params``' gradients), the weights' gradients of the real inputs alone, None
    where ``need`` (``_ffn_backward``'s) does not ask for them, dx of layer 1's ``n_in`` inputs, in x's dtype."""
    stats1, stats2 = stats
    pre, own1, own2 = p.split_params(params)
    pre1, pre2 = p.split_pre(pre)
    with torch.autocast(x.device.type, enabled=False):
        # an input-major x (I, N) is unpadded: the weights are padded alone
        xp, (s1, s2) = _padded(p, None if p.n_own1 else x)
        xp = x if xp is None else xp
        per_token(gy, *stats1, *stats2)
        for kept, own in ((xp, p.n_own1), (h, p.n_own2)):
            per_token(kept, dim=-1 if own else 0)  # an input-major input's tokens are its columns
        g_x, g_c1, g_w1, g_pre1, g_b1, g_c2, g_w2, g_pre2, g_b2, g_own1, g_own2 = _kernel_fn(
            _ffn_backward, tag=p.tag)(
            p.basis1, p.basis2, xp, h, (coef1, base1, s1, pre1, stats1, own1),
            (coef2, base2, s2, pre2, stats2, own2), gy, p.dtype, need, p.products, (p.pad1, p.pad2))
        if p.n_own1:  # input-major (I, N): the compiler's tiled transpose in a graph of its own (lean.py)
            per_token(g_x, dim=-1)
            g_x = _kernel_fn(_add_transposed, tag=p.tag)(None, g_x)
    g_params = tuple(g.to(t.dtype) for g, t in zip((*g_pre1, *g_pre2, *g_own1, *g_own2), params, strict=True))
    return g_x[:, :n_in].to(x.dtype), g_c1, g_w1, g_b1, g_c2, g_w2, g_b2, g_params


class LeanKANFFNFunction(torch.autograd.Function):
    """``y = layer2(layer1(x))`` for two lean KAN layers (``plan``), saving x, the hidden activations, the weights and
    the pre-transforms' per-token statistics. ``params``: layer 1's pre-transform parameters, then layer 2's, then
    each layer's basis' own (``lean_params``; the forward reads them through the plan's per-function state)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coef1: torch.Tensor, base1: torch.Tensor | None,
                bias1: torch.Tensor | None, coef2: torch.Tensor, base2: torch.Tensor | None,
                bias2: torch.Tensor | None, p: Plan, *params: torch.Tensor) -> torch.Tensor:
        y, x_keep, h, stats1, stats2 = _forward_tensors(p, x, coef1, base1, bias1, coef2, base2, bias2, params)
        ctx.plan, ctx.n_stats1, ctx.n_stats2 = p, len(stats1), len(stats2)
        ctx.mode = get_kernel()  # the backward takes the path the forward took
        ctx.has_base1, ctx.has_base2, ctx.has_bias1, ctx.has_bias2 = (
            base1 is not None, base2 is not None, bias1 is not None, bias2 is not None)
        empty = torch.empty(0)
        ctx.n_in = x.shape[1]
        ctx.save_for_backward(x if x_keep is None else x_keep, h, coef1, empty if base1 is None else base1, coef2,
                              empty if base2 is None else base2, *stats1, *stats2, *params)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return on_forward_path(ctx.mode, LeanKANFFNFunction._backward, ctx, gy)

    @staticmethod
    def _backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, h, coef1, base1, coef2, base2, *saved = ctx.saved_tensors
        x, h = kept_for_recompute(x, h)
        stats1, saved = tuple(saved[: ctx.n_stats1]), saved[ctx.n_stats1:]
        stats2, params = tuple(saved[: ctx.n_stats2]), tuple(saved[ctx.n_stats2:])
        base1 = base1 if ctx.has_base1 else None
        base2 = base2 if ctx.has_base2 else None
        needs = ctx.needs_input_grad
        need = (needs[1] or needs[2], ctx.has_bias1 and needs[3], needs[4] or needs[5], ctx.has_bias2 and needs[6])
        g_x, g_c1, g_w1, g_b1, g_c2, g_w2, g_b2, g_params = _backward_tensors(
            ctx.plan, x, h, coef1, base1, coef2, base2, (stats1, stats2), params, gy, need, ctx.n_in)

        def cast(g: torch.Tensor | None, i: int, like: torch.Tensor) -> torch.Tensor | None:
            """A parameter's gradient where asked for, in the dtype the per-layer path gives it."""
            return None if g is None or not needs[i] else g.to(like.dtype)

        return (g_x, cast(g_c1, 1, coef1), cast(g_w1, 2, base1), cast(g_b1, 3, coef1), cast(g_c2, 4, coef2),
                cast(g_w2, 5, base2), cast(g_b2, 6, coef2), None, *g_params)


def lean_kan_ffn(ffn: Any, x: torch.Tensor, p: Plan) -> torch.Tensor:
    """``ffn.fc2(ffn.fc1(x))`` through the two-layer Function (``p`` from :func:`plan`), or, where ``p`` is
    ``opaque``, through the operator that runs it inside a compiled graph; a call of few tokens without autograd
    through the graph made for it (``_few_tokens_call``)."""
    fc1, fc2 = ffn.fc1, ffn.fc2
    x2 = x.reshape(-1, fc1.in_features)
    _drop_kept()
    y = _few_tokens_call(ffn, x2, p)
    if y is not None:
        return y.reshape(*x.shape[:-1], fc2.out_features)
    params = (*(fc1.basis.lean_pre_params() or ()), *(fc2.basis.lean_pre_params() or ()),
              *fc1.basis.lean_params(), *fc2.basis.lean_params())
    if p.opaque:
        y = own_params_ffn(fc1.basis.lean_spec(), fc2.basis.lean_spec(), [p.pad1, p.pad2], p.dtype, p.tag, x2,
                           fc1.coef, fc1.base_weight, fc1.bias, fc2.coef, fc2.base_weight, fc2.bias, list(params))[0]
    else:
        y = LeanKANFFNFunction.apply(x2, fc1.coef, fc1.base_weight, fc1.bias, fc2.coef, fc2.base_weight, fc2.bias, p,
                                     *params)
    return y.reshape(*x.shape[:-1], fc2.out_features)



# -- inside a compiled model: bases with parameters of their own, as an operator -----------------------------------
# Traced with the rest of a compiled graph, the wavelet's input-major backward ran slower than the compiled reference
# (d 128, 1024 tokens: 2.39 against 1.84x the MLP's step), and the reference keeps the basis' values for the backward
# (1.60x the MLP's activations at d 384). As an operator the graph calls, the two-layer Function's forward and backward
# run as they do eagerly, on their own compiled helpers (compiled on the first call, cached on disk), and the graph
# keeps what the eager path keeps: x input-major and the hidden activations. The graph carries each layer's basis as
# its configuration (``Basis.lean_spec``), not as the object: one graph serves every block of a regionally compiled
# model (an object's identity, a guard of the graph, recompiled it block by block, up to dynamo's recompile limit).
@functools.cache
def _basis(spec: str) -> Any:
    """A basis of the configuration ``spec`` (``Basis.lean_spec``), for its lean forms: its own parameters are not
    read (the operator passes the layer's)."""
    from .kan import get_basis_class

    name, in_features, *kwargs = spec.split("|")
    return get_basis_class(name)(int(in_features), **{k: ast.literal_eval(v) for k, v in
                                                      (item.split("=", 1) for item in kwargs)})


def _op_plan(spec1: str, spec2: str, pads: list[int], dtype: torch.dtype, tag: str, params: list[torch.Tensor]
             ) -> Plan:
    """The plan a graph was traced with, its per-function state made from the operator's own inputs."""
    b1, b2 = _basis(spec1), _basis(spec2)
    n1, n2 = len(b1.lean_params()), len(b2.lean_params())
    return Plan(b1, b2, b1.fused_state_from(*params[:n1]), b2.fused_state_from(*params[n1:]), pads[0], pads[1], None,
                None, dtype, tag, None, n1, n2)


def _fresh(tensors: list[torch.Tensor], inputs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """``tensors`` contiguous, each in memory of its own (an operator's outputs may not alias its inputs or each
    other, and its fake implementation gives them contiguous)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t is not None and t.numel()}
    out = []
    for t in tensors:
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        t = t.clone() if ptr in seen else t.contiguous()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out.append(t)
    return out


def _keys() -> Any:
    """The dispatch state the operator's helpers run in, the same on every call: the compiled helpers are guarded on
    their inputs' dispatch keys, and a compiled graph's first call runs its operators with more of them excluded than
    later calls (ADInplaceOrView among them): the helpers compiled twice. Nothing below records autograd."""
    return torch._C._AutoDispatchBelowADInplaceOrView()


@torch.library.custom_op(f"{_NS}::own_params_ffn", mutates_args=())
def own_params_ffn(spec1: str, spec2: str, pads: list[int], dtype: torch.dtype, tag: str, x: torch.Tensor,
                   coef1: torch.Tensor, base1: torch.Tensor | None, bias1: torch.Tensor | None, coef2: torch.Tensor,
                   base2: torch.Tensor | None, bias2: torch.Tensor | None, params: list[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, x input-major, layer 2's input as kept) of a KAN FFN whose layer 1 has parameters of its own, on the fused
    path (``_forward_tensors``)."""
    p = _op_plan(spec1, spec2, pads, dtype, tag, params)
    with scoped_kernel("auto"), _keys():  # the compiled helpers, the eager ones where compiling fails
        y, x_keep, h, _, _ = _forward_tensors(p, x, coef1, base1, bias1, coef2, base2, bias2, tuple(params))
    return tuple(_fresh([y, x_keep, h], [x, coef1, base1, bias1, coef2, base2, bias2, *params]))


@own_params_ffn.register_fake
def _(spec1: str, spec2: str, pads: list[int], dtype: torch.dtype, tag: str, x: torch.Tensor, coef1: torch.Tensor,
      base1: torch.Tensor | None, bias1: torch.Tensor | None, coef2: torch.Tensor, base2: torch.Tensor | None,
      bias2: torch.Tensor | None, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = _op_plan(spec1, spec2, pads, dtype, tag, params)
    with kernel("lean"):  # the helpers themselves, on fake tensors: the outputs' shapes and dtypes
        y, x_keep, h, _, _ = _forward_tensors(p, x, coef1, base1, bias1, coef2, base2, bias2, tuple(params))
    return y.new_empty(y.shape), x_keep.new_empty(x_keep.shape), h.new_empty(h.shape)


@torch.library.custom_op(f"{_NS}::own_params_ffn_backward", mutates_args=())
def own_params_ffn_backward(spec1: str, spec2: str, pads: list[int], dtype: torch.dtype, tag: str, x_t: torch.Tensor,
                            h: torch.Tensor, coef1: torch.Tensor, base1: torch.Tensor | None, coef2: torch.Tensor,
                            base2: torch.Tensor | None, params: list[torch.Tensor], gy: torch.Tensor,
                            need: list[bool]) -> list[torch.Tensor]:
    """:func:`own_params_ffn`'s backward (``_backward_tensors``): dx, dcoef1, dbase1, dbias1, dcoef2, dbase2, dbias2,
    then the ``params``' gradients; an empty tensor for a gradient not asked for (``need``) or without its tensor."""
    with scoped_kernel("auto"), _keys():
        grads = _own_backward(spec1, spec2, pads, dtype, tag, x_t, h, coef1, base1, coef2, base2, params, gy, need)
    return _fresh(grads, [x_t, h, coef1, base1, coef2, base2, *params, gy])


@own_params_ffn_backward.register_fake
def _(spec1: str, spec2: str, pads: list[int], dtype: torch.dtype, tag: str, x_t: torch.Tensor, h: torch.Tensor,
      coef1: torch.Tensor, base1: torch.Tensor | None, coef2: torch.Tensor, base2: torch.Tensor | None,
      params: list[torch.Tensor], gy: torch.Tensor, need: list[bool]) -> list[torch.Tensor]:
    with kernel("lean"):  # as the forward's fake: the helpers themselves
        grads = _own_backward(spec1, spec2, pads, dtype, tag, x_t, h, coef1, base1, coef2, base2, params, gy, need)
    return [g.new_empty(g.shape) for g in grads]


def _own_backward(spec1: str, spec2: str, pads: list[int], dtype: torch.dtype, tag: str, x_t: torch.Tensor,
                  h: torch.Tensor, coef1: torch.Tensor, base1: torch.Tensor | None, coef2: torch.Tensor,
                  base2: torch.Tensor | None, params: list[torch.Tensor], gy: torch.Tensor, need: list[bool]
                  ) -> list[torch.Tensor]:
    p = _op_plan(spec1, spec2, pads, dtype, tag, params)
    g_x, g_c1, g_w1, g_b1, g_c2, g_w2, g_b2, g_params = _backward_tensors(
        p, x_t, h, coef1, base1, coef2, base2, ((), ()), tuple(params), gy, tuple(need), x_t.shape[0])
    grads = [(g_x, x_t), (g_c1, coef1), (g_w1, base1), (g_b1, coef1), (g_c2, coef2), (g_w2, base2), (g_b2, coef2)]
    return [x_t.new_empty(0) if g is None else g.to(like.dtype) for g, like in grads] + list(g_params)


def _own_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    spec1, spec2, pads, dtype, tag, x, coef1, base1, bias1, coef2, base2, bias2, params = inputs
    _, x_t, h = output
    ctx.static = (spec1, spec2, list(pads), dtype, tag)
    ctx.has = (base1 is not None, bias1 is not None, base2 is not None, bias2 is not None)
    ctx.save_for_backward(x_t, h, coef1, coef1 if base1 is None else base1, coef2, coef2 if base2 is None else base2,
                          *params)


def _own_backward_formula(ctx: Any, gy: torch.Tensor, *_: Any) -> tuple[Any, ...]:
    x_t, h, coef1, base1, coef2, base2, *params = ctx.saved_tensors
    has_base1, has_bias1, has_base2, has_bias2 = ctx.has
    base1, base2 = (base1 if has_base1 else None), (base2 if has_base2 else None)
    # one per operator argument: spec1, spec2, pads, dtype, tag, then x (5), coef1, base1, bias1, coef2, base2, bias2
    needs = ctx.needs_input_grad
    need = [needs[6] or needs[7], has_bias1 and needs[8], needs[9] or needs[10], has_bias2 and needs[11]]
    g_x, g_c1, g_w1, g_b1, g_c2, g_w2, g_b2, *g_params = own_params_ffn_backward(
        *ctx.static, x_t, h, coef1, base1, coef2, base2, params, gy, need)

    def asked(g: torch.Tensor, i: int, present: bool = True) -> torch.Tensor | None:
        return g if present and needs[i] else None

    return (None, None, None, None, None, asked(g_x, 5), asked(g_c1, 6), asked(g_w1, 7, has_base1),
            asked(g_b1, 8, has_bias1), asked(g_c2, 9), asked(g_w2, 10, has_base2), asked(g_b2, 11, has_bias2),
            g_params)


own_params_ffn.register_autograd(_own_backward_formula, setup_context=_own_setup)
