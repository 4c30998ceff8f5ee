"""A KAN or GR-KAN FFN's calls without autograd of few tokens (a generation step's): the graph made for them, the
weights' low-precision copies and GR-KAN's per-channel tables they keep, and the kept call, which runs that graph
again on the last call's arguments while nothing it read has changed.

The training path (layers/lean_ffn.py's two-layer Function, layers/lean_rational.py's GR-KAN Function) lays each
layer's weights out for a step's thousands of tokens; a call without autograd of few tokens takes the graph below
instead (``lean_ffn.lean_kan_ffn`` calls ``_few_tokens_call``; GR-KAN's forward graph serves such calls as it is).
What such a call would otherwise make again is kept while its sources are unchanged (their versions and storages)
and dropped by the first call with autograd (``_drop_kept``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .compile_options import get_compile_options
from .dispatch import _global_hooks, _hooked, _kernel_fn, few_tokens_compiled, path_state, per_token, tuned_call
from .gemm import mm
from .lean import _channel_tables, _features, _low, _pre, _silu, _terms, node_products
from .registry import FFN

if TYPE_CHECKING:
    from .lean_ffn import Plan


# -- few tokens without autograd (generation) -----------------------------------------------------------------------
# The forward graph lays each layer's weights out basis-major, (O, (B+1) I), matching its (N, B+1, I) features: a copy
# of the weights on every call, which a training step's thousands of tokens amortise, but which a generation step's
# few tokens do not (its products read the weights once, and the copy reads and writes them again). A call without
# autograd of at most ``_FEW_TOKENS`` x the hidden width tokens lays the features out instead, input-major (N, I, B),
# so the coefficients (O, I, B) serve the product as they are stored, and the base branch takes a product of its own:
# no copy of the weights, no padding, nothing kept. FFN forward without autograd, 2-core development CPU, fp32, one
# process, this graph against the training forward's, the B-spline FFN (ms; docs/speed.md, *Generation*): d 128
# (hidden 57), 4 tokens 0.23 / 0.27, 32 tokens 0.47 / 0.52, 64 level (0.45 / 0.43), 128 0.97 / 0.85; d 384 (hidden
# 171), 4 tokens 0.52 / 1.34, 128 tokens 3.05 / 4.43, 256 5.05 / 6.48, 512 level (8.85 / 9.57; Chebyshev 7.95 / 7.98).
# The values are written input-major as each function's come: stacked basis-major and transposed after, the graph made
# one more pass and one more parallel region a layer (the graph alone, one process, 12 interleaved rounds, in us: d 128
# / 4 tokens B-spline 110 -> 106 and 133 -> 112, RBF 112 -> 106, Chebyshev 84 -> 78, the wavelet 132 -> 115; d 128 /
# 32 tokens B-spline 216 -> 205, RBF 170 -> 167; d 384 / 4 tokens B-spline 392 -> 380, RBF 445 -> 420).
_FEW_TOKENS = 1  # x the hidden width (layer 1's outputs)
# For the fewest tokens the graph's products are sums in its own loops (``_few_product``): a call of the matmul
# library, its threads' start and a copy in and out, cost more there than the arithmetic. The graph alone, one
# process, 10 interleaved rounds, us, products by the library / as sums: d 128 B-spline 1 token 73 / 52, 2 98 / 77, 4
# 117 / 96, 8 144 / 129, 12 134 / 129, 16 141 / 153, 24 163 / 206 (Chebyshev 2 74 / 45, 16 137 / 123, 24 166 / 163;
# RBF 2 97 / 71, 8 124 / 114; the wavelet 2 98 / 91, 8 147 / 149); d 384 B-spline 1 172 / 108, 2 263 / 172, 3 343 /
# 276, 8 395 / 510, bf16 2 251 / 170, 4 276 / 281; Chebyshev bf16 1 172 / 91, 2 177 / 148, 3 183 / 250; d 768
# B-spline 1 835 / 434, 2 1,462 / 1,029, 3 1,843 / 1,841; Chebyshev bf16 1 482 / 269, 2 337 / 456. The sums win up
# to about 2^21 multiply-adds (tokens x weights) at d 128, and at every width for one token (two in fp32).
_TINY_MACS = 1 << 21
_TINY_TOKENS = {torch.float32: 2, torch.float64: 2}  # the fewest tokens at any width (1 in low precision)


# Low-precision copies of the weights calls of few tokens multiply (under bf16 / fp16 autocast), by the parameter they
# copy, as autocast keeps its casts of the MLP's weights for a whole region: cast inside the graph, a generation step
# read the fp32 weights and wrote them again in bf16 before its products, and a KAN FFN's bf16 step took about as long
# as its fp32 one while the MLP's took two thirds (d 384, 4 tokens, 2-core CPU). A copy serves while its parameter is
# unchanged (its version and storage: a write through ``.data``, which counts no version, goes unseen, as it does by
# autocast's own copies within a region); the first call with autograd (training) drops them all, so they cost memory
# (half the FFN's fp32 weights) only while a process generates. Generated tokens/s x the MLP GPT-2's, bf16, one
# process, cast on every call -> kept (4 x d layers, batch 4, 32 new tokens, 4 interleaved rounds): d 384 B-spline
# 0.65 -> 0.74 and 0.65 -> 0.75, RBF 0.62 -> 0.74, Chebyshev 0.70 -> 0.83; d 128 B-spline 0.64 -> 0.68, Chebyshev
# 0.72 -> 0.73.
_LOW_WEIGHTS = WeakIdKeyDictionary()


def _kept(store: WeakIdKeyDictionary, sources: tuple[torch.Tensor, ...], dtype: torch.dtype,
          make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``store`` under ``sources[0]`` while every tensor of ``sources`` is unchanged (its version
    and storage) and ``dtype`` is the same: what calls without autograd derive from parameters (``_LOW_WEIGHTS``,
    ``_TABLES``), dropped by the first call with autograd (``_drop_kept``)."""
    key = (*_versions(sources), dtype)
    kept = store.get(sources[0])
    if kept is None or kept[0] != key:
        kept = store[sources[0]] = (key, make())
    return kept[1]


