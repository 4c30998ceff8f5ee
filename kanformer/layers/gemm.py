"""The matrix products of the kit's FFNs, through the faster of PyTorch's two CPU matmul libraries on this machine.

On a CPU, PyTorch's fp32 ``mm`` calls the BLAS it was built with, MKL in the x86 wheels. On the development machine
(AMD EPYC, AVX-512) MKL reports its generic code path (``MKL_VERBOSE=1``: "for Intel(R) 64 architecture Intel(R)
Architecture processors"), while oneDNN, in the same wheel, runs its AVX-512 kernels (``ONEDNN_VERBOSE=1``:
"brg_matmul:avx512_core"). There, at d 384 / 2048 tokens, oneDNN took 0.53 - 0.88x MKL's time on eleven of the
twelve products of an MLP's and a B-spline FFN's training steps (transposed operands included) and 1.26x on the
twelfth, a transposed first operand with more rows than the product has columns; on a Zen 5 oneDNN ran that one at
0.62x MKL's time, so such products take the library that ran them faster on the machine (``_suits``); at d 128 / 1024
tokens the two were level (``python -m evals.bench_gemm``). bf16 and fp16 products already go to oneDNN inside
PyTorch, CUDA ones to cuBLAS: only fp32 CPU products have a choice.

:func:`mm` and :func:`linear` route such a product through oneDNN (``torch.ops.mkldnn._linear_pointwise``, inside an
operator of this module, so compiled graphs call it as one node, with its autograd formula where autograd records the
product) when the library of the process is ``onednn``, else through PyTorch's own. Every FFN of the kit takes its
products from here: the KAN layers' lean and fused paths and the GELU MLP and SwiGLU baselines, so a comparison has one
library on both sides. The reference paths, which define the layers, keep PyTorch's products.

The library: :func:`set_library` or ``KANFORMER_GEMM``: ``auto`` (default), ``torch`` or ``onednn``. ``auto`` times a
GELU MLP's six products of a training step (d 384, 1536 hidden units, 2048 tokens: the benchmarks' reference shape)
both ways, as :func:`mm` routes them under oneDNN against PyTorch's own, and keeps oneDNN where it is faster by more
than the timing's noise (< 0.95x): the baseline's speed decides, for every FFN alike. Under oneDNN, products whose
first operand is transposed with more rows than the product has columns (weight gradients such as the MLP's first,
``gy^T @ x``: a long sum over the tokens) are timed both ways at the same shape (``_transposed_products``) and stay on
PyTorch's unless oneDNN ran them clearly faster; a pinned ``onednn`` routes them by the same timing. oneDNN copies a
transposed first operand to row-major before it multiplies (PyTorch's eager copy, slow), so the kit's products take
theirs row-major where they can (the wavelet's input-major backward, ``lean._feature_major``), and a compiled graph
makes the copy in its own loop (``_product``).
The choice is made once per machine, vector instructions (``ATEN_CPU_CAPABILITY``) and PyTorch version and kept in
``gemm.json`` beside the autotune cache (``KANFORMER_CACHE``), so every process on the machine, a resumed run's and a
checkpoint's copy of these files included, runs its products the same way. It is made in eager code before anything
is compiled (an FFN's first call; the trainer's ``train.compile`` before it compiles the model); compiled graphs are
guarded on it. A model compiled by hand before any eager call of its FFNs takes PyTorch's products in its graphs:
call :func:`library` first.

**Low precision without native products.** PyTorch's bf16 and fp16 CPU products are oneDNN's only where oneDNN
supports the dtype on the CPU (AVX-512 or AMX); elsewhere they run PyTorch's own fallback kernel: on a 2-core AMD EPYC
with AVX2 only (Zen 3), 2048 x 384 @ 384 x 1536 took 1,971 ms in bf16 and 1,891 ms in fp16 against 20 and 17 ms for
the same rounded operands multiplied in fp32. There :func:`mm` and :func:`linear` multiply the low-precision operands
(autocast's or the tensors' own dtype) in fp32 and round the result back: the same rounded inputs and an fp32
accumulation, as the native kernels do, so only the order of the sums differs (bf16: within 1 ulp of the result's
largest entries); inside a compiled graph, as an operator of this module (``widened_mm``) that the compiler cannot
rewrite into a low-precision product. :func:`native_low_precision` says which case a process is in; the trainer
warns where a run asks for mixed precision on such a CPU, and takes the rest of the model's products (attention, the
head) in fp32 the same way while it trains and evaluates (layers/widen.py).
"""

