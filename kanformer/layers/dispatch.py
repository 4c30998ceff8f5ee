"""Which path a KAN layer takes, and the compiled or hand-written versions of the lean path's helpers.

Dispatch (the KAN FFNs' ``forward`` through :func:`tuned_call`, ``KANLinear.forward``): ``set_kernel("auto" | "lean" |
"fused" | "triton" | "reference")`` or the ``KANFORMER_KERNEL`` environment variable. ``fused`` is the lean path with
each basis' (and GR-KAN's) elementwise work compiled by torch.compile into fused loops (C++ on CPU, Triton on GPU;
compiled once per configuration, kept in the compiler's on-disk cache); a basis may give a compiler-friendly form for it
(``fused_state()`` and ``fused_term(u, j, *state) -> (f_j(u), f_j'(u))``, or ``fused_terms(u, *state)`` for every j,
elementwise expressions instead of scatters or host reads), from which the backward evaluates each function once for
both the recomputed features and the input gradient. ``auto`` (the default), when autograd records (training): the path
``autotune`` measured fastest for the FFN on this machine within the memory rule; inside a ``kernel("auto")`` block, and
with ``KANFORMER_AUTOTUNE=0``, the fixed rule instead: the hand-written Triton kernels where they apply (CUDA), else
``fused``, falling back to ``lean`` (eager) for the rest of the process if compiling fails. Without autograd (inference)
``auto`` takes the compiled path (fused, Triton) that this process chose for training the FFN, whose graphs serve the
forward as they are; in a process that only evaluates, the forward path timed for it (the reference until then;
``autotune.inference_path``). Under ``torch.compile`` (a compiled model, ``train.compile``) ``auto``, ``fused`` and
``lean`` trace a KAN FFN's two-layer Function into the model's graph (:func:`traced`: its lean forms and analytic
backward, compiled with the rest of the model; under the ``lean`` memory rule the backward recomputes the features from
the inputs the forward kept, as the eager path does: :func:`kept_for_recompute`), where the FFN can take it
(layers/lean_ffn.py's ``plan``); every other layer, and every layer under ``reference``, takes the reference path, whose
fusion and recomputation (min-cut rematerialisation) the compiler then does; ``triton`` its custom ops. ``reference``
forces the definition.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import types
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.modules import module as _module

from .autotune import choice as autotune_choice
from .autotune import compiled_forward, kernel_memory
from .autotune import compiled_ready as autotune_compiled_ready
from .autotune import enabled as autotune_enabled
from .autotune import inference_path as autotune_inference_path
from .compile_options import get_compile_options, options_tag
from .gemm import choose_for as choose_gemm_for
from .gemm import library as gemm_library
from .loop_moves import install as install_loop_moves
from .triton_kan import triton_available

KERNELS = ("auto", "lean", "fused", "triton", "reference")
# The path a KAN layer takes, most specific first: a ``kernel(...)`` block forces one on everything inside it; a
# module's own ``kernel_mode`` (``set_kernel(model, mode)``) holds while it runs (and in its backward); else the
# process default (``set_kernel(mode)``, ``KANFORMER_KERNEL``, auto).
_mode = [os.environ.get("KANFORMER_KERNEL", "auto")]
_scoped: list[str | None] = [None]
_forced: list[str | None] = [None]


def _check(mode: str) -> str:
    if mode not in KERNELS:
        raise ValueError(f"Unknown KAN kernel {mode!r}. Available: {', '.join(KERNELS)}")
    return mode


def set_kernel(target: str | torch.nn.Module, mode: str | None = None) -> None:
    """``set_kernel(mode)``: the process default, one of ``KERNELS`` (auto unless ``KANFORMER_KERNEL`` says).
    ``set_kernel(model, mode)``: the path of ``model``'s KAN layers only, whatever the process default (``None``:
    follow it again), so two models with different paths can live in one process."""
    if isinstance(target, str):
        _mode[0] = _check(target)
        return
    mode = None if mode is None else _check(mode)
    for module in target.modules():
        if hasattr(module, "kernel_mode"):
            module.kernel_mode = mode


def get_kernel() -> str:
    return _check(_forced[0] or _scoped[0] or _mode[0])


@contextlib.contextmanager
def _holding(slot: list[str | None], value: str | None) -> Iterator[None]:
    previous, slot[0] = slot[0], value
    try:
        yield
    finally:
        slot[0] = previous


def kernel(mode: str) -> contextlib.AbstractContextManager[None]:
    """``with kernel("reference"): ...`` runs a block on the given path, every module's own choice included (nothing
    is measured inside it); the previous state is restored on exit."""
    return _holding(_forced, _check(mode))


def default_kernel(mode: str) -> contextlib.AbstractContextManager[None]:
    """The process default for a block (unlike ``kernel``, modules' own paths and ``auto``'s measuring still
    apply); restored on exit."""
    return _holding(_mode, _check(mode))


def scoped_kernel(mode: str | None) -> contextlib.AbstractContextManager[None]:
    """The path of one module's call (its ``kernel_mode``; None: no change); a ``kernel(...)`` block still wins."""
    return _holding(_scoped, (mode if mode is None else _check(mode)) or _scoped[0])


