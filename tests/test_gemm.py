"""The matmul library of the kit's FFNs (layers/gemm.py): oneDNN's products equal PyTorch's, the baselines and the
KAN fast paths take them, and the per-machine choice is validated, cached and reused."""

import pytest
import torch

from kanformer.layers import gemm
from kanformer.layers.dispatch import kernel
from kanformer.layers.registry import create_ffn

needs_onednn = pytest.mark.skipif(not gemm.onednn_available(), reason="PyTorch built without oneDNN")


@pytest.fixture
def library(monkeypatch):
    """Pins the process's library for one test, restoring the setting after. Every product of the pinned library is
    its own, however small (the tests' products are below ``gemm._SMALL_MACS``)."""
    before = gemm._setting[0]
    monkeypatch.setattr(gemm, "_SMALL_MACS", 0)
    yield gemm.set_library
    gemm.set_library(before)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 * b.abs().max().item())


@needs_onednn
@pytest.mark.parametrize("layout", ["rows", "transposed_tall", "input_major", "transposed_wide", "sliced"])
def test_mm_equals_torch(library, layout, monkeypatch):
    library("onednn")
    gemm.library()
    g = torch.Generator().manual_seed(0)
    kind = None
    if layout == "rows":
        a, b = torch.randn(37, 24, generator=g), torch.randn(40, 24, generator=g).t()
    elif layout == "transposed_tall":  # a weight gradient with more rows than columns: the machine's timing routes it
        a, b, kind = torch.randn(50, 40, generator=g).t(), torch.randn(50, 9, generator=g), "weight_grad"
    elif layout == "input_major":  # W^T @ gy^T, more rows than columns, b column-major: no class, oneDNN's
        a, b = torch.randn(7, 40, generator=g).t(), torch.randn(9, 7, generator=g).t()
    elif layout == "transposed_wide":
        a, b = torch.randn(50, 9, generator=g).t(), torch.randn(50, 40, generator=g)
    else:  # neither row- nor column-major: copied first (oneDNN ran such strides ~700x slower)
        a, b = torch.randn(37, 30, generator=g)[:, :24], torch.randn(24, 48, generator=g)[:, ::2]
    bias = torch.randn(b.shape[1], generator=g)
    assert gemm._transposed_class(a, b) == kind
    for route in ("torch", "onednn") if kind else (None,):
        if kind:
            monkeypatch.setitem(gemm._routes, kind, route)
        _close(gemm.mm(a, b), a @ b)
        _close(gemm.mm(a, b, bias), torch.addmm(bias, a, b))
        assert gemm._suits(a, b) == (route != "torch")


@needs_onednn
def test_mm_leaves_other_dtypes_and_empty_operands_to_torch(library, native):
    library("onednn")
    native(True)
    a, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(gemm.mm(a, b), a @ b)  # fp64: PyTorch's own product, bit for bit
    a16, b16 = a.bfloat16(), b.bfloat16()
    assert torch.equal(gemm.mm(a16, b16), a16 @ b16)  # native bf16: PyTorch's (oneDNN's) own
    empty = torch.randn(0, 4)
    assert gemm.mm(empty, b.float()).shape == (0, 3)


@needs_onednn
@pytest.mark.parametrize("name", ["mlp", "swiglu"])
def test_baselines_on_onednn_equal_torch(library, name):
    """Forward and every gradient of the baselines, oneDNN against PyTorch's products."""
    ffn = create_ffn(name, 24, 40, **({"bias": True} if name == "swiglu" else {}))
    x = torch.randn(3, 7, 24)
    results = {}
    for lib in ("torch", "onednn"):
        library(lib)
        xi = x.clone().requires_grad_()
        y = ffn(xi)
        y.square().sum().backward()
        results[lib] = [y.detach(), xi.grad] + [p.grad.clone() for p in ffn.parameters()]
        ffn.zero_grad(set_to_none=True)
    assert gemm.library() == "onednn"
    for got, want in zip(results["onednn"], results["torch"], strict=True):
        _close(got, want)