from __future__ import annotations

import os
import re
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.flop_counter import register_flop_formula

from .machine import cpu_isa, cpu_name, locked_cache

LIBRARIES = ("auto", "torch", "onednn")
# oneDNN is kept below this fraction of PyTorch's own time. Repeated timings on one machine agree within ~1% (the
# development CPU: 0.917, 0.919, 0.921); at 0.9 that machine, where oneDNN ran the MLP's products faster at every width
# (0.88 - 0.98x at d 128, 0.92 at 384, 0.93 at 768), kept PyTorch's, which ran the KAN FFNs' odd widths slower still
# (the demo's GPT-2, RBF x MLP in same-process A/Bs of the two libraries: 0.85 - 0.87 on PyTorch's products, 0.90 -
# 0.92 on oneDNN's, the MLP's own step level)
_CLEAR_WIN = 0.95
_RULE = 5  # the version of the routing (_suits) and of the timing: a change is timed afresh (2: fp32 under autocast;
# 3: the 0.95 threshold, small eager products on PyTorch's; 4: transposed products by class, timed; 5: one class, the
# weight gradients: the wavelet's input-major product takes its first operand row-major)
_NS = re.sub(r"\W", "_", __name__)  # a checkpoint's copy of these files registers its own op

_setting = [os.environ.get("KANFORMER_GEMM", "auto")]
_chosen: list[str | None] = [None]  # the library in force, once resolved (read by compiled graphs: guarded)
_record: dict[str, Any] = {}  # how it was chosen: {library, source, times_ms?, transposed?, transposed_ms?, reason?}
# under oneDNN, the library of each class of products with a transposed first operand of many rows (_transposed_class):
# the machine's timing's, once chosen (read by compiled graphs: guarded); a class not in it stays on PyTorch's
_routes: dict[str, str] = {}
TRANSPOSED_CLASSES = ("weight_grad",)


_LOW = (torch.bfloat16, torch.float16)
MIXED_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # a run's mixed_precision, as a dtype


def _native_support() -> dict[torch.dtype, bool]:
    try:
        ops = torch.ops.mkldnn
        return {torch.bfloat16: bool(ops._is_mkldnn_bf16_supported()),
                torch.float16: bool(ops._is_mkldnn_fp16_supported())}
    except (AttributeError, RuntimeError):  # a PyTorch without oneDNN: its own kernels for both
        return dict.fromkeys(_LOW, False)


_NATIVE = _native_support()  # read once, at import: compiled graphs read the table, never the CPU


def aligned_pad(width: int) -> int:
    """Zero columns that make a width a multiple of 8, so each row of a bf16 operand starts 16-byte aligned, as the
    GPU's fast matmul kernels need (the KAN layers' inputs and outputs on CUDA, layers/lean.py; SwiGLU's hidden,
    layers/baselines.py). cuBLAS takes unaligned rows to slower fallback kernels: on an H200 (bf16, 16k tokens, d_model
    768) the backward products of the RBF FFN's 341-wide hidden gradient ran in sm75 ``align1`` kernels, 0.68 and 0.66
    ms of a 2.42 ms step, the B-spline's 342-wide one in an sm80 ``align2`` kernel, 0.36 of 1.46 ms, SwiGLU's 2050-wide
    hidden in ``align2`` kernels, 2.3 ms against the MLP's 0.95; the MLP's six products took 0.63 ms."""
    return -width % 8


