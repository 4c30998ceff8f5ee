"""Compiled CPU loops' element-by-element moves made vector ones (layers/loop_moves.py): the rewrite, its switch, its
place in autotune's keys and at the kit's compile sites, and the same bits from a rewritten loop as from the loop as
generated."""

from typing import Any

import pytest
import torch

from kanformer.layers import autotune, autotune_cache, loop_moves
from kanformer.layers.vecmath import loop_exp

_KERNEL = """
#include <torch/csrc/inductor/cpp_prefix.h>
extern "C"  void  kernel(const at::BFloat16* in_ptr0, const float* in_ptr1, at::BFloat16* out_ptr0, float* out_ptr1)
{
    auto tmp0 = at::vec::Vectorized<at::BFloat16>::loadu(in_ptr0 + static_cast<int64_t>(x1), static_cast<int64_t>(16));
    auto tmp1 = at::vec::Vectorized<float>::loadu(in_ptr1 + static_cast<int64_t>(x1), static_cast<int64_t>(16));
    auto tmp2 = at::vec::Vectorized<at::Half>::loadu(in_ptr2 + static_cast<int64_t>(x1));
    tmp3.store(out_ptr0 + static_cast<int64_t>(x1), static_cast<int64_t>(16));
    tmp_acc0_vec.store(out_ptr1 + static_cast<int64_t>(x0));
    auto tmp75 = at::vec::convert<int32_t,2,float,2>(tmp38);
    auto tmp76 = at::vec::convert<at::BFloat16>(tmp1);
    auto tmp77 = at::vec::convert<at::BFloat16,1,float,2>(tmp39);
    auto tmp82 =
    [&]()
    {
        __at_align__ std::array<int32_t, 32> tmpbuf0;
        tmp81.store(tmpbuf0.data(), static_cast<int64_t>(32));
        __at_align__ std::array<float, 32> tmpbuf_out;
        for (int i = 0; i < static_cast<int64_t>(32); i++)
        {
            tmpbuf_out[i] = c10::bit_cast<float>(tmpbuf0[i]);
        }
        return  at::vec::VectorizedN<float, 2>::loadu(tmpbuf_out.data(), static_cast<int64_t>(32));
    }
    ()
    ;
}
"""


def test_the_rewrite_moves_16_bit_vectors_through_the_helpers_and_leaves_the_rest():
    out = loop_moves.rewrite(_KERNEL)
    assert out.count("namespace kf_vec {") == 1  # the helpers once, after the kernel's prefix
    assert out.index("namespace kf_vec {") > out.index("cpp_prefix.h")
    assert "kf_vec::loadu<at::BFloat16>(in_ptr0 + static_cast<int64_t>(x1), static_cast<int64_t>(16));" in out
    assert "kf_vec::loadu<at::Half>(in_ptr2 + static_cast<int64_t>(x1));" in out
    assert "at::vec::Vectorized<float>::loadu(in_ptr1" in out  # fp32 loads as generated
    assert "kf_vec::store(tmp3, out_ptr0 + static_cast<int64_t>(x1), static_cast<int64_t>(16));" in out
    assert "kf_vec::store(tmp_acc0_vec, out_ptr1 + static_cast<int64_t>(x0));" in out
    assert ".store(" not in out.split("}  // namespace kf_vec")[1]  # every store of the kernel through the helper
    assert "auto tmp75 = kf_vec::to_int32<2>(tmp38);" in out
    assert "auto tmp76 = kf_vec::to_bf16(tmp1);" in out and "auto tmp77 = kf_vec::to_bf16_2(tmp39);" in out
    assert "auto tmp82 =\n    kf_vec::bits_to_float(tmp81)\n    ;" in out  # the lambda through memory replaced
    assert "tmpbuf" not in out
    assert loop_moves.rewrite(out) is out  # rewritten once only
    fp32_only = _KERNEL.replace("at::BFloat16", "float").replace("at::Half", "float")
    out = loop_moves.rewrite(fp32_only)  # no 16-bit value: its bit cast alone (GCC's copy through memory of it
    assert "kf_vec::bits_to_float(tmp81)" in out and "tmpbuf" not in out  # failed store forwarding on an Intel)
    kernel = out.split("}  // namespace kf_vec")[1]
    assert kernel.count(".store(") == 2 and "kf_vec::loadu" not in kernel and "kf_vec::to_int32" not in kernel
    no_cast = fp32_only.split("    auto tmp82 =")[0] + "}\n"
    assert loop_moves.rewrite(no_cast) is no_cast  # nothing to rewrite: as generated
    not_a_kernel = _KERNEL.replace("#include <torch/csrc/inductor/cpp_prefix.h>\n", "")
    assert loop_moves.rewrite(not_a_kernel) is not_a_kernel


def test_the_switch_takes_on_and_off_and_names_them_otherwise(monkeypatch):
    for value, on in (("1", True), ("on", True), ("", True), ("0", False), ("OFF", False)):
        monkeypatch.setenv("KANFORMER_LOOP_MOVES", value)
        assert loop_moves.enabled() is on
    monkeypatch.setenv("KANFORMER_LOOP_MOVES", "maybe")
    with pytest.raises(ValueError, match=r"KANFORMER_LOOP_MOVES='maybe': allowed 1 / on \(the default\) or 0 / off"):
        loop_moves.enabled()