@needs_onednn
def test_baseline_under_autocast_and_compile(library):
    library("onednn")
    ffn = create_ffn("mlp", 16, 32)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ffn(x).dtype == torch.bfloat16  # autocast's own (bf16) product, as nn.Linear's
    compiled = torch.compile(ffn, fullgraph=True)  # the product traces as one node: no graph break
    _close(compiled(x), ffn(x))
    grads = []
    for run in (ffn, compiled):  # training through the compiled graph: the products' formula traced too
        run(x).square().sum().backward()
        grads.append([p.grad.clone() for p in ffn.parameters()])
        ffn.zero_grad(set_to_none=True)
    for got, want in zip(*grads, strict=True):
        _close(got, want)


@needs_onednn
def test_autograd_records_only_the_products_it_needs(library):
    """A product autograd records gets the formula (every gradient, the bias's too, equal to PyTorch's); one it does
    not record calls the bare operator, which leaves nothing behind (no autograd node)."""
    library("onednn")
    g = torch.Generator().manual_seed(0)
    a, w, bias = (torch.randn(*s, generator=g, requires_grad=True) for s in ((9, 6), (5, 6), (5,)))
    y = gemm.mm(a, w.t(), bias)
    assert type(y.grad_fn).__name__ == "_RecordedBackward"
    gy = torch.randn(9, 5, generator=g)
    got = torch.autograd.grad(y, (a, w, bias), gy)
    want = torch.autograd.grad(torch.addmm(bias, a, w.t()), (a, w, bias), gy)
    for t, r in zip(got, want, strict=True):
        _close(t, r)
    with torch.no_grad():
        assert gemm.mm(a, w.t(), bias).grad_fn is None
    bare = gemm.mm(a.detach(), w.detach().t())
    assert bare.grad_fn is None and not bare.requires_grad


@needs_onednn
@pytest.mark.parametrize("path", ["lean", "fused", "wavelet-lean"])
def test_kan_fast_paths_on_onednn_equal_reference(library, path, monkeypatch):
    """A KAN FFN's lean path (eager and compiled) with oneDNN's products against its reference; the wavelet's, whose
    backward takes its features' gradient input-major (8 x 12 rows, 33 columns) with a row-major first operand
    (``lean._feature_major``), and its weight gradients transposed, (B I, O)."""
    library("onednn")
    gemm.library()
    name, path = path.split("-") if "-" in path else ("chebyshev", path)  # chebyshev compiles quickly
    calls = []
    real = gemm._onednn_linear
    monkeypatch.setattr(gemm, "_onednn_linear",
                        lambda *a: calls.append((tuple(a[0].shape), a[0].is_contiguous())) or real(*a))
    ffn = create_ffn(name, 12, 20)
    x = torch.randn(33, 12)
    grads = {}
    for mode in ("reference", path):
        xi = x.clone().requires_grad_()
        with kernel(mode):
            y = ffn(xi)
            y.square().sum().backward()
        grads[mode] = [y.detach(), xi.grad] + [p.grad.clone() for p in ffn.parameters()]
        ffn.zero_grad(set_to_none=True)
    for got, want in zip(grads[path], grads["reference"], strict=True):
        _close(got, want)
    if name == "wavelet":
        # each layer's input-major product, B I x O, by oneDNN, its first operand row-major (oneDNN copies a
        # transposed one before it multiplies)
        assert ((8 * 12, 20), True) in calls and ((8 * 20, 12), True) in calls, calls


