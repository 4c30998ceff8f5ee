"""Compiler options for the fused path's helpers (layers/compile_options.py): checked, kept apart, timed."""

import json

import pytest
import torch

from kanformer import create_ffn
from kanformer.layers import autotune_cache, background_compile, compile_options, dispatch, lean_ffn
from kanformer.layers.compile_options import get_compile_options, options_tag, set_compile_options
from kanformer.layers.dispatch import default_kernel, kernel


@pytest.fixture
def fresh_options(monkeypatch):
    """The process's options unread (as in a new process), restored afterwards."""
    monkeypatch.setattr(compile_options, "_OPTIONS", [None])
    monkeypatch.delenv("KANFORMER_COMPILE_OPTIONS", raising=False)


def test_compile_options_are_checked_and_come_from_the_environment_or_the_api(fresh_options, monkeypatch):
    assert get_compile_options() == {}  # nothing set: torch.compile's defaults
    for bad, why in (([1], "compile options are a JSON object"), ({"no_such_option": 1}, "'no_such_option'"),
                     ({"cpp_wrapper": object()}, "take JSON values")):
        with pytest.raises(ValueError, match=why):
            set_compile_options(bad)
    assert get_compile_options() == {}  # a refused setting changes nothing
    with pytest.raises(ValueError, match="e.g. cpp_wrapper, triton.cudagraphs"):
        set_compile_options({"no_such_option": 1})

    monkeypatch.setattr(compile_options, "_OPTIONS", [None])
    monkeypatch.setenv("KANFORMER_COMPILE_OPTIONS", '{"triton.cudagraphs": true, "cpp_wrapper": true}')
    assert get_compile_options() == {"cpp_wrapper": True, "triton.cudagraphs": True}
    assert options_tag(get_compile_options()) == '{"cpp_wrapper":true,"triton.cudagraphs":true}'  # keys sorted
    with compile_options.compile_options(None):
        assert get_compile_options() == {} and options_tag({}) == ""
    assert get_compile_options() == {"cpp_wrapper": True, "triton.cudagraphs": True}  # put back
    for text, why in (("{cpp_wrapper: true}", "KANFORMER_COMPILE_OPTIONS is not JSON"),
                      ('["cpp_wrapper"]', "compile options are a JSON object")):
        monkeypatch.setattr(compile_options, "_OPTIONS", [None])
        monkeypatch.setenv("KANFORMER_COMPILE_OPTIONS", text)
        with pytest.raises(ValueError, match=why):
            get_compile_options()