def native_low_precision(dtype: torch.dtype) -> bool:
    """Whether this CPU's bf16 / fp16 products are oneDNN's native ones (True for every other dtype); where not, the
    kit's products in ``dtype`` are taken in fp32 (the module's docstring)."""
    return _NATIVE.get(dtype, True)


def low_precision_warning(mixed_precision: str) -> str | None:
    """What a run should know before it trains in ``mixed_precision`` (``no``, ``bf16``, ``fp16``) on this CPU: None
    where its products are native."""
    dtype = MIXED_PRECISION_DTYPES.get(mixed_precision)
    if dtype is None or native_low_precision(dtype):
        return None
    return (f"mixed_precision {mixed_precision} on a CPU without native {mixed_precision} matrix products "
            f"({cpu_name()}, {cpu_isa()}): PyTorch's own {mixed_precision} products run ~100x slower than fp32 here, "
            f"so the run takes every product in fp32 on the rounded operands ({mixed_precision}'s numerics, and "
            f"casts around each product: ~1.2x fp32's step on the demo's GPT-2). On this machine mixed_precision no "
            f"trains faster.")


def _widened_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The low-precision dtype a CPU product of ``t`` is taken in (autocast's for fp32 operands, the only ones it
    casts; else its own) where this CPU has no native products for it, else None."""
    if t.device.type != "cpu" or not t.is_floating_point():
        return None
    autocast = torch.is_autocast_enabled("cpu") and t.dtype == torch.float32
    dtype = torch.get_autocast_dtype("cpu") if autocast else t.dtype
    return dtype if dtype in _LOW and not _NATIVE[dtype] else None


def _check(name: str) -> str:
    if name not in LIBRARIES:
        raise ValueError(f"Unknown matmul library {name!r} (KANFORMER_GEMM / set_library). "
                         f"Available: {', '.join(LIBRARIES)}")
    return name


def set_library(name: str) -> None:
    """The library of the process' fp32 CPU products: ``auto`` (measured), ``torch`` or ``onednn``."""
    _setting[0] = _check(name)
    _chosen[0] = None
    _record.clear()
    _routes.clear()


def setting() -> str:
    """What the process asked for (``auto`` unless set): the library itself is :func:`library`."""
    return _setting[0]


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def library() -> str:
    """The library in force, chosen now if not yet (under ``torch.compile`` before any eager choice: ``torch``, so
    call this before compiling a CPU model by hand, as ``train.compile`` does)."""
    if _chosen[0] is None:
        if torch.compiler.is_compiling():
            return "torch"
        _chosen[0] = _resolve()
    return _chosen[0]


def choose_for(module: torch.nn.Module) -> None:
    """The library chosen now, in eager code, where ``module`` has parameters on a CPU: before ``torch.compile`` of it,
    whose graphs traced before any choice take PyTorch's products (and an operator run eagerly inside them, the wavelet
    FFN's, would choose it mid-step, so that the next step compiled the model again)."""
    if any(p.device.type == "cpu" for p in module.parameters()):
        library()


def routing() -> str:
    """The library in force and, under oneDNN, each class of transposed products (:func:`_transposed_class`) it leaves
    to PyTorch's (``onednn``; ``onednn; weight_grad by torch``): what a compiled graph's fp32 CPU products are made
    for, as autotune keys its compiles and timings."""
    lib = library()
    if lib != "onednn":
        return lib
    return lib + "".join(f"; {kind} by torch" for kind in TRANSPOSED_CLASSES if _routes.get(kind) != "onednn")


def chosen() -> dict[str, Any]:
    """:func:`record` once the library is chosen, else {} (choosing nothing)."""
    return dict(_record) if _chosen[0] is not None else {}


def record() -> dict[str, Any]:
    """How this process's library was chosen (for a run's ``versions.json`` and the benchmarks' headers)."""
    library()
    return dict(_record)


