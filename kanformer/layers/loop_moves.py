"""Compiled CPU loops' element-by-element moves made vector ones: half-vector bf16 / fp16 loads and stores, the inline
exponential's float -> int32 conversion at bf16's loop width, and its bit cast at any width; and fp32 -> bf16 by the
CPU's own instruction where it has one.

PyTorch's C++ code generator gives a fused loop fp32's vector width (16 lanes on AVX-512) when any computation fused
into it touches no low-precision value (``python -m benchmarks.profile_ffn --loop-widths`` lists such loops). Its
bf16 / fp16 loads and stores then move half a 16-bit vector each, and ATen's vector library makes every such partial
move a masked one (AVX-512: a masked 512-bit load or store; AVX2: a copy through a buffer). On the 2-core Zen 5 of the
development machine a stream of masked 32-byte loads and stores took 1.41 - 1.53 ms where plain 256-bit ones took
0.55 - 0.57 ms (14 MB copied, one thread; the same bytes). RBF's LayerNorm keeps its layers' fused loops at fp32's
width, and its layer-1 backward loop, which reads nine bf16 gradient blocks a token and writes eight bf16 feature
blocks, took 2.9 ms of a 24.6 ms FFN step (d 384, 2048 tokens, bf16 autocast), 1.6 ms with the moves made plain.

A loop at bf16's width computes in pairs of fp32 vectors (``VectorizedN<float, 2>`` on AVX-512), for which ATen has no
float -> int32 conversion but an element-by-element one, and the code generator bit-casts int32 to float (the 2^k of
``vecmath.loop_exp``) by storing the vector, copying it element by element and loading it back. At two vectors the copy
stays a scalar loop: in the B-spline's layer-1 backward loop (its SiLU's exponential) the two took about a fifth of the
loop's samples under ``perf``. At fp32's width GCC 12 reduced the copy to nothing on the AMD machines; on an Intel Xeon
with AMX (``-march=native``, which GCC 12 takes for a Rocket Lake: 256-bit vectors preferred) it stores the 512-bit
vector as two 256-bit halves and multiplies by the whole reloaded at once, a load the CPU cannot forward from the two
stores: a third of the samples of RBF's hottest fp32 loop fell on the instruction after that load. So fp32 kernels
take the bit cast's rewrite too (the FFN step x the MLP's, d 384 fp32, there: B-spline 1.18 -> 1.15, RBF 1.25 -> 1.19,
the wavelet 1.28 -> 1.19; docs/speed.md, *A fourth machine*).

ATen converts fp32 to bf16 with integer arithmetic, about eight vector instructions for 16 values (its rounding to
nearest even and its NaN made by hand), and every KAN loop of a bf16 step writes its features so, eight or nine values
an input. A CPU with AVX512-BF16 (Zen 4 and 5, Intel from Cooper Lake) converts 16 or 32 values in one instruction,
with the same rounding. Its loops' conversions take that instruction: the compiled loops of an FFN step (d 384, 2048
tokens, bf16 autocast, 2-core Zen 5; processes alternating, each loop's time under the profiler, summed) took RBF
7.4 - 8.5 against 8.1 - 10.6 ms a step (four pairs), Chebyshev 3.7 - 4.9 against 4.2 - 5.3 (three), the B-spline
4.1 - 6.6 against 4.7 - 7.8 (seven; five in its favour); the steps, ~2 % (docs/speed.md, *The CPU's own conversion to
bf16*). The one difference in value: the instruction takes a subnormal fp32 input (below 2^-126 in magnitude) as
zero, where ATen rounds it to a subnormal bf16, and a NaN stays a NaN with other payload bits. The bf16 values these
loops write feed the CPU's bf16 products, whose dot-product instructions (AVX512-BF16's, AMX's) take subnormal inputs
as zero in any case.

:func:`install` rewrites each C++ kernel's source before it is compiled: every load of a 16-bit vector goes through
``kf_vec::loadu`` and every store of a vector through ``kf_vec::store``, which move exactly half a 16-bit vector with
one unmasked half-width instruction (AVX-512, AVX2) and hand everything else to ATen as before; the conversion and the
bit cast of several vectors go through ``kf_vec::to_int32`` and ``kf_vec::bits_to_float``, one vector instruction per
vector, and fp32 -> bf16 through ``kf_vec::to_bf16`` (AVX512-BF16's instruction where the kernel is compiled for it,
else ATen's). The values are the same (but for subnormal inputs to bf16, above), so results are bit for bit those of
the unrewritten loop (the tests compare them).
The compiler caches its graphs as generated and the rewrite is applied each time a kernel is loaded, so a process
without it (``KANFORMER_LOOP_MOVES=0``) reads the same cache and compiles its own kernels. Installed for the process by
the kit's compile sites (the fused helpers, the compiled reference, a compiled model): every C++ kernel compiled in
the process after that takes it, a user's own compiled code too; in kernels with no bf16 / fp16 value only the bit
casts are rewritten. Where a rewritten kernel fails to compile, the original source is compiled instead, with a
warning, and the failure kept in :data:`failures`. ``cpp_wrapper`` graphs (one C++ module for the whole graph) are
not rewritten.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

_PREFIX = "#include <torch/csrc/inductor/cpp_prefix.h>\n"
_MARK = "namespace kf_vec {"
_HELPERS = _MARK + r"""
template <typename T> constexpr bool lowp16 = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;
template <typename T>
inline at::vec::Vectorized<T> loadu(const void* p, int64_t count = at::vec::Vectorized<T>::size()) {
  if constexpr (lowp16<T>) {
    if (count == at::vec::Vectorized<T>::size() / 2) {
#if defined(CPU_CAPABILITY_AVX512)
      return at::vec::Vectorized<T>(_mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(CPU_CAPABILITY_AVX2)
      return at::vec::Vectorized<T>(_mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#endif
    }
  }
  return at::vec::Vectorized<T>::loadu(p, count);
}
inline at::vec::Vectorized<float> bits_to_float(const at::vec::Vectorized<int32_t>& v) {
  return at::vec::cast<float>(v);
}
template <int N> inline at::vec::VectorizedN<float, N> bits_to_float(const at::vec::VectorizedN<int32_t, N>& v) {
  at::vec::VectorizedN<float, N> r;
  for (int i = 0; i < N; i++) r[i] = at::vec::cast<float>(v[i]);
  return r;
}
template <int N> inline at::vec::VectorizedN<int32_t, N> to_int32(const at::vec::VectorizedN<float, N>& v) {
  at::vec::VectorizedN<int32_t, N> r;
  for (int i = 0; i < N; i++) r[i] = at::vec::convert<int32_t>(v[i]);
  return r;
}
template <typename V> struct lowp16_vec : std::false_type {};
template <typename T> struct lowp16_vec<at::vec::Vectorized<T>> : std::bool_constant<lowp16<T>> {};
// the value by copy: ATen's VecMask::store is not a const member (a stored boolean mask)
template <typename V, typename P> inline void store(V v, P p) { v.store(p); }
template <typename V, typename P> inline void store(V v, P p, int64_t count) {
  if constexpr (lowp16_vec<V>::value) {
    if (count == V::size() / 2) {
#if defined(CPU_CAPABILITY_AVX512)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_castsi512_si256(__m512i(v)));
      return;
#elif defined(CPU_CAPABILITY_AVX2)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(__m256i(v)));
      return;
#endif
    }
  }
  v.store(p, count);
}
// fp32 -> bf16: ATen's conversion, as generated (the templates), but for the CPU's own where it has one (the
// overloads, chosen over the templates: AVX512-BF16, one instruction for 16 or 32 values where ATen rounds with
// integer arithmetic, ~8 instructions a vector)
template <typename V> inline auto to_bf16(const V& v) { return at::vec::convert<at::BFloat16>(v); }
template <typename V> inline auto to_bf16_2(const V& v) { return at::vec::convert<at::BFloat16, 1, float, 2>(v); }
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
inline at::vec::Vectorized<c10::BFloat16> to_bf16(const at::vec::Vectorized<float>& v) {
  return at::vec::Vectorized<c10::BFloat16>(_mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(__m512(v))));
}
inline at::vec::VectorizedN<c10::BFloat16, 1> to_bf16_2(const at::vec::VectorizedN<float, 2>& v) {
  at::vec::VectorizedN<c10::BFloat16, 1> r;
  r[0] = at::vec::Vectorized<c10::BFloat16>((__m512i)_mm512_cvtne2ps_pbh(__m512(v[1]), __m512(v[0])));
  return r;
}
#endif
}  // namespace kf_vec
"""
_LOADS = {f"at::vec::Vectorized<{t}>::loadu(": f"kf_vec::loadu<{t}>(" for t in ("at::BFloat16", "at::Half")}
_STORE = re.compile(r"\b(tmp\w*)\.store\(")
# the code generator's bit cast of an int32 vector to float (2^k of the inline exponentials, vecmath.py): a lambda that
# stores the vector, copies it element by element and loads it back
_BITCAST = re.compile(
    r"\[&\]\(\)\s*\{\s*__at_align__ std::array<int32_t, (\d+)> tmpbuf0;\s*(tmp\w+)\.store\(tmpbuf0\.data\(\), "
    r"static_cast<int64_t>\((\w+)\)\);\s*__at_align__ std::array<float, \1> tmpbuf_out;\s*"
    r"for \(int i = 0; i < static_cast<int64_t>\(\3\); i\+\+\)\s*\{\s*"
    r"tmpbuf_out\[i\] = c10::bit_cast<float>\(tmpbuf0\[i\]\);\s*\}\s*"
    r"return\s+at::vec::(?:VectorizedN<float, ?\d+>|Vectorized<float>)::loadu\(tmpbuf_out\.data\(\), "
    r"static_cast<int64_t>\(\3\)\);\s*\}\s*\(\)")
# float -> int32 of several vectors, which ATen converts element by element
_TO_INT32 = re.compile(r"at::vec::convert<int32_t,(\d+),float,\1>\(")
# float -> bf16 of one vector and of two (a loop at bf16's width)
_TO_BF16 = {"at::vec::convert<at::BFloat16>(": "kf_vec::to_bf16(",
            "at::vec::convert<at::BFloat16,1,float,2>(": "kf_vec::to_bf16_2("}

failures: list[str] = []  # kernels whose rewritten source failed to compile (the original compiled instead)
_state: dict[str, Any] = {"installed": False, "rewritten": 0, "suspended": False}


def enabled() -> bool:
    """Whether this process rewrites its loops' moves (``KANFORMER_LOOP_MOVES``: ``0`` turns it off)."""
    value = os.environ.get("KANFORMER_LOOP_MOVES", "1").strip().lower()
    if value not in ("0", "1", "off", "on", ""):
        raise ValueError(f"KANFORMER_LOOP_MOVES={value!r}: allowed 1 / on (the default) or 0 / off")
    return value not in ("0", "off")