def test_autotune_keys_a_process_without_the_rewrite_apart(monkeypatch):
    """Its loops are other code (timed and compiled apart); with it on, the key is as before. A process that has
    installed it keeps it whatever the variable says later, and is keyed so."""
    from kanformer import create_ffn
    ffn, x = create_ffn("rbf", 16, 24), torch.randn(8, 16)
    monkeypatch.setitem(loop_moves._state, "installed", False)  # as a new process starts
    monkeypatch.delenv("KANFORMER_LOOP_MOVES", raising=False)
    on = autotune_cache.keys(ffn, x)[1]
    monkeypatch.setenv("KANFORMER_LOOP_MOVES", "0")
    off = autotune_cache.keys(ffn, x)[1]
    assert "loop_moves" not in on and off.replace(" | loop_moves=off", "") == on and off != on
    monkeypatch.setitem(loop_moves._state, "installed", True)
    assert autotune_cache.keys(ffn, x)[1] == on


def _mixed(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Two loops: one over a and b with a body in fp32 alone (the row sums of an fp32 value) beside bodies that load
    and store bf16, so the loop takes fp32's vector width and moves half a bf16 vector at a time (as RBF's layers);
    one over c (another shape, a loop of its own) whose every body touches bf16, at bf16's width, with the kit's
    inline exponential (two fp32 vectors a step on AVX-512, each converted to int32 and cast back: the B-spline's).
    The first loop also stores a boolean mask (ATen's ``VecMask``, whose ``store`` is not a const member: RBF's
    compiled reference keeps its cut so)."""
    y = (b * 0.5).exp()
    return ((y * a.float()).to(torch.bfloat16), y.sum(-1), loop_exp(c.float() * 0.3).to(torch.bfloat16),
            a.float() > b)


def _fp32_exp(d: torch.Tensor) -> torch.Tensor:
    """A kernel with no bf16 value: the inline exponential in fp32, whose bit cast alone is rewritten."""
    return loop_exp(d * 0.7)


def _compiled_fresh(*args: torch.Tensor, simdlen: int | None = None, fn: Any = _mixed) -> Any:
    from torch._inductor import config
    from torch._inductor.codecache import PyCodeCache
    torch._dynamo.reset()
    PyCodeCache.cache_clear()  # the graph's module executed afresh, so its kernels are loaded now
    with config.patch({"force_disable_caches": True, "cpp.simdlen": simdlen}):
        return torch.compile(fn, dynamic=False)(*args)


def _vector_isas() -> list[int | None]:
    """This CPU's vector widths to compile for: its own (None), and 256 bits (AVX2's helpers) where it has AVX-512."""
    isa = torch.backends.cpu.get_cpu_capability()
    return [None, 256] if isa.startswith("AVX512") else [None]


@pytest.mark.parametrize("simdlen", _vector_isas())
def test_a_rewritten_loop_gives_the_bits_of_the_loop_as_generated(monkeypatch, simdlen):
    monkeypatch.delenv("KANFORMER_LOOP_MOVES", raising=False)
    assert loop_moves.install() and loop_moves.installed()
    a = (torch.randn(64, 200) * 3).to(torch.bfloat16)  # a width with a tail: the last partial vector too
    b, c = torch.randn(64, 200), (torch.randn(37, 96) * 20).to(torch.bfloat16)
    before = loop_moves.rewritten()
    got = _compiled_fresh(a, b, c, simdlen=simdlen)
    assert loop_moves.rewritten() > before  # its kernel rewritten
    d = torch.randn(23, 45) * 20
    got_fp32 = _compiled_fresh(d, simdlen=simdlen, fn=_fp32_exp)
    assert loop_moves.rewritten() > before + 1
    with loop_moves.suspended():
        mid = loop_moves.rewritten()
        plain = _compiled_fresh(a, b, c, simdlen=simdlen)
        plain_fp32 = _compiled_fresh(d, simdlen=simdlen, fn=_fp32_exp)
        assert loop_moves.rewritten() == mid  # as generated
    assert torch.equal(got_fp32, plain_fp32)
    torch.testing.assert_close(got_fp32, torch.exp(d * 0.7), rtol=3e-7, atol=0)  # ~1 ulp each
    torch._dynamo.reset()
    assert not loop_moves.failures
    for g, p in zip(got, plain, strict=True):
        assert g.dtype == p.dtype and torch.equal(g, p)
    eager = _mixed(a, b, c)
    for g, e in zip(got, eager, strict=True):
        torch.testing.assert_close(g.float(), e.float(), rtol=1e-2, atol=1e-2)


def _to_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16)


def _native_bf16_conversion() -> bool:
    """Whether this CPU's compiled loops are built for AVX-512 with AVX512-BF16 (the rewrite's conversion is then the
    CPU's instruction)."""
    from torch._inductor import cpu_vec_isa
    isa = cpu_vec_isa.pick_vec_isa()
    return bool(isa) and isa.bit_width() == 512 and bool(getattr(isa, "is_avx512_bf16_supported", lambda: False)())