def _resolve() -> str:
    setting = _check(_setting[0])
    if setting == "torch":
        _record.update(library=setting, source="set")
        return setting
    if setting == "onednn" and not onednn_available():
        raise ValueError("matmul library 'onednn' needs a PyTorch built with oneDNN (mkldnn); use auto or torch")
    if not onednn_available():
        _record.update(library="torch", source="no oneDNN in this PyTorch")
        return "torch"
    # keyed by the machine (and the vector instructions in force), PyTorch and this rule only, not the layer code or
    # the model: every process on a machine (a resumed run's, a checkpoint's copy of these files) runs its products the
    # same way, whatever it runs first
    key = f"{cpu_name()} | {os.cpu_count()} cores | {cpu_isa()} | torch {torch.__version__} | rule {_RULE}"
    with locked_cache("gemm.json") as data:  # one timing per machine: ranks starting together wait for the first's
        kept = data.get(key)
        if kept is None:
            kept = data[key] = _timed()
            source = "timed"
        else:
            source = "cache"
    _routes.update(kept.get("transposed", {}))
    if setting == "onednn":  # pinned: the machine's timing still routes its transposed products
        _record.update({k: v for k, v in kept.items() if k.startswith("transposed")}, library="onednn", source="set")
        return "onednn"
    _record.update(kept, source=source)
    return kept["library"]