def rewrite(source: str) -> str:
    """``source`` (a compiled CPU kernel's C++) with its 16-bit vector loads, its vector stores, and its conversions
    and bit casts of several vectors through the helpers (where it holds no 16-bit value: its bit casts alone);
    unchanged where there is nothing to rewrite, it is not an inductor kernel, or it was rewritten already."""
    if _PREFIX not in source or _MARK in source:
        return source
    out, casts = _BITCAST.subn(r"kf_vec::bits_to_float(\2)", source)
    if not any(t in source for t in ("at::BFloat16", "at::Half")):  # an fp32 loop: its bit casts alone
        return out.replace(_PREFIX, _PREFIX + _HELPERS, 1) if casts else source
    out, converts = _TO_INT32.subn(r"kf_vec::to_int32<\1>(", out)
    moves = casts + converts
    for old, new in (*_LOADS.items(), *_TO_BF16.items()):
        moves += out.count(old)
        out = out.replace(old, new)
    out, stores = _STORE.subn(r"kf_vec::store(\1, ", out)
    if not moves and not stores:
        return source
    return out.replace(_PREFIX, _PREFIX + _HELPERS, 1)


def install() -> bool:
    """Rewrites, from now on, every C++ kernel this process compiles (see the module's docstring); once per process,
    nothing where ``KANFORMER_LOOP_MOVES=0`` or this PyTorch compiles its kernels otherwise. Whether installed."""
    if _state["installed"]:
        return True
    if not enabled():
        return False
    try:
        from torch._inductor.async_compile import AsyncCompile
        from torch._inductor.codecache import CodeCacheFuture, CppPythonBindingsCodeCache, LambdaFuture
    except ImportError:
        return False
    original = getattr(AsyncCompile, "cpp_pybinding", None)
    if original is None:
        return False

    @functools.wraps(original)
    def cpp_pybinding(self: Any, argtypes: list[str], source_code: str) -> Any:
        new = source_code if _state["suspended"] else rewrite(source_code)
        if new is source_code:
            return original(self, argtypes, source_code)
        _state["rewritten"] += 1
        try:
            result = original(self, argtypes, new)
        except Exception as err:  # noqa: BLE001 - a helper this compiler refuses: the kernel as generated
            return _fallback(err, lambda: original(self, argtypes, source_code))
        if isinstance(result, CodeCacheFuture):  # compiled in a worker: its failure shows when the graph waits
            def settle() -> Any:
                try:
                    return result.result()
                except Exception as err:  # noqa: BLE001 - as above
                    return _fallback(err, lambda: CppPythonBindingsCodeCache.load_pybinding(argtypes, source_code))
            return LambdaFuture(settle, getattr(result, "future", None))
        return result

    AsyncCompile.cpp_pybinding = cpp_pybinding
    _state["installed"] = True
    return True