def _drop_kept() -> None:
    """Outside a compiled graph (which reads no dict), a call with autograd (training: the parameters change from step
    to step) drops what calls without autograd kept."""
    if not torch.compiler.is_compiling() and torch.is_grad_enabled():
        for store in (_LOW_WEIGHTS, _TABLES, _RECALLED):
            if store:
                store.clear()


def _low_weight(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype``: the copy an earlier call of few tokens made, while ``t`` is unchanged since."""
    if t is None or t.dtype == dtype:
        return t
    return _kept(_LOW_WEIGHTS, (t,), dtype, lambda: t.detach().to(dtype))


# GR-KAN's per-channel coefficient tables for calls without autograd, by the numerator parameter they gather: made on
# every call (eager gathers and copies outside the graph, four a table), they took about a quarter of a generation
# step's FFN call (4 tokens, d 128, 2-core CPU). A table serves while its parameters and group index are unchanged
# (their versions and storages; a write through ``.data`` goes unseen, as by ``_LOW_WEIGHTS``), and the first call with
# autograd (training, whose parameters change from step to step) drops them all; a few numbers a channel.
_TABLES = WeakIdKeyDictionary()


def _kept_tables(num: torch.Tensor, den: torch.Tensor, group: torch.Tensor, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``lean._channel_tables`` of a GroupRational's parameters, as an earlier call without autograd made them while
    they are unchanged since."""
    return _kept(_TABLES, (num, den, group), dtype, lambda: _channel_tables(num.detach(), den.detach(), group, dtype))


def few_tokens(ffn: Any, tokens: int) -> bool:
    """Whether a call of ``tokens`` tokens without autograd takes the graph of few tokens (on the fused path)."""
    return tokens <= _FEW_TOKENS * ffn.fc1.out_features


def tiny_tokens(ffn: Any, dtype: torch.dtype) -> int:
    """Up to how many tokens the graph of few tokens takes its products as sums in its own loops (``_few_product``),
    its matmuls computing in ``dtype``: tokens x the FFN's weights at most ``_TINY_MACS`` multiply-adds, and at any
    width ``_TINY_TOKENS``."""
    weights = sum(t.numel() for fc in (ffn.fc1, ffn.fc2) for t in (getattr(fc, "coef", None),
                                                                   getattr(fc, "base_weight", None)) if t is not None)
    return max(_TINY_MACS // max(1, weights), _TINY_TOKENS.get(dtype, 1))


def _tiny(ffn: Any, tokens: int, dtype: torch.dtype) -> bool:
    """``tokens <= tiny_tokens(ffn, dtype)``, the weights not counted where the token count alone decides (a
    generation step of one sequence: one token)."""
    return tokens <= _TINY_TOKENS.get(dtype, 1) or tokens <= tiny_tokens(ffn, dtype)


def _few_product(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, tiny: bool) -> torch.Tensor:
    """``a`` (N, K) times ``w`` (O, K) transposed, plus ``bias``; ``tiny``: as sums in the graph's own loops (in fp32,
    rounded once, as a low-precision product accumulates), not a call of the matmul library."""
    if not tiny:
        return mm(a, w.t(), bias)
    y = (_low(a)[:, None, :] * _low(w)[None]).sum(-1)
    return (y if bias is None else y + _low(bias)).to(a.dtype)


def _few_tokens_layer(basis: Any, x: torch.Tensor, coef: torch.Tensor, base: torch.Tensor | None,
                      bias: torch.Tensor | None, state: tuple[torch.Tensor, ...] | None,
                      pre: tuple[torch.Tensor, ...] | None, dtype: torch.dtype, tiny: bool) -> torch.Tensor:
    """One layer's output from input-major features (N, I B) and the coefficients (O, I, B) as they are stored, plus
    the base branch's product: ``lean._lean_forward``'s y without its copy of the weights (``tiny``:
    ``_few_product``'s)."""
    n, o = x.shape[0], coef.shape[0]
    u, _ = _pre(basis, x, pre)
    if state is not None:  # each function's values written input-major as they come: (N, I, B)
        feats = torch.stack([v.to(dtype) for v in _terms(basis, _low(u), state)[0]], dim=2).reshape(n, -1)
    else:  # (N, B, I) -> (N, I B)
        feats = _features(basis, u, None, state, dtype).transpose(1, 2).reshape(n, -1)
    y = _few_product(feats, coef.to(dtype).reshape(o, -1), None if bias is None else bias.to(dtype), tiny)
    if base is not None:
        y = y + _few_product(_silu(_low(x)).to(dtype), base.to(dtype), None, tiny)
    return y


def _few_tokens_forward(basis1: Any, basis2: Any, x: torch.Tensor, layer1: tuple[Any, ...], layer2: tuple[Any, ...],
                        dtype: torch.dtype, products: tuple[int, int] | None, tiny: bool = False) -> torch.Tensor:
    """y of both layers for a call of few tokens without autograd; ``layer``: (coef, base, bias, state, pre), unpadded;
    ``tiny``: ``tiny_tokens``. One compiled graph in the fused mode, and one more for ``tiny``."""
    h = _few_tokens_layer(basis1, x, *layer1, dtype, tiny)
    if products is not None:
        h = node_products(h, products[0])
    return _few_tokens_layer(basis2, h, *layer2, dtype, tiny)


def _few_tokens_call(ffn: Any, x: torch.Tensor, p: Plan) -> torch.Tensor | None:
    """``_few_tokens_forward`` of ``x`` (N, I) where it serves this call (else None): not inside a compiled model
    (whose graph compiles the Function with the rest), no autograd, no inference mode (which the compiled graphs are
    not made for), at most ``_FEW_TOKENS`` x the hidden width tokens, its compiled graph to be had without compiling
    it now (``dispatch.few_tokens_compiled``)."""
    if (torch.compiler.is_compiling() or torch.is_grad_enabled() or torch.is_inference_mode_enabled()
            or not few_tokens(ffn, x.shape[0]) or not few_tokens_compiled(ffn, x)):
        return None
    fc1, fc2 = ffn.fc1, ffn.fc2
    pre1, pre2 = fc1.basis.lean_pre_params(), fc2.basis.lean_pre_params()
    w1, w2 = ((_low_weight(t, p.dtype) for t in (fc.coef, fc.base_weight, fc.bias)) for fc in (fc1, fc2))
    per_token(x)
    args = (p.basis1, p.basis2, x, (*w1, p.state1, pre1), (*w2, p.state2, pre2), p.dtype, p.products,
            _tiny(ffn, x.shape[0], p.dtype))
    call = _kernel_fn(_few_tokens_forward, tag=p.tag + "|few")
    autocast = torch.is_autocast_enabled(x.device.type)
    y = _call_few(call, args, autocast, x.device.type)
    served(ffn, y, call, args[:2], args[3:], autocast)
    return y


def _call_few(call: Any, args: tuple[Any, ...], autocast: bool, device: str) -> torch.Tensor:
    """``call(*args)``, with autocast off where it is on (entering the context: ~2.5 us of a one-token call's ~80)."""
    if not autocast:
        return call(*args)
    with torch.autocast(device, enabled=False):
        return call(*args)


# -- a call of few tokens without autograd like the FFN's last one: its arguments kept -----------------------------
# A generation step calls each FFN on as many tokens as the step before, on the same path, weights and settings, and
# the kit's Python decided it all again in every call (the path, the two-layer plan, the weights' low-precision
# copies, the basis' state, the graph's arguments): d 128, 4 tokens, B-spline FFN, 2-core Zen 5, the call took 117 us
# pinned to ``fused`` and 133 under ``auto`` (settled), the graph of few tokens' own call 63, the MLP's whole call 49.
# A call that the graph of few tokens served (GR-KAN's: its forward's graph, ``lean_rational._rational_ffn_no_grad``) is
# remembered with what decided it (``_call_state``: the input's shape, dtype and device, autocast, the path settings,
# its layers' own paths and hooks, compile options, the thresholds of few tokens) and what it read (every module,
# parameter and buffer of the FFN, by identity, and each tensor's version and storage); a next call where all of these
# are the same calls the graph with the kept arguments. Anything else (a parameter written in place or replaced, a grid
# moved, another path, autocast or token count) takes the whole path again, which remembers afresh. A write through
# ``.data`` (no version) goes unseen, as by the kept weights (``_low_weight``), and as the graph's guards would not see
# it either. The first call with autograd drops what is kept (``_drop_kept``).
_RECALLED = WeakIdKeyDictionary()  # ffn -> _Recall
_SERVED: list[Any] = [None]  # the FFN a ``recall`` runs the whole path of, then what its graph ran


def served(ffn: Any, y: torch.Tensor, call: Any, head: tuple[Any, ...], tail: tuple[Any, ...], autocast: bool
           ) -> None:
    """Where a ``recall`` of ``ffn`` waits, what its graph just ran (``y = call(*head, x, *tail)``, under ``autocast``
    or not): what the recall keeps for the FFN's next such call. Called by each graph a kept call may run."""
    if _SERVED[0] is ffn:
        _SERVED[0] = (ffn, y, call, head, tail, autocast)


@dataclass(frozen=True, repr=False)  # its tensors are the FFN's: not printed
class _Recall:
    state: tuple[Any, ...]
    options: dict[str, Any]
    modules: tuple[torch.nn.Module, ...]  # the FFN's submodules (not the FFN: the store holds it weakly)
    members: tuple[Any, ...]
    tensors: tuple[torch.Tensor, ...]
    versions: list[tuple[int, int]]
    call: Any
    head: tuple[Any, ...]  # the graph's arguments before the input, and after it
    tail: tuple[Any, ...]
    autocast: bool


def _call_state(ffn: Any, x: torch.Tensor) -> tuple[Any, ...] | None:
    """What decides a call's path and arguments beside the FFN's own tensors; None where no kept call may serve
    (autograd, inference mode, inside a compiled graph)."""
    if torch.compiler.is_compiling() or torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        return None
    device = x.device.type
    autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device)
    layers = tuple(ffn._modules.values())  # a KAN FFN's two KANLinears, GR-KAN's rationals and linears
    return (x.shape, x.dtype, x.device, autocast, path_state(), ffn.kernel_mode,
            tuple(getattr(m, "kernel_mode", None) for m in layers), _global_hooks() or any(map(_hooked, layers)),
            _FEW_TOKENS, _TINY_MACS, _TINY_TOKENS)


def _members(ffn: Any, modules: tuple[torch.nn.Module, ...]) -> list[Any]:
    """Every submodule, parameter and buffer the FFN and its ``modules`` hold now, in order (None where one is
    registered so)."""
    out: list[Any] = []
    for m in (ffn, *modules):
        out.extend(m._modules.values())
        out.extend(m._parameters.values())
        out.extend(m._buffers.values())
    return out


def _versions(tensors: tuple[torch.Tensor, ...]) -> list[tuple[int, int]]:
    """Each tensor's version and storage: what an in-place write or a new storage changes."""
    return [(t._version, t.data_ptr()) for t in tensors]


def _kept_call(ffn: Any, state: tuple[Any, ...]) -> _Recall | None:
    """The FFN's kept call where it serves a call in ``state``: the same settings, the same modules and tensors, none
    written since."""
    r = _RECALLED.get(ffn)
    if r is None or r.state != state or r.options is not get_compile_options():
        return None
    members = _members(ffn, r.modules)
    if len(members) != len(r.members) or not all(map(operator.is_, members, r.members)):
        return None
    return r if _versions(r.tensors) == r.versions else None


def recall(ffn: Any, x: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``call(x)``, the FFN's whole call, or, for a call without autograd that the graph of few tokens served the last
    time in the same state (see above), that graph on the kept arguments."""
    state = _call_state(ffn, x)
    if state is None:
        return call(x)
    kept = _kept_call(ffn, state)
    if kept is not None:
        x2 = x.reshape(-1, x.shape[-1])
        per_token(x2)
        y = _call_few(kept.call, (*kept.head, x2, *kept.tail), kept.autocast, x.device.type)
        return y.reshape(*x.shape[:-1], y.shape[-1])
    _SERVED[0] = ffn
    try:
        y = call(x)
        served = _SERVED[0]
    finally:
        _SERVED[0] = None
    if isinstance(served, tuple) and served[0] is ffn and served[1].data_ptr() == y.data_ptr():  # y: that graph's
        modules = tuple(m for m in ffn.modules() if m is not ffn)
        members = tuple(_members(ffn, modules))
        tensors = tuple(t for t in members if isinstance(t, torch.Tensor))
        _RECALLED[ffn] = _Recall(state, get_compile_options(), modules, members, tensors, _versions(tensors),
                                 *served[2:])
    return y


class PathFFN(FFN):
    """An FFN whose calls take the kit's paths: a generation step's call as the one before it where it can be (the
    kept call, :func:`recall`), else ``auto``'s choice for this FFN (``dispatch.tuned_call``) of the subclass's own
    ``_forward``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recall(self, x, self._call)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return tuned_call(self, x, self._forward)