@needs_onednn
def test_a_compiled_graph_lays_a_transposed_first_operand_out_before_the_onednn_call(library, monkeypatch):
    """oneDNN copies a first operand that is not row-major inside its call, by PyTorch's slow eager copy; traced into a
    graph, the product is handed the operand made contiguous by the graph itself (the compiler's loop), with the same
    values. Eagerly the operand goes as it is (oneDNN's copy is the only one)."""
    library("onednn")
    gemm.library()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    g = torch.Generator().manual_seed(0)
    gy, x = torch.randn(33, 20, generator=g), torch.randn(33, 12, generator=g)  # a weight gradient, gy^T @ x
    got = torch.compile(lambda gy, x: gemm.mm(gy.t(), x), backend=capture, fullgraph=True)(gy, x)
    _close(got, gy.t() @ x)
    (graph,) = graphs
    (call,) = [n for n in graph.graph.nodes if n.target is gemm._onednn_linear]
    first = call.args[0]
    assert first.op == "call_method" and first.target == "contiguous", graph.code
    eager = []
    real = gemm._onednn_linear
    monkeypatch.setattr(gemm, "_onednn_linear", lambda *a: eager.append(a[0].is_contiguous()) or real(*a))
    gemm.mm(gy.t(), x)
    assert eager == [False]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_without_native_products_is_multiplied_in_fp32(native, dtype):
    """A CPU without native bf16 / fp16 products (AVX2: PyTorch's fallback ran ~100x slower than fp32): the kit's
    products take the rounded operands in fp32 and round the result, the same as PyTorch's own to the order of the
    sums; under autocast too (the baselines' products), with every gradient."""
    native(False)
    g = torch.Generator().manual_seed(0)
    a, b, bias = (torch.randn(*s, generator=g).to(dtype) for s in ((33, 40), (40, 24), (24,)))
    got = gemm.mm(a, b, bias)
    assert got.dtype == dtype
    assert torch.equal(got, torch.addmm(bias.float(), a.float(), b.float()).to(dtype))
    torch.testing.assert_close(got, torch.addmm(bias, a, b))  # PyTorch's own, within the dtype's tolerance
    with torch.autocast("cpu", dtype=dtype):  # autocast leaves fp64 operands alone, and so does the widening
        a64, b64 = a.double(), b.double()
        assert gemm.mm(a64, b64).dtype == torch.float64 and torch.equal(gemm.mm(a64, b64), a64 @ b64)
    assert gemm.low_precision_warning("bf16" if dtype == torch.bfloat16 else "fp16") is not None
    native(True)
    assert gemm.low_precision_warning("bf16") is None and gemm.low_precision_warning("no") is None

    native(False)
    ffn = create_ffn("mlp", 24, 40)
    x = torch.randn(3, 7, 24, generator=g)
    results = []
    for wide in (True, False):
        native(not wide)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            y = ffn(xi)
        assert y.dtype == dtype
        y.float().square().sum().backward()
        results.append([y.detach().float(), xi.grad] + [p.grad.clone() for p in ffn.parameters()])
        ffn.zero_grad(set_to_none=True)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "chebyshev"])
def test_a_compiled_graph_keeps_the_widened_products(native, name):
    """Inside a compiled graph (bf16 autocast, no native bf16 products) every product of the FFN, forward and backward,
    is the widened operator, which the compiler cannot turn back into a bf16 product for PyTorch's fallback kernel
    (traced as plain casts, the backward's products were such, ~27x the eager step on the AVX2 machine): the values and
    gradients of the eager widened products."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    native(False)
    graphs: dict[str, list[torch.fx.GraphModule]] = {"forward": [], "backward": []}

    def keep(kind):
        return lambda gm, _inputs: graphs[kind].append(gm) or make_boxed_func(gm.forward)

    torch._dynamo.reset()
    ffn = create_ffn(name, 24, 40)
    x = torch.randn(3, 7, 24)
    compiled = torch.compile(ffn, fullgraph=True, backend=aot_autograd(fw_compiler=keep("forward"),
                                                                         bw_compiler=keep("backward")))
    results = []
    for run in (ffn, compiled):
        xi = x.clone().requires_grad_()
        with kernel("fused"), torch.autocast("cpu", dtype=torch.bfloat16):
            y = run(xi)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        results.append([y.detach().float(), xi.grad] + [p.grad.clone() for p in ffn.parameters()])
        ffn.zero_grad(set_to_none=True)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
    widened = getattr(torch.ops, gemm._NS).widened_mm.default
    for kind, least in (("forward", 2), ("backward", 4)):  # two layers' products; each one's two gradients
        ops = [n.target for g in graphs[kind] for n in g.graph.nodes if n.op == "call_function"]
        assert ops.count(widened) >= least, (kind, ops)
        assert not {torch.ops.aten.mm.default, torch.ops.aten.addmm.default} & set(ops), (kind, ops)
    torch._dynamo.reset()


def test_bad_library_names_the_allowed_values(library):
    with pytest.raises(ValueError, match="Unknown matmul library 'mkl'.*auto, torch, onednn"):
        library("mkl")
    gemm._setting[0], gemm._chosen[0] = "blas", None  # as KANFORMER_GEMM=blas leaves it (the fixture restores)
    with pytest.raises(ValueError, match="Unknown matmul library 'blas'"):
        gemm.library()


@pytest.fixture
def timings(monkeypatch, tmp_path):
    """``auto``'s timings counted (one entry a timing), each made cheap, with a fresh disk cache."""
    monkeypatch.setenv("KANFORMER_CACHE", str(tmp_path))
    calls = []
    real = gemm._timed
    monkeypatch.setattr(gemm, "_timed", lambda: calls.append(1) or real(64, 512))  # the reference shape, small
    return calls