def _transposed_products(width: int, tokens: int, g: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One product of each class of :func:`_transposed_class` at the reference shape: the GELU MLP's first weight
    gradient, (4 width, tokens) @ (tokens, width)."""
    gy, x = torch.randn(tokens, 4 * width, generator=g), torch.randn(tokens, width, generator=g)
    return {"weight_grad": (gy.t(), x)}


def _in_turns(runs: dict[str, Any], products: list[tuple[torch.Tensor, torch.Tensor]], repeats: int
              ) -> dict[str, float]:
    """ms a pass over ``products`` (``repeats`` passes a turn) of each of ``runs`` (name -> fn(a, b)), the runs taking
    turns: 8 rounds, the first warming up; medians."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(8):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(repeats):
                for a, b in products:
                    run(a, b)
            if r:
                times[name].append((time.perf_counter() - start) / repeats)
    return {name: round(statistics.median(t) * 1e3, 3) for name, t in times.items()}


def _timed(width: int = 384, tokens: int = 2048) -> dict[str, Any]:
    """A GELU MLP's six products (``width``, 4 x ``width`` hidden units, ``tokens``) routed as :func:`mm` routes them
    under oneDNN, against all six by PyTorch's own, in turns (7 rounds, each of >= ~3 GFLOP): the baseline's speed
    decides, for every FFN alike. Before them, what routes them: one product of each class of transposed first operand
    (``_transposed_products``) both ways, in turns, each class oneDNN's where it ran clearly faster (``_faster``)."""
    g = torch.Generator().manual_seed(0)
    products = []
    for i, o in ((width, 4 * width), (4 * width, width)):
        x, w, gy = (torch.randn(*s, generator=g) for s in ((tokens, i), (o, i), (tokens, o)))
        products += [(x, w.t()), (gy, w), (gy.t(), x)]  # forward, input gradient, weight gradient
    repeats = max(1, round(3e9 / (6 * 2 * tokens * width * 4 * width)))
    both: dict[str, Any] = {"torch": lambda a, b: a @ b, "onednn": lambda a, b: _onednn_linear(a, b.t(), None)}
    # fp32 products, whatever the first call that asks for the library runs under: chosen inside bf16 autocast, the
    # timing once took PyTorch's side in bf16 (its fallback kernel on an AVX2 CPU: 0.68 s a product, 35 s in all) and
    # kept oneDNN for the machine; and outside any dispatch mode the caller is in (a FlopCounterMode counted the
    # timing's 230 GFLOP as a B-spline layer's)
    with torch.autocast("cpu", enabled=False), _disable_current_modes():
        try:
            both["onednn"](*products[0])
        except Exception as err:  # an unsupported build: PyTorch's own products
            return {"library": "torch", "reason": f"oneDNN failed: {type(err).__name__}: {err}".splitlines()[0]}
        by_class = {kind: _in_turns(both, [pair], 2 * repeats)
                    for kind, pair in _transposed_products(width, tokens, g).items()}
        transposed = {kind: _faster(ms) for kind, ms in by_class.items()}
        _routes.clear()
        _routes.update(transposed)  # the MLP's products timed as they will be routed
        ms = _in_turns({"torch": both["torch"], "onednn": _product}, products, repeats)
    return {"library": _faster(ms), "times_ms": ms, "transposed": transposed, "transposed_ms": by_class}


def _faster(ms: dict[str, float]) -> str:
    """The library that ``auto`` keeps from its timing (ms per library): oneDNN only where clearly faster."""
    return "onednn" if ms["onednn"] < _CLEAR_WIN * ms["torch"] else "torch"


# Products of fewer multiply-adds stay on PyTorch's: oneDNN's call costs ~12 us more (the development CPU, d 128,
# 1 - 16 rows: 18 - 35 against 6 - 22 us), which a product this small does not win back (at d 128 PyTorch's ran
# faster up to 64 rows, 4.2 M multiply-adds; at d 384 oneDNN already at 1 row, 0.59 M). Generation's few-token
# products are such: the demo's MLP GPT-2 generated 1,882 against 2,337 tokens/s with every product on oneDNN. Eager
# code decides before the call (``_suits``: no autograd Function either); a compiled graph's token count is symbolic,
# so there the operator decides on the shapes it is called with (``_linear``), and one graph serves every count.
_SMALL_MACS = 1 << 19


def _small(rows: int, inner: int, cols: int) -> bool:
    return rows * inner * cols < _SMALL_MACS


def _transposed_class(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """For ``a @ b`` with ``a`` transposed (column-major), ``b`` row-major and more rows than the product has columns,
    its class: ``weight_grad`` (``gy^T @ x``: the sum runs over the tokens); None for every other product. Until the
    routing's fifth version a second class, ``input_major`` (``b`` column-major: ``W^T @ gy^T``, the wavelet's
    backward), was timed apart; that product now takes its first operand row-major, and no product of the kit has the
    layout."""
    if a.is_contiguous() or not a.t().is_contiguous() or a.shape[0] <= b.shape[1] or not b.is_contiguous():
        return None
    return "weight_grad"


def _suits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether oneDNN takes ``a @ b``: always, but for a transposed ``a`` with more rows than the product has columns,
    whose class (:func:`_transposed_class`) takes the library the machine's timing ran faster (PyTorch's unless
    oneDNN's clearly), and, outside compiled graphs (whose token count is symbolic), a product of fewer than
    ``_SMALL_MACS`` multiply-adds. On the development machine (Zen 4) oneDNN ran a GELU MLP's first weight gradient,
    1536 x 2048 @ 2048 x 384, slower than MKL (20.9 against 15.7 ms) and every other product of an MLP's or a KAN
    FFN's step faster (its second weight gradient 15.7 against 20.0 ms; a KAN layer's, 171 x 2048 @ 2048 x 3456, 15.6
    against 23.8; the six products of a d 384 step: MLP 0.76x, B-spline / RBF 0.67x); on a Zen 5 that weight gradient
    took 7.2 against 11.7 ms."""
    if not torch.compiler.is_compiling() and _small(a.shape[0], a.shape[1], b.shape[1]):
        return False
    kind = _transposed_class(a, b)
    return kind is None or _routes.get(kind) == "onednn"


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` as oneDNN takes it without a copy: row- or column-major. Other strides are copied first (a sliced
    operand, row stride > width, ran ~700x slower than contiguous when passed as it was)."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight^T (+ bias)`` by oneDNN: fp32 CPU 2-d operands, each row- or column-major; by PyTorch's where the
    product is small (``_SMALL_MACS``: a compiled graph's call with few tokens, as generation makes)."""
    if _small(x.shape[0], x.shape[1], weight.shape[0]):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(_dense(x), _dense(weight), bias, "none", [], "")


def _linear_fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


# The product is an operator of its own (a CPU kernel and a fake one, no autograd), so compiled graphs call it as one
# node; where autograd records the product (the baselines' forward), :class:`_Recorded` adds the formula. Defined with
# ``torch.library.custom_op`` instead (autograd, redispatch and backend selection in Python around every call), a
# product took ~15 us longer even without grad (16 x 128 @ 128 x 512, eager, warm: 69 against 54 us; the bare oneDNN
# call 50 us), and several times that between the large kernels of a training step, which leave Python's code and
# data out of the caches. Same-process A/Bs of the FFN step (fwd + bwd, fp32, 2-core CPU) against the custom op for
# every product, the KAN FFN and the GELU MLP each against its own old step: d 128 / 1024 tokens, RBF 0.97x (MLP
# 0.95x, its step 8.3 ms), the wavelet 0.96x (MLP 0.97x); RBF at 64 tokens 0.91x (MLP 0.92x); d 384 / 2048 tokens,
# B-spline 0.99x (MLP 0.99x, its step 91 ms). Every FFN gains alike, so the KAN / MLP ratios hardly move.
_LIB = torch.library.Library(_NS, "FRAGMENT")  # kept: the operator lives as long as this object
_LIB.define("onednn_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_LIB.impl("onednn_linear", _linear, "CPU")
torch.library.register_fake(f"{_NS}::onednn_linear", _linear_fake, lib=_LIB)
# getattr, not torch.ops.__getattr__: called directly, that makes the namespace afresh, dropping its operator packets,
# and FlopCounterMode, which finds a formula by the packet, found none for onednn_linear (a GELU MLP counted 0 FLOPs)
_onednn_linear = getattr(torch.ops, _NS).onednn_linear.default


class _Recorded(torch.autograd.Function):
    """The oneDNN product with its autograd formula: the backward's two products are taken the same way."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_bias = ctx.needs_input_grad
        g_x = _product(g, weight) if need_x else None  # (N, O) @ (O, I)
        g_w = _product(g.t(), x) if need_w else None  # (O, N) @ (N, I)
        return g_x, g_w, g.sum(0) if ctx.has_bias and need_bias else None


@register_flop_formula(getattr(torch.ops, _NS).onednn_linear)
def _flops(x_shape: Any, w_shape: Any, bias_shape: Any, out_shape: Any = None, **_: Any) -> int:
    """What ``FlopCounterMode`` counts for ``mm``: 2 FLOPs a multiply-add (the bias not counted, as for addmm)."""
    return 2 * x_shape[0] * x_shape[1] * w_shape[0]


def _product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b (+ bias)``, by oneDNN where it suits the operands (the library already chosen).

    oneDNN copies a first operand that is not row-major (a weight gradient's ``gy^T``) inside its call, by PyTorch's
    eager transposing copy, which is slow: 2.2 - 2.7 ms for the GELU MLP's (2048, 1536) ``gy`` at d 384, 0.23 ms for
    its (1024, 512) at d 128, against 0.49 and 0.08 for the compiler's tiled loop (2-core Zen 5). So in a compiled
    graph the copy is made before the call, in the compiler's loop (docs/speed.md, *Transposed operands*)."""
    if _suits(a, b):
        if torch.compiler.is_compiling() and not a.is_contiguous():
            a = a.contiguous()
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (a, b, bias)):
            return _Recorded.apply(a, b.t(), bias)
        return _onednn_linear(a, b.t(), bias)
    return a @ b if bias is None else torch.addmm(bias, a, b)


def _onednn_applies(*tensors: torch.Tensor | None) -> bool:
    """fp32 CPU operands, none empty, autocast off (under autocast PyTorch casts to its low dtype, whose products
    are oneDNN's already), and the process's library oneDNN."""
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu" or not t.numel()):
            return False
    return not torch.is_autocast_enabled("cpu") and library() == "onednn"


def _wide(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype).float()  # rounded as the low-precision product would take it


def _widened(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, low: torch.dtype) -> torch.Tensor:
    """``a @ b (+ bias)`` on the operands rounded to ``low``, multiplied in fp32, the result rounded to ``low``."""
    with torch.autocast("cpu", enabled=False):
        return mm(_wide(a, low), _wide(b, low), _wide(bias, low)).to(low)


def _widened_fake(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, low: torch.dtype) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[1], dtype=low)


