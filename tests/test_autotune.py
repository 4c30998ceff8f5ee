"""``auto`` by measurement (layers/autotune.py): the choice is timed once, cached on disk and reused by another
process, respects a pinned path and the memory rule, drops a candidate that fails, and never waits for a compile."""

import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from kanformer import create_ffn, set_kernel
from kanformer.layers import autotune, autotune_cache, background_compile, dispatch, machine

D, H = 16, 12


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """The process default is auto (the suite pins lean), with a private cache and no background compiles: the
    compiler is reported failed unless a test says otherwise. The memory rule ``lean``, in a list of the test's own:
    ``set_kernel_memory`` writes into the list in place, so a test that set ``fast`` and then patched the list (as the
    memory rule's test does) left ``fast`` in the process's own list for the worker's later tests (a compiled wavelet
    FFN then took the compiled reference, not its operator, and saved 8.7x the lean path's activations)."""
    monkeypatch.setattr(dispatch, "_mode", ["auto"])
    monkeypatch.setattr(autotune_cache, "_memory", ["lean"])
    monkeypatch.setenv("KANFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KANFORMER_AUTOTUNE", "1")
    monkeypatch.setattr(autotune, "_compile_state", lambda warm: "failed: no compiler in this test")
    monkeypatch.setattr(background_compile, "_lent", [])
    autotune.forget()
    yield tmp_path / "cache" / "autotune.json"
    autotune.forget()
    autotune.set_kernel_memory("lean")
    for own in background_compile._lent:  # a core a test's background compile was lent, back for the next tests
        torch.set_num_threads(own)


@pytest.fixture
def auto_compiling(auto, monkeypatch):
    """``auto``'s settings with the real ``_compile_state`` (the background process as the test starts it, or a
    stand-in) and no background process of an earlier test."""
    monkeypatch.undo()
    monkeypatch.setattr(dispatch, "_mode", ["auto"])
    monkeypatch.setattr(autotune_cache, "_memory", ["lean"])
    monkeypatch.setenv("KANFORMER_CACHE", str(auto.parent))
    monkeypatch.setattr(autotune, "_pending_spec", {})
    monkeypatch.setattr(background_compile, "workers", {})
    monkeypatch.setattr(background_compile, "_lent", [])
    return auto


def _step(ffn, x):
    ffn(x).square().mean().backward()


class Worker:
    """A stand-in for the background compile's process: running while ``returncode`` is None, else ended with it
    (negative: killed by that signal), its messages ``log``."""

    def __init__(self, returncode=None, log=b""):
        self.returncode, self.log = returncode, io.BytesIO(log)

    def poll(self):
        return self.returncode


def _cache(path):
    (section,) = json.loads(path.read_text()).values()
    return section


def test_choice_is_timed_once_cached_and_reused_by_another_process(auto):
    torch.manual_seed(0)
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    _step(ffn, x)
    (record,) = autotune.decisions().values()
    assert record["source"] == "timed" and record["path"] == "lean"  # reference saves more than the MLP
    assert record["dropped"] == {"fused": "failed: no compiler in this test"}
    assert record["saved_mb"]["reference"] > record["mlp_saved_mb"] >= record["saved_mb"]["lean"]
    assert set(record["times_ms"]) == {"lean", "reference"}
    _step(ffn, x)  # the same key: no second timing
    assert len(_cache(auto)["choices"]) == 1
    assert autotune.decisions(ffn) and autotune.decisions(create_ffn("chebyshev", D, H + 1)) == {}  # per model
    code = ("import torch, json; from kanformer import create_ffn; from kanformer.layers import autotune, dispatch\n"
            "dispatch._mode[0] = 'auto'\n"
            "autotune._compile_state = lambda warm: 'failed: no compiler in this test'\n"
            "autotune._measure = lambda *a: (_ for _ in ()).throw(AssertionError('timed again'))\n"
            f"ffn = create_ffn('chebyshev', {D}, {H}); ffn(torch.randn(64, {D})).sum().backward()\n"
            "print(json.dumps([v['source'] for v in autotune.decisions().values()]))")
    env = {**os.environ, "KANFORMER_KERNEL": "auto"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["cache"]


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="no narrower vector instructions")
def test_a_choice_timed_under_other_vector_instructions_is_timed_again(auto):
    """``ATEN_CPU_CAPABILITY`` narrows the vector instructions of PyTorch's kernels and of the compiled loops: a process
    under it times afresh instead of taking this machine's choice, and so does its matmul library's."""
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    _step(ffn, x)
    code = ("import torch, json; from kanformer import create_ffn\n"
            "from kanformer.layers import autotune, dispatch, gemm, machine\n"
            "dispatch._mode[0] = 'auto'\n"
            "autotune._compile_state = lambda warm: 'failed: no compiler in this test'\n"
            "gemm._timed = lambda: {'library': 'torch', 'times_ms': {}}\n"
            f"ffn = create_ffn('chebyshev', {D}, {H}); ffn(torch.randn(64, {D})).sum().backward()\n"
            "print(json.dumps([machine.cpu_isa(), gemm.record().get('source')]"
            " + [v['source'] for v in autotune.decisions().values()]))")
    env = {**os.environ, "KANFORMER_KERNEL": "auto", "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["DEFAULT", "timed", "timed"]
    assert len(json.loads(auto.read_text())) == 2  # a section per fingerprint


@pytest.mark.parametrize("blocked", ["directory", "file", "home"])
def test_a_cache_that_cannot_be_written_costs_a_warning_not_a_step(auto, monkeypatch, tmp_path, blocked):
    """A cache directory that cannot be made (a read-only home, say: here a file stands in its way), a cache file that
    cannot be replaced (here a directory), or no home directory for the default: the process warns once, keeps its
    choices in memory and still takes each from there instead of timing it again."""
    if blocked == "directory":
        (tmp_path / "taken").write_text("")
        monkeypatch.setenv("KANFORMER_CACHE", str(tmp_path / "taken" / "cache"))
    elif blocked == "file":
        monkeypatch.setenv("KANFORMER_CACHE", str(tmp_path / "cache"))
        (tmp_path / "cache" / "autotune.json").mkdir(parents=True)
    else:  # no home directory for the default, as for a container user with none
        monkeypatch.delenv("KANFORMER_CACHE")

        def no_home():
            raise RuntimeError("Could not determine home directory.")

        monkeypatch.setattr(machine.Path, "home", staticmethod(no_home))
    monkeypatch.setattr(machine, "_memory_only", {})
    timed = []
    real = autotune._measure
    monkeypatch.setattr(autotune, "_measure", lambda *a, **k: timed.append(1) or real(*a, **k))
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    with pytest.warns(RuntimeWarning) as caught:  # the matmul library's gemm.json too, where no directory is made
        _step(ffn, x)
    assert any(re.search(r"cannot write the cache .*autotune\.json.*Set KANFORMER_CACHE", str(w.message))
               for w in caught)
    autotune.forget()  # as a new call site would: the choice read back from the process's copy
    _step(ffn, x)
    assert len(timed) == 1 and [r["source"] for r in autotune.decisions().values()] == ["cache"]


def test_a_pinned_path_is_never_tuned(auto):
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    set_kernel(ffn, "reference")
    _step(ffn, x)
    with dispatch.kernel("lean"):
        _step(create_ffn("chebyshev", D, H), x)
    with torch.no_grad():  # a short evaluation, the compiler failed: the reference, nothing timed or started
        create_ffn("chebyshev", D, H)(x)
    assert autotune.decisions() == {} and not _cache(auto)["choices"] and not background_compile.workers


def test_memory_rule_lean_keeps_activations_at_most_the_mlps_and_fast_takes_the_fastest(auto, monkeypatch):
    real = autotune._time
    def biased(step, device):  # the reference looks 100x faster than it is
        path = next(c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, str))
        return real(step, device) * (0.01 if path == "reference" else 1.0)

    monkeypatch.setattr(autotune, "_time", biased)
    x = torch.randn(64, D)
    _step(create_ffn("chebyshev", D, H), x)
    (lean_rule,) = autotune.decisions().values()
    assert lean_rule["path"] == "lean" and lean_rule["times_ms"]["reference"] < lean_rule["times_ms"]["lean"]
    autotune.set_kernel_memory("fast")
    _step(create_ffn("chebyshev", D, H), x)
    fast = next(v for v in autotune.decisions().values() if v["memory"] == "fast")
    assert fast["path"] == "reference"
    with pytest.raises(ValueError, match="Unknown kernel memory rule 'small'. Allowed: lean, fast"):
        autotune.set_kernel_memory("small")
    monkeypatch.setattr(autotune_cache, "_memory", ["small"])  # KANFORMER_KERNEL_MEMORY=small, read at import
    with pytest.raises(ValueError, match=r"'small' \(KANFORMER_KERNEL_MEMORY\). Allowed: lean, fast"):
        autotune.kernel_memory()