@needs_onednn
def test_the_library_is_timed_on_fp32_products_under_autocast_too(library, timings, monkeypatch):
    """The call that first asks for the library may run under bf16 autocast (an evaluation's first forward): the
    timing still multiplies fp32 operands, the only ones the library takes. (It once timed PyTorch's side in bf16:
    on an AVX2 CPU its fallback kernel, ~100x slower, and the machine kept oneDNN.)"""
    seen = []
    real = gemm._product
    monkeypatch.setattr(gemm, "_product",
                        lambda a, b, bias=None: seen.append(torch.is_autocast_enabled("cpu")) or real(a, b, bias))
    library("auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gemm.library() in ("torch", "onednn")
    assert len(timings) == 1 and seen and not any(seen)


@needs_onednn
def test_small_eager_products_stay_on_pytorchs_under_onednn(monkeypatch):
    """A product too small to win back oneDNN's call (generation's few tokens) is PyTorch's, eagerly; a training
    step's is oneDNN's; inside a compiled graph the size decides nothing at trace time (its token count is symbolic:
    the operator decides when it runs, below)."""
    monkeypatch.setattr(gemm, "_chosen", ["onednn"])
    calls = []
    real = gemm._onednn_linear
    monkeypatch.setattr(gemm, "_onednn_linear", lambda *a: calls.append(a[0].shape) or real(*a))
    w = torch.randn(512, 128)
    small, large = torch.randn(4, 128), torch.randn(1024, 128)
    _close(gemm.linear(small, w), small @ w.t())
    assert calls == [] and not gemm._suits(small, w.t())
    _close(gemm.linear(large, w), large @ w.t())
    assert calls == [(1024, 128)] and gemm._suits(large, w.t())
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert gemm._suits(small, w.t())


@needs_onednn
def test_the_operator_a_compiled_graph_calls_takes_small_products_to_pytorchs():
    """The kit's oneDNN operator, as a compiled graph calls it with the token count of the call: a product of few
    tokens (a generation step through the fused path's graphs) runs PyTorch's kernel, a training step's oneDNN's."""
    w, bias = torch.randn(512, 128), torch.randn(512)

    def kernels(x):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = gemm._onednn_linear(x, w, bias)
        _close(y, torch.addmm(bias, x, w.t()))
        return {e.key for e in prof.key_averages()}

    assert "mkldnn::_linear_pointwise" not in kernels(torch.randn(4, 128))
    assert "mkldnn::_linear_pointwise" in kernels(torch.randn(1024, 128))


def test_auto_keeps_onednn_only_where_the_baselines_products_ran_clearly_faster():
    """A timing within noise of PyTorch's keeps PyTorch's products; a clear win (the development CPU's 0.92x, which
    the old 0.9 threshold refused though oneDNN ran the MLP faster at every width) takes oneDNN."""
    assert gemm._faster({"torch": 100.0, "onednn": 92.0}) == "onednn"
    assert gemm._faster({"torch": 100.0, "onednn": 97.0}) == "torch"
    assert gemm._faster({"torch": 100.0, "onednn": 120.0}) == "torch"


@needs_onednn
def test_auto_times_once_per_machine_then_reads_the_cache(library, timings, tmp_path):
    library("auto")
    calls = timings
    first = gemm.record()
    assert len(calls) == 1 and first["source"] == "timed" and first["library"] in ("torch", "onednn")
    assert set(first["times_ms"]) == {"torch", "onednn"} and (tmp_path / "gemm.json").is_file()
    library("auto")  # a later process (a resumed run, a checkpoint's copy of the code): the disk cache kept
    second = gemm.record()
    assert second["source"] == "cache" and second["library"] == first["library"] and len(calls) == 1
    library("torch")
    assert gemm.record() == {"library": "torch", "source": "set"}


@needs_onednn
@pytest.mark.parametrize("weight_grad", ["torch", "onednn"])
def test_the_gemm_benchmark_reports_products_and_steps(capsys, tmp_path, monkeypatch, library, weight_grad):
    """The products' table routes each product as the machine's timing does (a stand-in here: weight gradients by
    ``weight_grad``), in a process that had chosen no library before the benchmark ran too (the table once read the
    routing before the library was chosen, and so gave every weight gradient to PyTorch's)."""
    import json

    from benchmarks.bench_gemm import main

    monkeypatch.setenv("KANFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gemm, "_timed", lambda: {"library": "onednn", "times_ms": {"torch": 2.0, "onednn": 1.0},
                                                 "transposed": {"weight_grad": weight_grad}})
    library("auto")  # nothing chosen yet in this process (its products are routed as a real width's: the fixture)
    main(["--d-model", "16", "--tokens", "32", "--rounds", "1", "--repeats", "1", "--ffns", "mlp",
          "--json", str(tmp_path / "g.json")])
    out = capsys.readouterr().out
    assert "| mlp | layer 1 weight grad 64x32 @ 32x16 |" in out and "| bspline | layer 2 forward" in out
    result = json.loads((tmp_path / "g.json").read_text())
    (first,) = [r for r in result["rows"] if r["ffn"] == "mlp" and r["product"].startswith("layer 1 weight grad")]
    assert first["routed"] == weight_grad  # the MLP's first weight gradient, gy^T @ x: a long sum over the tokens
    assert {r["routed"] for r in result["rows"]} == {weight_grad, "onednn"}
    assert result["steps"]["mlp"]["onednn_ms"] > 0 and len(result["rows"]) == 12
    assert f"CPU malloc {result['malloc']}" in out  # the allocator its steps ran on, as bench_ffn reports it