def _fallback(err: BaseException, compile_original: Any) -> Any:
    failures.append(_reason(err))
    if len(failures) == 1:
        warnings.warn(f"kanformer: a compiled CPU loop with its moves rewritten (half-vector moves, bit casts) failed "
                      f"to compile ({failures[0]}); it runs as generated, as will any other whose rewrite fails "
                      "(KANFORMER_LOOP_MOVES=0 skips the rewrite)", stacklevel=2)
    return compile_original()


def _reason(err: BaseException) -> str:
    """The failure's first line, and the compiler's first ``error:`` line where its message holds one (a C++ compile
    error's first line says only that it is one)."""
    lines = f"{type(err).__name__}: {err}".splitlines()
    errors = [line.strip() for line in lines[1:] if "error:" in line]
    return (lines[0] + (f" ({errors[0]})" if errors else ""))[:400]


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Kernels loaded inside compile as generated (an A/B of the rewrite in one process; a kernel already loaded
    stays as it was loaded)."""
    was, _state["suspended"] = _state["suspended"], True
    try:
        yield
    finally:
        _state["suspended"] = was


def installed() -> bool:
    return bool(_state["installed"])


def active() -> bool:
    """Whether this process's kernels take the rewrite: installed, or to be when the kit first compiles (what
    ``autotune`` keys on; the switch is read once, at the install)."""
    return installed() or enabled()


def rewritten() -> int:
    """Kernels rewritten in this process so far (each load of a kernel counts)."""
    return int(_state["rewritten"])