# Inside a compiled graph the widened product is an operator of its own too. Traced as plain casts around an fp32
# product, the compiler drops the casts of the backward's products and multiplies the bf16 operands with PyTorch's
# fallback kernel (the generated code: ``extern_kernels.mm`` on bf16 buffers): on the AVX2 machine a compiled GELU
# MLP's step at d 384, 2048 tokens under bf16 autocast took 3.8 s against the eager step's 0.14 s.
_LIB.define("widened_mm(Tensor a, Tensor b, Tensor? bias, ScalarType low) -> Tensor")
_LIB.impl("widened_mm", _widened, "CPU")
torch.library.register_fake(f"{_NS}::widened_mm", _widened_fake, lib=_LIB)
_widened_mm = getattr(torch.ops, _NS).widened_mm.default


class _Widened(torch.autograd.Function):
    """The widened product in a compiled graph, its backward's two products widened the same way: the gradients
    eager autograd takes through the casts of :func:`_widened` (each rounded to ``low``, then to its input's dtype)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
                low: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.low, ctx.bias_dtype = low, None if bias is None else bias.dtype
        return _widened_mm(a, b, bias, low)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        need_a, need_b, need_bias, _ = ctx.needs_input_grad
        g_a = _widened_mm(g, b.t(), None, ctx.low).to(a.dtype) if need_a else None
        g_b = _widened_mm(a.t(), g, None, ctx.low).to(b.dtype) if need_b else None
        g_bias = g.float().sum(0).to(ctx.low).to(ctx.bias_dtype) if ctx.bias_dtype and need_bias else None
        return g_a, g_b, g_bias, None


@register_flop_formula(getattr(torch.ops, _NS).widened_mm)
def _widened_flops(a_shape: Any, b_shape: Any, bias_shape: Any, low: Any = None, out_shape: Any = None,
                   **_: Any) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` (2-d), plus ``bias`` (1-d, per column) if given, through the process's library (low precision
    without native products: in fp32, rounded back; the module's docstring)."""
    low = _widened_dtype(a)
    if low is not None:  # eagerly the casts themselves (autograd records them), in a compiled graph the operator
        return _Widened.apply(a, b, bias, low) if torch.compiler.is_compiling() else _widened(a, b, bias, low)
    if _onednn_applies(a, b, bias):
        return _product(a, b, bias)
    return a @ b if bias is None else torch.addmm(bias, a, b)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (x of any leading dims) through the process's library (low precision without
    native products: in fp32, rounded back)."""
    low = _widened_dtype(x)
    if low is not None:
        if torch.compiler.is_compiling():
            y = _Widened.apply(x.reshape(-1, x.shape[-1]), weight.t(), bias, low)
            return y.view(*x.shape[:-1], weight.shape[0])
        with torch.autocast("cpu", enabled=False):  # eagerly F.linear on the widened operands
            return linear(_wide(x, low), _wide(weight, low), _wide(bias, low)).to(low)
    if x.dim() >= 2 and _onednn_applies(x, weight, bias):
        y = _product(x.reshape(-1, x.shape[-1]), weight.t(), bias)
        return y.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """``nn.Linear`` whose product comes from :func:`linear` (same parameters, state dict and hooks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