@needs_onednn
def test_the_gemm_benchmark_times_whole_gpt2_steps_under_both_libraries(capsys, tmp_path):
    import json

    from benchmarks.bench_gemm import main

    main(["--d-model", "16", "--tokens", "64", "--rounds", "2", "--repeats", "1", "--ffns", "mlp", "--gpt2",
          "--json", str(tmp_path / "g.json")])
    assert "GPT-2 training steps (4 layers, forward + backward + AdamW" in capsys.readouterr().out
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["steps_of"] == "gpt2" and set(result["steps"]) == {"mlp"}
    assert result["steps"]["mlp"]["torch_ms"] > 0 and result["steps"]["mlp"]["onednn_ms"] > 0
    with pytest.raises(SystemExit):  # before anything is timed
        main(["--d-model", "16", "--tokens", "100", "--rounds", "1", "--repeats", "1", "--ffns", "mlp", "--gpt2"])
    assert "--gpt2 takes --tokens in whole 64-token sequences, got 100" in capsys.readouterr().err


@needs_onednn
def test_transposed_products_go_by_class_as_the_machine_timed_them(library, timings, monkeypatch):
    """Products whose first operand is transposed with more rows than columns take, class by class, the library that
    ran that class faster on the machine (oneDNN's only where clearly), as timed with the library; a pinned oneDNN
    routes them so too, from the same cached timing."""
    library("auto")
    timed = gemm.record()
    assert set(timed["transposed"]) == set(timed["transposed_ms"]) == {"weight_grad"}
    for kind, ms in timed["transposed_ms"].items():
        assert set(ms) == {"torch", "onednn"} and timed["transposed"][kind] == gemm._faster(ms)
    g = torch.Generator().manual_seed(0)
    gy, x, w = (torch.randn(*s, generator=g) for s in ((512, 256), (512, 64), (28, 576)))
    cases = {"weight_grad": (gy.t(), x)}
    for kind, (a, b) in cases.items():
        assert gemm._transposed_class(a, b) == kind
        assert gemm._suits(a, b) == (timed["transposed"][kind] == "onednn")
        for route in ("torch", "onednn"):
            monkeypatch.setitem(gemm._routes, kind, route)
            assert gemm._suits(a, b) == (route == "onednn")
    assert gemm._transposed_class(x.t(), gy) is None  # fewer rows than columns (the second weight gradient)
    assert gemm._transposed_class(x, w[:, :64].t()) is None  # a row-major first operand
    assert gemm._transposed_class(w.t(), torch.randn(512, 28, generator=g).t()) is None  # W^T @ gy^T: no class now
    library("onednn")
    pinned = gemm.record()
    assert pinned["source"] == "set" and pinned["library"] == "onednn" and len(timings) == 1
    assert pinned["transposed"] == timed["transposed"] and gemm._routes == timed["transposed"]