def test_a_close_call_is_timed_again_before_it_is_kept(auto, monkeypatch):
    """The two fastest eligible candidates within 15 %: those two take 10 more turns and the median of all 15 steps
    decides (a few slowed turns once kept eager lean over fused); a clear winner is kept after the first 5."""
    autotune.set_kernel_memory("fast")  # the reference may be chosen: two eligible candidates
    calls = {"lean": 0, "reference": 0}
    slow = {"lean": 1.0, "reference": 0.95}

    def fake(step, device):
        path = next(c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, str))
        calls[path] += 1
        return slow[path] if calls[path] <= 5 else {"lean": 0.8, "reference": 0.95}[path]  # lean's first turns slowed

    monkeypatch.setattr(autotune, "_time", fake)
    x = torch.randn(64, D)
    _step(create_ffn("chebyshev", D, H), x)
    (record,) = autotune.decisions().values()
    assert record["retimed"] == ["reference", "lean"] and calls == {"lean": 15, "reference": 15}
    assert record["path"] == "lean" and record["times_ms"] == {"lean": 800.0, "reference": 950.0}
    calls.update(lean=0, reference=0)
    slow.update(lean=1.0, reference=0.5)  # clear
    other = create_ffn("chebyshev", D, H + 1)
    _step(other, x)
    (clear,) = autotune.decisions(other).values()
    assert clear["retimed"] == [] and calls == {"lean": 5, "reference": 5} and clear["path"] == "reference"