def on_forward_path(mode: str | None, backward: Any, ctx: Any, gy: torch.Tensor) -> Any:
    """``backward(ctx, gy)`` of a Function whose forward ran on the path ``mode``, on that path; traced into a compiled
    model's graph, as it is (no path to set there)."""
    if torch.compiler.is_compiling():
        return backward(ctx, gy)
    with scoped_kernel(mode):
        return backward(ctx, gy)


def resolve(ffn: torch.nn.Module, x: torch.Tensor) -> str | None:
    """The path for one call of a KAN FFN: its own ``kernel_mode`` (None: the process's), except that under
    ``auto`` a training call takes the path ``autotune`` measured fastest for this FFN, shapes and machine, and a
    call without autograd the compiled path chosen for its training, or timed for evaluation."""
    own = getattr(ffn, "kernel_mode", None)
    mode = _forced[0] or own or _scoped[0] or _mode[0]
    if mode != "auto" or _forced[0] or torch.compiler.is_compiling() or not autotune_enabled():
        return own
    if x.dim() == 0 or x.shape[-1] != getattr(ffn, "d_model", x.shape[-1]) or not x.shape[-1]:
        return own  # bad input: the FFN's own error, nothing timed (every candidate failing would be cached)
    if not torch.is_grad_enabled():  # evaluation: training's compiled path where this process has one
        return autotune_inference_path(ffn, x) or own
    return autotune_choice(ffn, x)


def path_state() -> tuple[str | None, str | None, str]:
    """The path settings in force now: a ``kernel(...)`` block's, the running module's own, the process default (what
    decides a call's path beside the modules' own ``kernel_mode``; layers/few_tokens.py's ``recall`` compares them)."""
    return _forced[0], _scoped[0], _mode[0]