def test_autotune_keys_its_fp32_cpu_compiles_on_the_products_routing(monkeypatch):
    """A compiled graph's fp32 CPU products are the library's as routed: another routing of the transposed products
    (a machine timed afresh) is another key for ``auto``'s background compile and timing, not graphs made for the
    other one."""
    from kanformer.layers import autotune_cache

    ffn, x = create_ffn("chebyshev", 12, 20), torch.randn(33, 12)
    monkeypatch.setattr(gemm, "_chosen", ["onednn"])
    keys = {}
    both, one = {"weight_grad": "onednn"}, {"weight_grad": "torch"}
    for routes in (both, one):
        monkeypatch.setattr(gemm, "_routes", routes)
        keys[gemm.routing()] = autotune_cache.keys(ffn, x)[1]
    assert list(keys) == ["onednn", "onednn; weight_grad by torch"]
    assert [k.endswith(f"gemm={r}") for r, k in keys.items()] == [True, True]
    monkeypatch.setattr(gemm, "_chosen", ["torch"])
    assert gemm.routing() == "torch"


@needs_onednn
def test_only_cpu_inputs_choose_the_library(library, timings):
    from kanformer.layers.dispatch import prepare_products

    library("auto")
    calls = timings
    prepare_products(torch.empty(8, 4, device="meta"))  # another device's products never use it: nothing timed
    assert calls == [] and gemm.chosen() == {}
    prepare_products(torch.empty(8, 4))
    assert calls == [1] and gemm.chosen()["library"] in ("torch", "onednn")


@needs_onednn
@pytest.mark.parametrize("name", ["mlp", "swiglu"])
def test_flop_counter_counts_the_products_on_either_library_and_not_the_timing(library, timings, name):
    """FlopCounterMode counts a baseline's products alike on oneDNN (its operator's formula) and PyTorch's own; the
    library's first timing, started inside the counter, is not counted (it once added 230 GFLOP to a layer's)."""
    from torch.utils.flop_counter import FlopCounterMode

    ffn = create_ffn(name, 24, 40)
    x = torch.randn(15, 24)
    counts = {}
    for lib in ("auto", "onednn", "torch"):
        library(lib)
        with FlopCounterMode(display=False) as counter:
            ffn(x)
        counts[lib] = counter.get_total_flops()
    assert len(timings) == 1  # auto's timing ran inside the first counter
    assert counts == dict.fromkeys(counts, ffn.flop_breakdown()["matmul"] * 15)