@pytest.mark.parametrize("simdlen", _vector_isas())
def test_a_rewritten_conversion_to_bf16_rounds_as_aten_and_takes_subnormal_inputs_as_zero_where_native(
        monkeypatch, simdlen):
    """fp32 -> bf16 in a rewritten loop: ATen's bits for normal values (rounding ties to even), infinities and
    overflow; a NaN stays a NaN; a subnormal input becomes a zero of its sign where the conversion is the CPU's
    instruction (AVX512-BF16), and ATen's subnormal bf16 elsewhere (256-bit loops, CPUs without it)."""
    monkeypatch.delenv("KANFORMER_LOOP_MOVES", raising=False)
    assert loop_moves.install()
    sources = []
    rewrite = loop_moves.rewrite
    monkeypatch.setattr(loop_moves, "rewrite", lambda src: sources.append(rewrite(src)) or sources[-1])
    ties = torch.tensor([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8), 1.0 + 2 ** -8 + 2 ** -20])
    special = torch.tensor([float("inf"), -float("inf"), 3.4e38, -3.4e38, 0.0, -0.0, 1.2e-38, -1.3e-38])
    subnormal = torch.tensor([1e-39, -1e-39, 1e-45, -5e-41, -6e-39])
    x = torch.cat([torch.randn(200) * 10, ties, special, subnormal, torch.tensor([float("nan")])])
    got = _compiled_fresh(x, simdlen=simdlen, fn=_to_bf16)
    torch._dynamo.reset()
    assert any("kf_vec::to_bf16" in src for src in sources)  # the conversion went through the helper
    want = x.to(torch.bfloat16)
    n = len(x) - len(subnormal) - 1
    assert torch.equal(got[:n].view(torch.int16), want[:n].view(torch.int16))  # ATen's bits
    assert torch.isnan(got[-1])
    sub = got[n: n + len(subnormal)]
    if simdlen is None and _native_bf16_conversion():
        assert torch.equal(sub.view(torch.int16), torch.zeros_like(subnormal).copysign(subnormal).to(
            torch.bfloat16).view(torch.int16))  # zeros of the inputs' signs
    else:
        assert torch.equal(sub.view(torch.int16), want[n: n + len(subnormal)].view(torch.int16))


def test_a_rewritten_kernel_that_fails_to_compile_falls_back_to_the_kernel_as_generated(monkeypatch):
    monkeypatch.delenv("KANFORMER_LOOP_MOVES", raising=False)
    assert loop_moves.install()
    rewrite = loop_moves.rewrite
    monkeypatch.setattr(loop_moves, "rewrite", lambda src: (
        src if rewrite(src) is src else rewrite(src).replace("namespace kf_vec {", "#error no such helper\n", 1)))
    monkeypatch.setattr(loop_moves, "failures", [])
    a, b, c = (torch.randn(8, 40) * 3).to(torch.bfloat16), torch.randn(8, 40), torch.randn(5, 8).to(torch.bfloat16)
    with pytest.warns(UserWarning, match="failed to compile .* runs as generated"):
        got = _compiled_fresh(a, b, c)
    torch._dynamo.reset()
    # kept with the compiler's own error line, and the kernel as generated ran
    assert loop_moves.failures and "CppCompileError" in loop_moves.failures[0]
    assert "error: #error no such helper" in loop_moves.failures[0]
    for g, e in zip(got, _mixed(a, b, c), strict=True):
        torch.testing.assert_close(g.float(), e.float(), rtol=1e-2, atol=1e-2)


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_the_kits_compile_sites_install_it(monkeypatch):
    """The fused helpers, autotune's compiled reference and ``train.compile`` each install the rewrite before they
    compile (as a new process would start: not installed)."""
    from torch._inductor.async_compile import AsyncCompile

    from kanformer import create_ffn
    from kanformer.layers import dispatch
    from kanformer.layers.dispatch import kernel
    from kanformer.train.model_factory import compile_for_training

    monkeypatch.delenv("KANFORMER_LOOP_MOVES", raising=False)
    monkeypatch.setattr(AsyncCompile, "cpp_pybinding", AsyncCompile.cpp_pybinding)  # as it was, after the test
    monkeypatch.setattr(dispatch, "_COMPILED", {})
    for site in ("fused helpers", "compiled reference", "compiled model"):
        monkeypatch.setitem(loop_moves._state, "installed", False)
        if site == "fused helpers":
            with kernel("fused"):
                dispatch._kernel_fn(_double, tag="loop-moves-wiring")
        elif site == "compiled reference":
            autotune.compiled_forward(create_ffn("chebyshev", 8, 12))
        else:
            compile_for_training(torch.nn.Linear(4, 4), "model")
        assert loop_moves.installed(), site
    monkeypatch.setitem(loop_moves._state, "installed", False)
    monkeypatch.setenv("KANFORMER_LOOP_MOVES", "0")  # switched off: none of them installs it
    with kernel("fused"):
        dispatch._kernel_fn(_double, tag="loop-moves-wiring-off")
    assert not loop_moves.installed() and not loop_moves.active()