def _hooked(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` has hooks of its own (they see every layer's call: the per-layer path serves it)."""
    return bool(layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks
                or layer._backward_pre_hooks)


def _global_hooks() -> bool:
    """Whether modules' global hooks are registered (they see every layer's call: the per-layer path serves)."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or _module._global_backward_pre_hooks)


def few_tokens_compiled(ffn: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether the fused path's graph for a call of few tokens without autograd (layers/few_tokens.py) may run now:
    where a path is pinned (or ``auto`` measures nothing), at once, compiled on its first call as every fused graph
    is; under ``auto``, once a background compile of its own has put it in the compiler's cache (started by such a
    call once the FFN's other helpers are compiled; until then the call takes the forward graph training compiled),
    so no call compiles it from scratch."""
    if _forced[0] or getattr(ffn, "kernel_mode", None) or _mode[0] != "auto" or not autotune_enabled():
        return True
    return autotune_compiled_ready(ffn, x)


def prepare_products(x: torch.Tensor) -> None:
    """The process's fp32 CPU matmul library (layers/gemm.py), chosen for a CPU input before anything on it is timed or
    compiled (eager code: its graphs bake the choice in). Other devices' products never use it: nothing is timed."""
    if x.device.type == "cpu":
        gemm_library()


def tuned_call(ffn: torch.nn.Module, x: torch.Tensor, body: Any) -> torch.Tensor:
    """``body(x)`` on the path :func:`resolve` gives (its backward follows it)."""
    prepare_products(x)
    mode = resolve(ffn, x)
    if mode is None:  # the usual pinned case: the process's path (nothing to trace under torch.compile)
        return body(x)
    if mode == "compiled":  # auto measured torch.compile of this FFN's reference fastest
        if torch.is_grad_enabled() and not x.requires_grad:
            # its graphs are guarded on the input taking a gradient, and were compiled (in the background) and timed
            # for one that does; an input that takes none (an FFN behind frozen layers, or on data directly) had them
            # compiled afresh, in the step (Chebyshev FFN, d 16): an alias of it that takes one (a gradient computed
            # and dropped) runs those graphs
            x = x.detach().requires_grad_()
        return compiled_forward(ffn)(x)
    with scoped_kernel(mode):
        return body(x)


def traced() -> bool:
    """Whether a KAN FFN's lean Function is traced into a ``torch.compile``'d graph now: compiling, on ``auto``,
    ``fused`` or ``lean`` (inside a compiled graph the three are one: the lean forms, compiled)."""
    return torch.compiler.is_compiling() and get_kernel() in ("auto", "lean", "fused")


# One op namespace per copy of this file: a checkpoint's portable modeling code carries its own copy, which may be
# imported into a process that already registered the package's op.
_NS = re.sub(r"\W", "_", __name__)


@torch.library.custom_op(f"{_NS}::opaque_copy", mutates_args=())
def _opaque_copy(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` that the compiler cannot see through (a custom op: its graph passes drop a plain clone)."""
    return x.clone()


@_opaque_copy.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def realized(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` as they are, except while a graph is traced, where each comes through an opaque copy: the compiler
    then keeps it as a buffer of its own instead of recomputing it inside every loop that reads it. For small tables
    gathered per channel (GR-KAN's coefficients, by group): recomputed in the loops, the gather made every element's
    loads indirect, and a compiled GR-KAN FFN (d 128, 1024 tokens) took 1.83x the GELU MLP's step where the eager
    fused path took 1.34x in the same run; with its tables realized, 1.13 against 1.13."""
    if not torch.compiler.is_compiling():
        return tensors
    return tuple(_opaque_copy(t) for t in tensors)


def kept_for_recompute(*kept: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What a lean Function's backward recomputes from (its inputs as the forward kept them): as they are, except
    when traced into a compiled graph under the ``lean`` memory rule (``autotune.set_kernel_memory``), where each
    comes through an opaque copy. The backward's features then differ from the forward's to the compiler: it cannot
    merge the two (common subexpressions), so its partitioner saves the inputs, not the features, and the compiled
    model keeps the eager lean path's memory. Merged, they were saved: an RBF FFN at d 128, 1024 tokens, saved 10.0 MB
    for its backward, the eager lean path 0.8, the GELU MLP 5.2; copied, 1.3 (its weights' matmul layouts included).
    Under ``fast``, the compiler's choice: less recomputation, more memory."""
    if not torch.compiler.is_compiling() or kernel_memory() != "lean":  # eager: nothing to read
        return kept
    return realized(*kept)


def use_lean(available: bool = True) -> bool:
    """Whether a module with a lean path (``available``) takes it now."""
    mode = get_kernel()
    if mode == "reference" or not available:
        return False
    if mode == "triton":
        return True  # custom ops: torch.compile traces through them
    if torch.compiler.is_compiling():
        return False  # the compiler fuses and rematerialises the reference itself (lean's helpers are eager code)
    if mode in ("lean", "fused"):
        return True
    # auto: the lean path exists to keep activations out of memory, so it serves training; without autograd
    # (evaluation, generation) nothing is saved anyway and, uncompiled, the reference forward has less overhead per
    # call (a KAN FFN's calls get training's compiled path in tuned_call, where it has one)
    return torch.is_grad_enabled()


_COMPILED: dict[str, Any] = {}  # fused mode: torch.compile'd helpers by "qualified name[tag]" (+ compile options)
_TRITON: dict[str, Any] = {}  # helper name -> its hand-written Triton kernel (filled below, once the helpers exist)
_FUSED_FAILED: list[str] = []  # why compiling failed in this process (auto then stays on the lean path)


def prepare_compile(module: torch.nn.Module) -> None:
    """What ``torch.compile`` of ``module`` (a model, an FFN) needs done first, in eager code: the fp32 CPU products'
    library chosen (``gemm.choose_for``: graphs traced before a choice take PyTorch's products) and the C++ loops'
    rewrite installed (``loop_moves``), as the fused helpers have them. ``train.compile`` and the benchmarks call it."""
    choose_gemm_for(module)
    install_loop_moves()


def _fused() -> bool:
    """Whether the elementwise helpers run compiled now: kernel ``fused``, or ``auto`` while compiling works here."""
    mode = get_kernel()
    return mode == "fused" or (mode == "auto" and not _FUSED_FAILED)


def per_token(*tensors: torch.Tensor, dim: int = 0) -> None:
    """Marks the token dim (``dim``: 0, or -1 for input-major tensors) of a compiled helper's per-token arguments
    dynamic, before the call: the helpers compile with that one size symbolic, so one graph serves every token count,
    and everything else static. Static widths and Python numbers (the B-spline's polynomial coefficients, the RBF's
    width) are constants in the compiled loops and plain comparisons in its guards; compiled with ``dynamic=True``
    instead, the numbers were graph inputs (host-to-tensor copies on every call) guarded by ~95 Python lambdas per
    layer, and the input width symbolic. The switching call of ``auto`` on a warm compiler cache (B-spline FFN, d 384)
    took 12.3 against 14.7 s."""
    if torch.compiler.is_compiling():
        return  # traced into a compiled model: its own shapes rule
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, dim % t.dim())


# Compiler options a fused helper is compiled with unless the process's own (layers/compile_options.py) set them: by the
# helper's qualified name. GR-KAN's: its rational R(x) = P(x) / Q(x) is recomputed in every loop that reads it rather
# than stored in fp32 between the loops. By default the compiler keeps a value that more than one loop reads, in a
# buffer of its own, where it reads more than 4 buffers or takes more than 50 operations: the backward's helpers wrote R
# and z in fp32 (N, C) and read them back down the columns for the coefficient gradients' sums. d 384 on an Intel Xeon
# with AMX, FFN step x the MLP's: bf16 1.20 - 1.32 (five runs) -> 0.95 - 1.00 (eight; one process timing both: 1.12 ->
# 0.97), fp32 1.16 -> 1.12 (one process). Not for the KAN bases: with the same options in a same-process A/B the
# B-spline's step took 0.97x its time, RBF's 0.95x after a 13-minute compile, Chebyshev's, Jacobi's, MultKAN's and the
# wavelet's 1.03 - 1.07x.
_RECOMPUTE = {"realize_cpu_opcount_threshold": 1000, "realize_reads_threshold": 100}
HELPER_OPTIONS: dict[str, dict[str, Any]] = {name: _RECOMPUTE for name in (
    "rational_values", "rational_backward", "_rational_ffn_forward", "_rational_ffn_backward")}


@functools.cache
def _helper_options(name: str, process: str) -> tuple[dict[str, Any], str]:
    """(options, their tag) for the helper ``name`` under the process's options (their tag): its own defaults
    (``HELPER_OPTIONS``, read once a helper and process setting) beneath the process's. Cached: each call of a helper
    asks."""
    options = {**HELPER_OPTIONS.get(name, {}), **(json.loads(process) if process else {})}
    return options, options_tag(options)


def _kernel_fn(fn: Any, x: torch.Tensor | None = None, tag: str = "") -> Any:
    """``fn`` itself; its hand-written Triton kernel (layers/triton_kan.py) where one exists and runs on ``x``
    (kernels auto / triton); or, when ``_fused()``, its torch.compile'd version (one fused loop: C++ on CPU, Triton
    on GPU; compiled once per process and configuration, the token count dynamic where the caller marks it with
    :func:`per_token`). Under ``auto`` a compilation that fails (no C++ compiler, say) is reported once and the
    process continues on the eager helpers.

    Traced into a compiled model (:func:`traced`), ``fn`` itself: the model's graph compiles it.

    ``tag`` (the basis class and the layer's shapes) gives each configuration its own compiled copy: torch.compile
    keeps one cache per code object, limited to a few entries, and a copy that met a second width would recompile
    with that width symbolic (its automatic dynamic shapes)."""
    if torch.compiler.is_compiling():
        return fn  # traced into a compiled model: compiled with it
    mode = get_kernel()
    if x is not None:  # the entry points (tuned_call, the bare layers' lean functions) prepared the rest
        prepare_products(x)
    if x is not None and fn.__name__ in _TRITON and mode in ("auto", "triton") and triton_available(x):
        return _TRITON[fn.__name__]
    if not _fused():
        return fn
    options, named = _helper_options(fn.__qualname__, options_tag(get_compile_options()))  # each its own copies
    key = f"{fn.__qualname__}[{tag}]{named}"
    if key not in _COMPILED:
        # a distinct code object, so a distinct compile cache, under its own name: dynamo keeps the sizes each
        # function has met by file, line and name (its automatic dynamic shapes), and copies sharing a name shared
        # that record: the second layer width any copy met made the width symbolic in every copy compiled after
        code = fn.__code__.replace(co_name=key, co_qualname=key)
        copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        install_loop_moves()  # its C++ loops' half-vector bf16 moves unmasked (layers/loop_moves.py)
        _COMPILED[key] = torch.compile(copy, options=dict(options) or None)  # static but for the dims per_token marks
    if mode == "fused":
        return _COMPILED[key]
    return functools.partial(_compiled_or_eager, fn, _COMPILED[key])


def _compiled_or_eager(fn: Any, compiled: Any, *args: Any) -> Any:
    try:
        return compiled(*args)
    except Exception as err:  # the eager helper decides whether this is the input's fault or the compiler's
        result = fn(*args)  # raises the input's own error
        _FUSED_FAILED.append(f"{type(err).__name__}: {err}".splitlines()[0])
        warnings.warn(f"KAN kernel 'auto': compiling the fused helpers failed ({_FUSED_FAILED[0]}); continuing on "
                      "the lean (eager) path. Set kernel 'lean' to skip the attempt.", RuntimeWarning, stacklevel=2)
        return result