def test_a_candidate_that_fails_to_compile_is_dropped_with_its_reason(auto, monkeypatch):
    monkeypatch.setattr(autotune, "_compile_state", lambda warm: "ready")

    def broken(fn, **_):
        def run(*args):
            raise RuntimeError("no C++ compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(dispatch, "_COMPILED", {})
    ffn, x = create_ffn("bspline", D, H), torch.randn(64, D)
    _step(ffn, x)
    (record,) = autotune.decisions().values()
    assert record["path"] == "lean" and "no C++ compiler here" in record["dropped"]["fused"]


def test_the_chosen_path_equals_the_reference(auto):
    torch.manual_seed(0)
    ffn, x = create_ffn("rbf", D, H), torch.randn(64, D) * 4  # far outside the centres too
    xa = x.clone().requires_grad_(True)
    ffn(xa).square().sum().backward()
    got = [xa.grad] + [p.grad.clone() for p in ffn.parameters()]
    assert autotune.decisions()
    ffn.zero_grad()
    xr = x.clone().requires_grad_(True)
    with dispatch.kernel("reference"):
        ffn(xr).square().sum().backward()
    for a, b in zip(got, [xr.grad] + [p.grad for p in ffn.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bspline", "rational"])
def test_evaluation_takes_the_compiled_path_training_chose_and_compiles_nothing(auto, monkeypatch, name):
    """Without autograd, ``auto`` runs the fused path its training chose (its forward graphs as they are: in bf16 the
    reference forward was ~6x the MLP's), and the reference where that would compile: before any choice, one token,
    inference mode, another dtype."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(autotune, "_compile_state", lambda warm: "ready")
    monkeypatch.setattr(autotune, "_measure", lambda ffn, x, candidates: {
        "times": {"lean": 2.0, "fused": 1.0, "reference": 3.0}, "saved": {"lean": 0, "fused": 0, "reference": 0},
        "mlp_saved": 1, "dropped": {}})
    torch.manual_seed(0)
    ffn, x = create_ffn(name, D, H), torch.randn(64, D) * 3  # outside the B-spline's grid too
    with torch.no_grad():
        assert dispatch.resolve(ffn, x) is None  # nothing chosen yet
    _step(ffn, x)
    assert [r["path"] for r in autotune.decisions().values()] == ["fused"]
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        assert dispatch.resolve(ffn, x[:40]) == "fused"
        y = ffn(x[:40])
        assert dispatch.resolve(ffn, x[:1]) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert dispatch.resolve(ffn, x) is None  # trained in fp32 only
    with torch.inference_mode():
        assert dispatch.resolve(ffn, x) is None
    assert counters["stats"]["unique_graphs"] == graphs
    with torch.no_grad(), dispatch.kernel("reference"):
        torch.testing.assert_close(y, ffn(x[:40]), rtol=1e-5, atol=1e-5)


def test_the_compiled_choice_runs_its_graphs_for_an_input_that_takes_no_gradient(auto, monkeypatch):
    """``torch.compile`` of the reference, chosen for training, is compiled (in the background) and timed for an input
    that takes a gradient; a training call on one that takes none (behind frozen layers, or on data directly) runs
    the same graphs, where it had compiled them afresh in the step, and gives the reference's gradients. Nor does a
    table a library fills on first use become a guard (einops' backends: the graphs were compiled again in the call
    after the first einops call of a process)."""
    import einops._backends
    from torch._dynamo.utils import counters

    monkeypatch.setattr(einops._backends, "_type2backend", {})  # as in a process that has not called einops yet

    compile_ = torch.compile  # the compiler's guards, without its C++ (the graphs are dynamo's either way)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **{**kw, "backend": "eager"}))
    monkeypatch.setattr(dispatch, "autotune_choice", lambda ffn, x: "compiled")
    torch.manual_seed(0)
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    _step(ffn, x.clone().requires_grad_(True))  # as the background compile and the timing ran it
    graphs = counters["stats"]["unique_graphs"]
    ffn.zero_grad()
    _step(ffn, x)
    assert counters["stats"]["unique_graphs"] == graphs and not x.requires_grad and x.grad is None
    got = [p.grad.clone() for p in ffn.parameters()]
    ffn.zero_grad()
    with dispatch.kernel("reference"):
        _step(ffn, x)
    for a, b in zip(got, [p.grad for p in ffn.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fastest", ["fused", "reference"])
def test_one_token_takes_the_path_timed_for_it_once_its_graph_is_compiled(auto, monkeypatch, fastest):
    """A generation step of one sequence: the reference until the background compile has made its graph (a compiled
    graph specialises size 1: anything else would compile now), then the path timed for one token, forward only, in a
    bucket of its own, even where training chose fused (at one token the graph's fixed costs may exceed the
    reference's)."""
    ready, timed = [False], []
    monkeypatch.setattr(autotune, "_compile_state", lambda warm: "ready")
    monkeypatch.setattr(autotune, "compiled_ready", lambda ffn, x: ready[0])
    monkeypatch.setenv("KANFORMER_EVAL_COMPILE_AFTER_S", "0")  # timed at the first call its graph is compiled for

    def measure(ffn, x, candidates, backward=True):
        timed.append((x.shape[0], list(candidates), backward))
        if backward:  # training's: fused
            return {"times": {"lean": 2.0, "fused": 1.0, "reference": 3.0},
                    "saved": {"lean": 0, "fused": 0, "reference": 0}, "mlp_saved": 1, "dropped": {}}
        return {"times": {"reference": 1.0 if fastest == "reference" else 3.0, "fused": 2.0}, "saved": {},
                "mlp_saved": 0, "dropped": {}}

    monkeypatch.setattr(autotune, "_measure", measure)
    ffn, x = create_ffn("bspline", D, H), torch.randn(64, D)
    _step(ffn, x)
    assert [r["path"] for r in autotune.decisions().values()] == ["fused"]
    timed.clear()
    with torch.no_grad():
        assert dispatch.resolve(ffn, x[:1]) is None and not timed  # its graph not compiled yet
        ready[0] = True
        path = None if fastest == "reference" else "fused"
        assert dispatch.resolve(ffn, x[:1]) == path and timed == [(1, ["reference", "fused"], False)]
        assert dispatch.resolve(ffn, x[:1]) == path and len(timed) == 1  # kept
        assert dispatch.resolve(ffn, x[:40]) == "fused" and len(timed) == 1  # more tokens: training's, untimed
    (key,) = [k for k in autotune.decisions() if k.endswith(" | eval")]
    assert " | tokens<=1 | " in key


def test_forget_restarts_the_evaluations_clock_as_a_new_process_would(auto, monkeypatch):
    """An evaluation's wait before a background compile is counted from its first call in this process; ``forget``
    starts it afresh (it once kept the first call's time, so a later test of the same configuration timed at once)."""
    states, timed = [], []
    monkeypatch.setattr(autotune, "_compile_state", lambda warm: states.append(warm) or "ready")
    monkeypatch.setattr(autotune, "_measure", lambda ffn, x, candidates, backward=True: timed.append(candidates) or {
        "times": {"reference": 3.0, "fused": 1.0}, "saved": {}, "mlp_saved": 0, "dropped": {}})
    monkeypatch.setenv("KANFORMER_EVAL_COMPILE_AFTER_S", "0.3")
    ffn, x = create_ffn("rational", D, H), torch.randn(64, D)
    with torch.no_grad():
        assert dispatch.resolve(ffn, x) is None and not states  # the clock starts
        time.sleep(0.4)
        autotune.forget()
        assert dispatch.resolve(ffn, x) is None and not states and not timed  # a new clock: nothing asked or timed
        time.sleep(0.4)
        assert dispatch.resolve(ffn, x) == "fused" and states and timed == [["reference", "fused"]]  # it has lasted


def test_an_evaluation_only_process_times_its_forward_paths_once_the_compile_is_ready(auto, monkeypatch):
    """Without a training choice, an evaluation runs the reference until it has lasted long enough for a background
    compile to pay, then (compile ready) times the reference against fused, forward only, keeps the faster on disk,
    and a later process takes it from there without timing (only while the compiler's cache holds it)."""
    states, timed, state = [], [], ["pending"]
    monkeypatch.setattr(autotune, "_compile_state", lambda warm: states.append(warm) or state[0])

    def measure(ffn, x, candidates, backward=True):
        timed.append((candidates, backward))
        return {"times": {"reference": 3.0, "fused": 1.0}, "saved": {}, "mlp_saved": 0, "dropped": {}}

    monkeypatch.setattr(autotune, "_measure", measure)
    torch.manual_seed(0)
    ffn, x = create_ffn("rational", D, H), torch.randn(64, D)
    with torch.no_grad():
        assert dispatch.resolve(ffn, x) is None and not states  # a short evaluation starts no compile
        monkeypatch.setenv("KANFORMER_EVAL_COMPILE_AFTER_S", "0")
        assert dispatch.resolve(ffn, x) is None and states and not timed  # compiling in the background
        state[0] = "ready"
        assert dispatch.resolve(ffn, x) == "fused" and timed == [(["reference", "fused"], False)]
        y = ffn(x)
        assert dispatch.resolve(ffn, x[:40]) == "fused" and len(timed) == 1  # same token bucket
        with dispatch.kernel("reference"):
            torch.testing.assert_close(y, ffn(x), rtol=1e-5, atol=1e-5)
    (key, record), = autotune.decisions().items()
    assert key.endswith(" | eval") and record["source"] == "timed" and record["times_ms"]["fused"] == 1000.0
    assert _cache(auto)["choices"][key]["path"] == "fused"
    autotune.forget()  # as a later process would start
    with torch.no_grad():
        state[0] = "pending"  # the compiler's cache lacks the helpers: the cached choice waits
        assert dispatch.resolve(ffn, x) is None
        state[0] = "ready"
        assert dispatch.resolve(ffn, x) == "fused" and len(timed) == 1
    assert [r["source"] for r in autotune.decisions().values()] == ["cache"]
    monkeypatch.setenv("KANFORMER_EVAL_COMPILE_AFTER_S", "soon")
    with pytest.raises(ValueError, match="KANFORMER_EVAL_COMPILE_AFTER_S must be a number of seconds >= 0, got 'soon'"):
        autotune.eval_compile_after_s()


def test_a_later_local_rank_takes_the_first_ranks_choice_instead_of_timing(auto, monkeypatch):
    """Local rank 1 runs lean, untimed, until local rank 0's choice is in the disk cache, then takes it; after
    ``_FOLLOW_S`` without one it times its own."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(autotune, "_follow_since", {})
    real, timed = autotune._measure, []
    monkeypatch.setattr(autotune, "_measure", lambda ffn, *a: timed.append(ffn.hidden) or real(ffn, *a))
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    _step(ffn, x)
    assert autotune.decisions() == {} and not timed
    key, _ = autotune_cache.keys(ffn, x)
    autotune_cache.store("choices", key, {"path": "reference", "times_ms": {}, "saved_mb": {}, "dropped": {},
                                     "memory": "lean"})  # as local rank 0 would
    _step(ffn, x)
    assert [(r["path"], r["source"]) for r in autotune.decisions().values()] == [("reference", "cache")]
    monkeypatch.setattr(autotune, "_FOLLOW_S", 0.0)
    _step(create_ffn("chebyshev", D, H + 1), x)
    assert timed == [H + 1]


def test_a_later_local_rank_compiles_and_times_what_the_first_rank_never_compiles(auto_compiling, monkeypatch, capsys):
    """A configuration the first local rank never compiles (a pipeline stage's own layers, another thread count): local
    rank 1 runs lean for ``_FOLLOW_S`` (and while the cache says the first rank is compiling it), then starts its own
    background compile, and once that has ended times its own choice without waiting for the first rank's."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    for name in ("_compile_wait_since", "_follow_since"):
        monkeypatch.setattr(autotune, name, {})
    started = []
    # the background process ends at once: the compiler failed, so the timing runs no compile of its own
    ended = Worker(1, b"RuntimeError: no compiler in this test")
    monkeypatch.setattr(background_compile, "start", lambda warm, spec: started.append(warm) or ended)
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    warm = autotune_cache.keys(ffn, x)[1]
    _step(ffn, x)
    assert not started and autotune.decisions() == {}  # the first rank's compile awaited
    monkeypatch.setattr(autotune, "_FOLLOW_S", 0.0)
    # as local rank 0 records its own
    autotune_cache.store("compiled", warm, {"state": "pending", "since": time.time()})
    _step(ffn, x)
    assert not started  # awaited for as long as that rank is compiling it
    autotune_cache.store("compiled", warm, {"state": "pending", "since": time.time() - 2 * autotune._COMPILING_S})
    _step(ffn, x)  # a record that old is a compile that ended without a word (its process killed)
    assert started == [warm] and autotune.decisions() == {}
    assert "no compile of" in capsys.readouterr().err
    monkeypatch.setattr(autotune, "_FOLLOW_S", 300.0)  # no wait for a choice the first rank will not make either
    _step(ffn, x)
    (record,) = autotune.decisions().values()
    assert record["source"] == "timed" and "no compiler in this test" in record["dropped"]["fused"]


def test_while_the_compile_runs_in_the_background_the_ffn_runs_lean_undecided(auto, monkeypatch):
    monkeypatch.setattr(autotune, "_compile_state", lambda warm: "pending")
    called = []
    monkeypatch.setattr(autotune, "_measure", lambda *a: called.append(a))
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    assert dispatch.resolve(ffn, x) == "lean"
    _step(ffn, x)
    assert not called and autotune.decisions() == {}


def test_no_timing_beside_another_ffns_background_compile(auto, monkeypatch):
    """A compile of another FFN still running in the background: this FFN runs lean, undecided, and is timed once the
    compile has ended (timings taken beside it once made eager lean look faster than fused on 2 cores)."""
    class Running:
        def poll(self):
            return None

    monkeypatch.setattr(background_compile, "workers", {"another FFN": Running()})
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    assert dispatch.resolve(ffn, x) == "lean"
    _step(ffn, x)
    assert autotune.decisions() == {}
    monkeypatch.setattr(background_compile, "workers", {})
    _step(ffn, x)
    (record,) = autotune.decisions().values()
    assert record["source"] == "timed" and set(record["times_ms"]) >= {"lean", "reference"}


@pytest.fixture
def two_threads():
    """A process on two threads (the suite's workers run one each), restored after."""
    own = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(own)


@pytest.mark.parametrize("cpus, ranks, lends", [(2, "1", True), (4, "1", False), (4, "2", True)])
def test_a_core_is_lent_to_the_background_compile_and_taken_back(auto_compiling, two_threads, monkeypatch, tmp_path,
                                                                  cpus, ranks, lends):
    """Where the process's threads (with its machine's other ranks') fill the cores, it runs on one thread fewer while
    its background compile runs (two threads beside a compile ran eager lean 3x slower than one on the 2-core Zen 5:
    each parallel region waited for the thread the compiler displaced), keeps its own count in the keys and in what it
    asks the compile for, loads graphs on its own count, and times the candidates on it once the compile is done."""
    monkeypatch.setattr(background_compile, "_cpus", lambda: cpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    started, timed_on = [], []
    monkeypatch.setattr(background_compile, "start", lambda warm, spec: started.append(spec) or Worker())  # running
    monkeypatch.setattr(autotune, "_inductor_dir", lambda: str(tmp_path))
    monkeypatch.setattr(autotune, "_measure", lambda ffn, x, candidates, **kw: timed_on.append(
        torch.get_num_threads()) or {"times": {p: 0.5 if p == "fused" else 1.0 for p in candidates}, "samples": {},
                                     "dropped": {}, "saved": dict.fromkeys(candidates, 0), "mlp_saved": 1})
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    keys = autotune_cache.keys(ffn, x)
    assert "threads=2" in keys[1]
    _step(ffn, x)  # the compile starts; lean meanwhile
    assert [spec["threads"] for spec in started] == [2] and autotune.decisions() == {}
    assert torch.get_num_threads() == (1 if lends else 2) and background_compile.lent() == lends
    assert autotune_cache.keys(ffn, x) == keys and autotune._ffn_spec(ffn, x)["threads"] == 2
    with background_compile.own_threads():  # where graphs are loaded (a cached choice's warm-up)
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == (1 if lends else 2)
    _step(ffn, x)
    assert dispatch.resolve(ffn, x) == "lean" and not timed_on
    (worker,) = background_compile.workers.values()
    worker.returncode = 0  # done: the core back, then timed on the process's own threads
    _step(ffn, x)
    assert torch.get_num_threads() == 2 and not background_compile.lent() and timed_on == [2]
    assert autotune.decisions()[keys[0]]["path"] == "fused"
    if lends:  # a count the user sets meanwhile stands
        background_compile.lend()
        torch.set_num_threads(3)
        background_compile.reclaim()
        assert torch.get_num_threads() == 3 and not background_compile.lent()


def test_one_thread_lends_nothing(auto_compiling, monkeypatch):
    monkeypatch.setattr(background_compile, "_lent", [])
    monkeypatch.setattr(background_compile, "_cpus", lambda: 1)
    own = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        background_compile.lend()
        assert torch.get_num_threads() == 1 and not background_compile.lent()
    finally:
        torch.set_num_threads(own)


@pytest.mark.slow
def test_cold_start_first_step_on_an_empty_compiler_cache(tmp_path):
    """A benchmark, not a timed unit test: a B-spline KAN GPT-2 (2 x 256, 4 x 128 tokens) trains its first steps in
    a fresh process with empty compiler and autotune caches; the bound is generous (see the README for the figure
    measured on the development CPU; before auto stopped waiting for the compiler, ~106 s)."""
    code = ("import time, json; from kanformer.config import load_config; from kanformer.train import Trainer\n"
            f"cfg = load_config(preset='debug', overrides=['out_dir={tmp_path}', 'name=cold', 'ffn.name=bspline',"
            " 'model.n_embd=256', 'model.n_head=4', 'model.block_size=128', 'train.batch_size=4',"
            " 'train.max_steps=2', 'train.log_every=1', 'train.eval_every=1000', 'log.wandb=disabled'])\n"
            "tr = Trainer(cfg); t0 = time.perf_counter(); tr.fit(stop_at=1)\n"
            "print(json.dumps(time.perf_counter() - t0))")
    env = {k: v for k, v in os.environ.items() if k != "KANFORMER_KERNEL"}
    env.update(TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), KANFORMER_CACHE=str(tmp_path / "kc"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    seconds = json.loads(out.stdout.strip().splitlines()[-1])
    first = json.loads((tmp_path / "cold" / "metrics.jsonl").read_text().splitlines()[0])
    print(f"cold start: first step {first['wall_s']:.1f} s of training, {first['compile_s']:.1f} s compiling; "
          f"fit to the first checkpoint {seconds:.1f} s")
    assert first["step"] == 1 and first["wall_s"] + first["compile_s"] < 60


def test_the_background_compile_runs_in_the_token_range_of_the_process():
    """Above 4,096 tokens the C++ backend sums in chunks, and a graph compiled below that range is compiled again
    above it: the background compile runs at few tokens, but on the process's side of that bound."""
    ffn = create_ffn("bspline", D, H)
    assert [autotune._ffn_spec(ffn, torch.randn(n, D))["tokens"] for n in (3, 1024, 4096, 4097, 16384)] == [
        3, 256, 256, 4097, 4097]


def test_the_graphs_of_few_tokens_compile_apart_when_asked_and_are_remembered(auto_compiling, monkeypatch, tmp_path):
    """Calls of few tokens without autograd ask on every call whether their graphs are compiled. Those compile in a
    background process of their own, started by such a call once the FFN's own compile is done (a process that only
    trains never compiles them, and training's switch does not wait for them); found done, they are not asked for
    again (~28 us a reading of the record: ~9 % of a generation step's tokens/s) until ``forget``."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    (tmp_path / "inductor").mkdir()
    ffn, x = create_ffn("bspline", D, H), torch.randn(3, D)
    warm = autotune_cache.keys(ffn, x)[1]
    started = []
    monkeypatch.setattr(background_compile, "start", lambda key, spec: started.append((key, spec)) or Worker())
    assert not autotune.compiled_ready(ffn, x) and not started  # the FFN's own compile not done: nothing starts
    autotune_cache.store("compiled", warm, {"state": "ready", "inductor_dir": autotune._inductor_dir(), "since": 0.0})
    assert not autotune.compiled_ready(ffn, x) and not autotune.compiled_ready(ffn, x)
    ((key, spec),) = started  # started once
    assert key == warm + autotune._FEW and spec["few"] and spec["name"] == "bspline"
    background_compile.workers[key].returncode = 0  # done
    reads = []
    ready = autotune._ready
    monkeypatch.setattr(autotune, "_ready", lambda record: reads.append(1) or ready(record))
    assert autotune.compiled_ready(ffn, x) and _cache(auto_compiling)["compiled"][key]["state"] == "ready"
    before = len(reads)
    assert autotune.compiled_ready(ffn, x) and len(reads) == before  # remembered
    autotune.forget()
    assert autotune.compiled_ready(ffn, x) and len(reads) == before + 1 and len(started) == 1  # read from its record


@pytest.mark.slow
def test_the_background_compile_fills_the_cache_the_process_loads(tmp_path):
    """The real background compile, on empty caches, for a process on 2 threads: the call that switches to the chosen
    path, and a call of few tokens without autograd after it, load every graph from the compiler's cache and compile
    none (the compiler makes its C++ loops, and keys its
    cache, for a thread count: compiled on one thread, the graphs were compiled again in that call, 35 - 40 s here).
    Chebyshev of degree 1, the graphs quickest to compile: the whole test took 52 s on the 2-core Zen 5 (65 s at the
    default degree 4; RBF's exponentials 133 s on an older machine)."""
    code = ("import json, time, torch; from torch._dynamo.utils import counters\n"
            "from kanformer import create_ffn; from kanformer.layers import autotune, dispatch\n"
            "torch.set_num_threads(2); dispatch._mode[0] = 'auto'; torch.manual_seed(0)\n"
            f"ffn, x = create_ffn('chebyshev', {D}, {H}, degree=1), torch.randn(64, {D})\n"
            "deadline = time.monotonic() + 500\n"
            "while not autotune.decisions(ffn) and time.monotonic() < deadline:\n"
            "    ffn(x).square().mean().backward(); time.sleep(0.1)\n"
            "with torch.no_grad():\n"  # generation's few tokens: their graphs compiled in the background, apart
            "    while not autotune.compiled_ready(ffn, x[:3]) and time.monotonic() < deadline: time.sleep(0.5)\n"
            "    ffn(x[:3]); ffn(x[:1])\n"  # one token too (a path timed for it; that graph specialised to it)
            "print(json.dumps([[k.endswith(' | eval'), r['path'], r.get('dropped', {}), k.split(' | tokens<=')[1][:2]]"
            " for k, r in autotune.decisions().items()]"
            " + [counters['inductor']['fxgraph_cache_miss'], counters['inductor']['fxgraph_cache_hit'],"
            " any('|few' in key for key in dispatch._COMPILED)]))")
    env = {k: v for k, v in os.environ.items() if k not in ("KANFORMER_KERNEL", "OMP_NUM_THREADS")}
    env.update(TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), KANFORMER_CACHE=str(tmp_path / "kc"),
               KANFORMER_AUTOTUNE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    *decided, misses, hits, few = json.loads(out.stdout.strip().splitlines()[-1])
    training = [d for d in decided if not d[0]]
    assert len(training) == 1, "auto chose nothing within 500 s"
    ((_, path, dropped, _),) = training
    assert "fused" not in dropped and "compiled" not in dropped  # both compiled by the background process
    evaluation = {tokens: p for is_eval, p, _, tokens in decided if is_eval}
    assert evaluation.get("1 ") in ("fused", "reference")  # one token: timed
    # three tokens take training's fused path as it is; where training chose the reference, they are timed too
    assert set(evaluation) == ({"1 "} if path == "fused" else {"1 ", "4 "}), (path, evaluation)
    assert misses == 0 and hits >= 3 and few, (path, misses, hits, few)


def test_compiling_counts_as_overhead_once_inside_or_outside_the_tuning():
    """``overhead_seconds`` (what the trainer keeps out of the step throughput): the time spent choosing paths, with
    the compiling done inside it counted once, plus compiling outside it (a pinned fused path's first calls)."""
    inside_fn, outside_fn = torch.compile(lambda t: t * 3 - 1), torch.compile(lambda t: t * 5 + 2)
    over0, tuned0 = autotune.overhead_seconds(), autotune.tuning_seconds()
    with autotune._tuning():
        inside_fn(torch.randn(4))
    tuned = autotune.tuning_seconds() - tuned0
    assert tuned > 0 and autotune.overhead_seconds() - over0 == pytest.approx(tuned, abs=1e-6)
    t0 = time.perf_counter()
    outside_fn(torch.randn(4))
    outside = time.perf_counter() - t0
    assert 0.8 * outside <= autotune.overhead_seconds() - over0 - tuned <= outside
    before = autotune.overhead_seconds()
    torch._dynamo.reset()  # clears the compiler's own record: what was counted stays counted
    assert autotune.overhead_seconds() == before


def test_a_background_compile_that_fails_is_recorded_once(auto_compiling, monkeypatch):
    """The real background process, given an FFN it cannot build: its error is kept as the fused path's reason, on
    disk, and no second process starts."""
    monkeypatch.setattr(autotune, "_ffn_spec", lambda ffn, x: {"name": "no_such_ffn", "d_model": D, "hidden": H,
                                                                "kwargs": {}, "dtype": "float32", "device": "cpu",
                                                                "tokens": 8, "threads": 1})
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    _step(ffn, x)  # starts the process; lean meanwhile
    (proc,) = background_compile.workers.values()
    proc.wait(timeout=120)
    _step(ffn, x)  # reads its end: fused dropped with the reason, the others timed
    (record,) = autotune.decisions().values()
    assert "Unknown FFN 'no_such_ffn'" in record["dropped"]["fused"]
    (state,) = _cache(auto_compiling)["compiled"].values()
    assert state["state"].startswith("failed") and len(background_compile.workers) == 1


def test_a_background_compile_that_cannot_start_drops_fused_and_the_step_runs(auto_compiling, monkeypatch):
    """No process to be had for the background compile (a process limit, a sandbox): the FFN is timed without fused,
    the reason kept with the choice, and the step runs."""

    def no_process(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(background_compile.subprocess, "Popen", no_process)
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    _step(ffn, x)
    (record,) = autotune.decisions().values()
    assert record["dropped"]["fused"].startswith("failed: could not start the background compile (BlockingIOError")
    assert record["source"] == "timed" and not background_compile.workers


def test_the_background_compile_runs_the_copy_of_the_code_that_started_it(tmp_path):
    """A checkpoint's copy of the layer code, imported under a package of its own (as ``from_pretrained`` with
    ``trust_remote_code`` imports it, under the modules cache of transformers), starts its background process on that
    copy, not on the ``kanformer`` the interpreter would import (another version, or none at all). The process is given
    an FFN it cannot build, so it ends at once; its traceback runs through the copy's files."""
    from kanformer.models.common import write_portable_code

    copy = tmp_path / "checkpoint_code"
    write_portable_code(copy)
    (copy / "__init__.py").write_text("")
    code = ("import sys, json; sys.path.insert(0, sys.argv[1])\n"
            "from checkpoint_code import background_compile\n"
            "spec = {'name': 'no_such_ffn', 'd_model': 8, 'hidden': 8, 'kwargs': {},"
            " 'dtype': 'float32', 'device': 'cpu', 'tokens': 8, 'threads': 1}\n"
            "proc = background_compile.start('w', spec); proc.wait(timeout=120); proc.log.seek(0)\n"
            "print(json.dumps([proc.returncode, proc.log.read().decode()]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "KANFORMER_CACHE": str(tmp_path / "cache")}, timeout=300)
    returncode, log = json.loads(out.stdout.strip().splitlines()[-1])
    assert returncode != 0 and "Unknown FFN 'no_such_ffn'" in log
    assert str(copy / "registry.py") in log and "kanformer/layers" not in log


def test_a_killed_background_compile_is_started_once_more_before_it_counts_as_failed(auto_compiling, monkeypatch,
                                                                                    capsys):
    """The background process killed by a signal (the out-of-memory killer on a small machine, say) may have met a
    passing cause: it is started once more, and only a second kill is kept as the fused path's failure."""
    started = []
    monkeypatch.setattr(background_compile, "start", lambda warm, spec: started.append(warm) or Worker(-9))
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    _step(ffn, x)  # started; lean meanwhile
    _step(ffn, x)  # killed: started once more
    assert len(started) == 2 and autotune.decisions() == {} and "killed (signal 9)" in capsys.readouterr().err
    _step(ffn, x)  # killed again: kept as failed, the others timed
    (record,) = autotune.decisions().values()
    assert len(started) == 2 and record["dropped"]["fused"] == "failed: killed by signal 9, twice"


@pytest.mark.slow
def test_a_failed_compile_is_tried_again_a_day_later_and_its_choice_timed_again(auto_compiling, monkeypatch, tmp_path,
                                                                             capsys):
    """A failed compile is kept a day (a choice timed without fused is reused meanwhile), then started once more, since
    its cause may have passed (a full disk, a compiler installed since); once it compiles, the FFN is timed again with
    fused among the candidates, and the new choice replaces the old on disk."""
    started, timed = [], []
    monkeypatch.setattr(background_compile, "start", lambda warm, spec: started.append(warm) or Worker())  # running
    monkeypatch.setattr(autotune, "_inductor_dir", lambda: str(tmp_path))  # the compiler's cache, there
    monkeypatch.setattr(autotune, "_measure", lambda ffn, x, candidates, **kw: timed.append(candidates) or {
        "times": {p: 0.5 if p == "fused" else 1.0 for p in candidates}, "samples": {}, "dropped": {},
        "saved": dict.fromkeys(candidates, 0), "mlp_saved": 1})
    ffn, x = create_ffn("chebyshev", D, H), torch.randn(64, D)
    key, warm = autotune_cache.keys(ffn, x)
    autotune_cache.store("choices", key, {"path": "lean", "times_ms": {"lean": 1.0, "reference": 2.0}, "saved_mb": {},
                                     "dropped": {"fused": "failed: no space left on device"}, "memory": "lean"})
    autotune_cache.store("compiled", warm, {"state": "failed: no space left on device", "since": time.time() - 3600})
    _step(ffn, x)  # an hour old: kept, and the cached choice taken
    (record,) = autotune.decisions().values()
    assert record["source"] == "cache" and record["path"] == "lean" and not started and not timed
    autotune.forget()
    autotune_cache.store("compiled", warm, {"state": "failed: no space left on device",
                                            "since": time.time() - 2 * 86400})
    _step(ffn, x)  # two days old: compiled again, lean meanwhile, nothing decided
    assert started == [warm] and autotune.decisions() == {} and "trying it again" in capsys.readouterr().err
    background_compile.workers[warm].returncode = 0
    _step(ffn, x)  # compiled this time: timed again, fused among the candidates
    (record,) = autotune.decisions().values()
    assert record["source"] == "timed" and record["path"] == "fused" and "fused" in timed[0]
    assert _cache(auto_compiling)["choices"][key]["path"] == "fused"
    assert _cache(auto_compiling)["compiled"][warm]["state"] == "ready"


def test_the_gpu_checks_evaluation_step_records_an_evaluation_only_choice(auto, monkeypatch):
    """``benchmarks.bench_model.check_evaluation_choices`` (part of the GPU check) on CPU: the compiler reported failed
    here, so the decision is the reference with fused dropped; the process's earlier choices and the environment are
    left as they were."""
    from benchmarks.bench_model import check_evaluation_choices

    monkeypatch.delenv("KANFORMER_EVAL_COMPILE_AFTER_S", raising=False)
    out = check_evaluation_choices(torch.device("cpu"), {"d_model": D, "tokens": 64}, ["chebyshev"], timeout_s=60)
    assert out["chebyshev"]["path"] == "reference" and out["chebyshev"]["memory"] == "eval"
    assert out["chebyshev"]["dropped"] == {"fused": "failed: no compiler in this test"}
    assert "KANFORMER_EVAL_COMPILE_AFTER_S" not in os.environ and autotune.decisions() == {}


@pytest.mark.parametrize("grad", [True, False])
def test_a_wrong_input_width_under_auto_gets_the_ffns_own_error_and_records_nothing(auto, monkeypatch, grad):
    """Bad input is not timed (every candidate would fail and the failure be cached as a choice): the FFN's own
    error names the expected shape, under training and evaluation alike, and no choice is recorded."""
    monkeypatch.setenv("KANFORMER_EVAL_COMPILE_AFTER_S", "0")
    ffn = create_ffn("chebyshev", D, H)
    for bad in (torch.randn(64, D + 1), torch.tensor(1.0), torch.randn(64, 0)):
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=rf"expects inputs of shape \(\.\.\., {D}\)"):
            ffn(bad)
    assert autotune.decisions() == {}
    assert not auto.exists() or not _cache(auto)["choices"]


def test_the_distributed_evaluation_benchmark_runs_a_rank_and_reports_its_path(auto, monkeypatch, capsys):
    """``benchmarks.eval_ranks`` as one rank of a gloo group (CPU): it evaluates without grad under auto, and reports
    the path it ran (the reference: the compiler is reported failed here) and its distance from the reference; outside
    torchrun it says how to launch it."""
    from benchmarks.eval_ranks import main
    from tests.gloo import free_port

    with pytest.raises(SystemExit):
        main(["--seconds", "0"])
    assert "torch.distributed.run" in capsys.readouterr().err
    monkeypatch.setenv("KANFORMER_EVAL_COMPILE_AFTER_S", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    main(["--ffn", "chebyshev", "--d-model", str(D), "--tokens", "64", "--dtype", "fp32", "--seconds", "0.5"])
    out = capsys.readouterr().out
    assert "rank 0 (local 0): reference from" in out and "max |y - reference| 0" in out
    (record,) = autotune.decisions().values()
    assert record["path"] == "reference" and record["dropped"] == {"fused": "failed: no compiler in this test"}


def test_a_grid_update_or_extension_gives_the_ffn_keys_and_a_background_compile_of_its_own():
    """``auto`` keys an FFN's choice and background compile on its layers' fused forms and shapes as they are now: a
    grid fitted to data (the knot tables' graphs) and a grid extended in place (new shapes) each take keys of their
    own (the FFN's repr, taken once, kept naming the old shapes), and the background compile builds its FFN in the
    forms it is given, so it compiles the graphs this process will load."""
    ffn, x = create_ffn("bspline", D, H), torch.randn(64, D)
    uniform = autotune_cache.keys(ffn, x)
    assert "forms=" not in uniform[1] and "forms=" not in autotune_cache.keys(create_ffn("chebyshev", D, H), x)[1]
    ffn.update_grid(torch.randn(256, D) ** 3)
    fitted = autotune_cache.keys(ffn, x)
    assert fitted[0] != uniform[0] and fitted[1] == uniform[1].replace(" | float32", " | forms=knots,knots | float32")
    spec = autotune._ffn_spec(ffn, x)
    assert spec["forms"] == ["knots", "knots"]
    stand_in = create_ffn("bspline", D, H, **spec["kwargs"])
    background_compile.take_forms(stand_in, spec["forms"])
    assert autotune_cache.keys(stand_in, x) == fitted
    ffn.extend_grid(8)
    extended = autotune_cache.keys(ffn, x)[1]
    assert extended != fitted[1] and "n_basis=11" in extended and "forms=knots,knots" in extended
    with pytest.raises(ValueError, match="2 fused forms for the 1 KAN layers"):
        background_compile.take_forms(torch.nn.Sequential(create_ffn("bspline", D, H).fc1), ["knots", ""])
    order0 = create_ffn("bspline", D, H, spline_order=0).fc1.basis
    assert order0.fused_form() == "knots"  # order 0 runs on its knots on any grid
    with pytest.raises(ValueError, match="cannot take the fused form ''"):
        order0.take_form("")
    with pytest.raises(ValueError, match="cannot take the fused form ''"):
        stand_in.fc1.basis.take_form("")  # a stand-in is built uniform; nothing makes an adapted one uniform again
    with torch.device("meta"):  # no values to check: the form it was built in
        assert autotune_cache.layer_forms(create_ffn("bspline", D, H)) == ((8, ""), (8, ""))


def test_the_background_compile_builds_the_ffn_in_the_forms_of_its_spec(monkeypatch):
    built = []

    class Built(Exception):
        pass

    def compiled_forward(ffn):  # the first thing it compiles: the FFN it built is what is looked at
        built.append(ffn)
        raise Built

    monkeypatch.setattr(autotune, "compiled_forward", compiled_forward)
    spec = {"name": "bspline", "d_model": D, "hidden": H, "kwargs": {"grid_size": 6}, "forms": ["knots", "knots"],
            "dtype": "float32", "device": "cpu", "tokens": 8, "threads": torch.get_num_threads()}
    with pytest.raises(Built):
        background_compile.run({"warm": "w", "ffn": spec})
    (ffn,) = built
    assert [f for _, f in autotune_cache.layer_forms(ffn)] == ["knots", "knots"] and ffn.fc1.basis.grid_size == 6


def test_the_grids_to_come_have_their_graphs_compiled_one_configuration_at_a_time(auto, monkeypatch):
    """A trainer that will fit grids to data and extend them tells ``auto`` the configurations to come: once an FFN's
    choice is made, the background compile of the next one starts (once for a configuration: the FFNs after the first
    take its choice as made), the one after it at the choice that follows (a grid update, an extension); one already
    compiled is passed over; each compiles the very FFN whose keys the process will meet."""
    states, asked = {}, []
    monkeypatch.setattr(autotune, "_compile_state",
                        lambda warm: asked.append(warm) or states.get(warm, "failed: no compiler here"))
    model = torch.nn.Sequential(create_ffn("bspline", D, H), create_ffn("bspline", D, H), create_ffn("chebyshev", D, H))
    assert autotune.expect_grids(model, [(None, True), (8, True), (10, True)]) == 2
    x = torch.randn(64, D)
    uniform = autotune_cache.keys(model[0], x)[1]
    fitted = uniform.replace(" | float32", " | forms=knots,knots | float32")
    states[fitted] = "pending"
    _step(model[0], x)
    assert asked == [uniform, fitted] and autotune._pending_spec[fitted]["forms"] == ["knots", "knots"]
    _step(model[0], x)
    _step(model[1], x)  # the same configuration: the choice as made, nothing asked
    _step(model[2], x)  # no grid: its own compile alone
    assert asked[2:] == [autotune_cache.keys(model[2], x)[1]] and len(autotune.decisions()) == 2
    model[0].update_grid(torch.randn(256, D) ** 3)
    states[fitted] = "failed: no compiler here"  # (timed without fused here)
    (extended, spec), (further, _) = autotune._plans[model[0]][1:]
    states[extended] = "pending"
    _step(model[0], x)
    assert asked[3:] == [fitted, extended]  # its choice timed afresh, then the extension's compile started
    assert spec["kwargs"]["grid_size"] == 8 and spec["forms"] == ["knots", "knots"] and "n_basis=11" in extended
    stand_in = create_ffn(spec["name"], spec["d_model"], spec["hidden"], **spec["kwargs"])
    background_compile.take_forms(stand_in, spec["forms"])
    assert autotune_cache.keys(stand_in, x)[1] == extended  # what the worker builds has the keys it compiles for
    model[0].extend_grid(8, torch.randn(256, D))
    assert autotune_cache.keys(model[0], x)[1] == extended
    _step(model[0], x)  # its compile still under way: lean, no choice made
    states[extended] = "failed: no compiler here"
    _step(model[0], x)
    assert asked[5:] == [extended, extended, further] and "n_basis=13" in further
    assert len(autotune.decisions()) == 4
    # a configuration compiled already is passed over for the next one
    ffn = create_ffn("bspline", D, H, grid_size=6)
    assert autotune.expect_grids(torch.nn.Sequential(ffn), [(None, True), (8, False)]) == 1
    own = autotune_cache.keys(ffn, x)[1]
    states[own.replace(" | float32", " | forms=knots,knots | float32")] = "ready"
    uniform8 = autotune_cache.keys(create_ffn("bspline", D, H, grid_size=8), x)[1]
    states[uniform8] = "pending"
    del asked[:]
    _step(ffn, x)
    assert asked == [own, own.replace(" | float32", " | forms=knots,knots | float32"), uniform8]
    # an FFN its options do not rebuild: its other sizes are not forecast (they compile when they come)
    plain, odd, unknown = (create_ffn("bspline", D, H) for _ in range(3))
    assert autotune._stand_in(plain, 8)[0] == autotune_cache.ffn_signature(create_ffn("bspline", D, H, grid_size=8))
    odd.fc1.extra = torch.nn.Identity()  # a module added after it was built
    assert autotune._stand_in(odd, 8) is None and autotune._stand_in(odd, None)[0] == autotune_cache.ffn_signature(odd)
    unknown.ffn_kwargs["no_such_option"] = 1
    assert autotune._stand_in(unknown, 8) is None
    # an FFN with sharded units inside (FSDP per layer) takes the rule, untimed, and its grids' forms compile as well
    monkeypatch.setattr(autotune, "_sharded_inside", lambda ffn: True)
    sharded = create_ffn("bspline", D, H, grid_size=7)
    autotune.expect_grids(torch.nn.Sequential(sharded), [(None, True)])
    del asked[:]
    _step(sharded, x)
    own = autotune_cache.keys(sharded, x)[1]
    assert asked == [own, own.replace(" | float32", " | forms=knots,knots | float32")]
    assert autotune.decisions()[autotune_cache.keys(sharded, x)[0]]["source"].startswith("rule")


def test_the_background_compile_does_not_import_a_kanformer_from_its_working_directory(monkeypatch, tmp_path):
    """``python -c`` puts the working directory first on the path: a process started from a checkout of another
    version imported that one, which compiled other graphs than this process loads."""
    decoy = tmp_path / "kanformer"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise RuntimeError('the decoy package was imported')\n")
    monkeypatch.chdir(tmp_path)
    spec = {"name": "no_such_ffn", "d_model": 8, "hidden": 8, "kwargs": {}, "dtype": "float32", "device": "cpu",
            "tokens": 8, "threads": 1}
    proc = background_compile.start("w", spec)
    proc.wait(timeout=120)
    proc.log.seek(0)
    log = proc.log.read().decode()
    assert proc.returncode != 0 and "Unknown FFN 'no_such_ffn'" in log and "decoy" not in log, log[-2000:]