def test_each_set_of_options_compiles_copies_of_its_own_and_autotune_keys_on_it(fresh_options, monkeypatch):
    """The compiled copies are named by the options too (a second set never reuses the first's graphs), torch.compile
    gets them, and auto's choices and background compiles are keyed on them and handed them."""
    made = []
    monkeypatch.setattr(dispatch, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", lambda fn, options=None: made.append((fn.__name__, options)) or fn)
    with kernel("fused"):
        plain = dispatch._kernel_fn(lean_ffn._ffn_forward, tag="T")
        with compile_options.compile_options({"cpp_wrapper": True}):
            wrapped = dispatch._kernel_fn(lean_ffn._ffn_forward, tag="T")
            assert dispatch._kernel_fn(lean_ffn._ffn_forward, tag="T") is wrapped  # kept, not made again
        assert dispatch._kernel_fn(lean_ffn._ffn_forward, tag="T") is plain
    assert made == [("_ffn_forward", None), ("_ffn_forward", {"cpp_wrapper": True})]
    assert sorted(dispatch._COMPILED) == [f"{lean_ffn._ffn_forward.__qualname__}[T]",
                                          f'{lean_ffn._ffn_forward.__qualname__}[T]{{"cpp_wrapper":true}}']
    assert plain.__code__.co_name != wrapped.__code__.co_name  # dynamo's records of the two apart

    class Proc:  # what the worker's start needs of a process
        log = None

    ffn, x = create_ffn("chebyshev", 8, 12), torch.randn(4, 8)
    key, warm = autotune_cache.keys(ffn, x)
    with compile_options.compile_options({"cpp_wrapper": True}):
        key2, warm2 = autotune_cache.keys(ffn, x)
        started = {}
        monkeypatch.setattr(background_compile.subprocess, "Popen", lambda *a, env, **kw: started.update(env) or Proc())
        background_compile.start("w", {"threads": 1})
    assert "compile=" not in warm and warm2 == warm + ' | compile={"cpp_wrapper":true}' and key2 != key
    assert json.loads(started["KANFORMER_COMPILE_OPTIONS"]) == {"cpp_wrapper": True}  # the worker compiles the same


def test_gr_kans_helpers_compile_with_their_own_options_under_the_processs(fresh_options, monkeypatch):
    """GR-KAN's helpers recompute R(x) in each loop (dispatch.HELPER_OPTIONS); the process's options add to theirs and
    win where both set one; the KAN bases' helpers take the process's alone."""
    from kanformer.layers import lean, lean_rational

    made = []
    monkeypatch.setattr(dispatch, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", lambda fn, options=None: made.append((fn.__name__, options)) or fn)
    own = {"realize_cpu_opcount_threshold": 1000, "realize_reads_threshold": 100}
    with kernel("fused"):
        for fn in (lean.rational_values, lean.rational_backward, lean_rational._rational_ffn_forward,
                   lean_rational._rational_ffn_backward, lean_ffn._ffn_forward):
            dispatch._kernel_fn(fn, tag="T")
        with compile_options.compile_options({"cpp_wrapper": True, "realize_reads_threshold": 8}):
            dispatch._kernel_fn(lean.rational_backward, tag="T")
            dispatch._kernel_fn(lean_ffn._ffn_forward, tag="T")
    assert made == [("rational_values", own), ("rational_backward", own), ("_rational_ffn_forward", own),
                    ("_rational_ffn_backward", own), ("_ffn_forward", None),
                    ("rational_backward", {**own, "cpp_wrapper": True, "realize_reads_threshold": 8}),
                    ("_ffn_forward", {"cpp_wrapper": True, "realize_reads_threshold": 8})]


@pytest.mark.slow
def test_ffn_benchmark_times_the_kit_under_compile_options_and_checks_its_outputs(fresh_options, tmp_path, capsys,
                                                                                  monkeypatch):
    """``bench_ffn --compile-options``: a KAN FFN's fused step again under the options (here the C++ wrapper, which a
    CPU compiles too), interleaved, its outputs and gradients equal to the plain step's; the MLP has no helpers."""
    from benchmarks import bench_ffn

    def options_here(options, real=bench_ffn.compile_options):  # a set this machine cannot compile
        if options == {"max_autotune": True}:
            raise RuntimeError("no such kernel here")
        return real(options)

    monkeypatch.setattr(bench_ffn, "compile_options", options_here)
    out, before = tmp_path / "ffn.json", dispatch.get_kernel()
    with default_kernel("fused"), kernel("fused"):  # the benchmark sets the process's default: the old one put back
        bench_ffn.main(["--d-model", "8", "--tokens", "16", "--rounds", "2", "--repeats", "1", "--warmup", "1",
                        "--ffns", "chebyshev", "--kernel", "fused", "--compile-options", '{"max_autotune": true}',
                        '{"cpp_wrapper": true}', "--json", str(out)])
    assert dispatch.get_kernel() == before
    result = json.loads(out.read_text())
    mlp, cheb = result["rows"]
    assert result["compile_options"] == [{"max_autotune": True}, {"cpp_wrapper": True}]
    assert "options_1_ratio" not in mlp and cheb["options_0_error"] == "RuntimeError: no such kernel here"
    assert "options_0_ratio" not in cheb  # the failed set reported, not timed; the next one timed
    assert cheb["path"] == "fused" and cheb["options_1_ratio"] > 0 and cheb["options_1_vs_plain"] > 0
    assert cheb["options_1_max_rel_err"] <= 1e-5 and cheb["options_1_first_step_s"] > 0
    assert any(key.endswith('{"cpp_wrapper":true}') for key in dispatch._COMPILED)
    table = capsys.readouterr().out
    assert 'with {"cpp_wrapper":true} x MLP | x without | max rel. err | its first step s |' in table
    assert next(line for line in table.splitlines() if line.startswith("| mlp |")).endswith(" - |" * 8)
    assert '| failed | - | - | - |' in table
    assert '- chebyshev with {"max_autotune":true}: RuntimeError: no such kernel here' in table
    with pytest.raises(SystemExit):
        bench_ffn.main(["--compile-options", '{"no_such_option": 1}'])
    assert "--compile-options: unknown compiler option(s) 'no_such_option'" in capsys.readouterr().err
