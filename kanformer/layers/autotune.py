"""``auto`` picks a KAN FFN's path by measurement, once per machine.

For each (FFN configuration, token-count bucket, compute dtype, device; on CPU the process's thread count) the first
training call times the paths that apply on the FFN's own input, forward + backward:

* ``lean``: the eager memory-lean Functions (layers/lean.py);
* ``fused``: the same with their elementwise helpers compiled (dispatch.py);
* ``triton``: the hand-written kernels, on CUDA where the FFN has them;
* ``reference``: the definition, which saves its basis tensors;
* ``compiled``: ``torch.compile`` of the FFN's forward, where the compiler fuses and rematerialises the reference.

The candidates are timed in turns (5 steps each, median), and never while a background compile of this process runs
(on a small machine it takes a core from them); where the two fastest that may be chosen are within 15 % of each
other, those two are timed again (10 more turns, the median of all 15 steps), since the choice is kept. It keeps
the fastest that fits the memory rule (``set_kernel_memory`` / ``train.kernel_memory`` / ``KANFORMER_KERNEL_MEMORY``):
``lean`` (default) admits a path only if its saved activations stay <= those of a GELU MLP of the same width and 4 d
hidden units on the same tokens; ``fast`` admits every path. The choice is kept in ``<cache>/autotune.json``
(``KANFORMER_CACHE``, default ``~/.cache/kanformer``) under a fingerprint of the machine, its vector instructions
in force and the versions, so a later process reuses it without timing (the keys, the memory rule and the cache
file: autotune_cache.py); ``decisions()`` lists this process's choices and the trainer records them in the run's
``versions.json``.

Cold start: compiling the fused helpers takes minutes on a small CPU with an empty compiler cache, and ``auto`` never
makes a step wait for it. Until the compiler's on-disk cache holds them, a background process (background_compile.py)
compiles them for this FFN configuration (and this process's thread count, for which the compiler makes its C++
loops) while the FFN runs ``lean``, on a thread fewer where its threads fill the machine (a core lent to the compile:
``background_compile.lend``); once it is done, the next training call takes the core back, loads the graphs from that
cache (seconds), times the candidates and switches. A candidate that fails (no C++ compiler, say) is dropped and the
reason kept with the choice; a background process killed by a signal is started once more first. A failed compile is
tried again a day later, and a choice timed without ``fused`` for that reason is timed again once it compiles.
``KANFORMER_AUTOTUNE=0``: the fixed rule of dispatch.py instead (Triton where it applies, else fused).

The FFN configuration is its layers as they are now: a grid fitted to data (a B-spline's knot tables, whose graphs
differ) or extended in place has keys, a background compile and a timed choice of its own; a trainer that will fit
grids or extend them (``expect_grids``) has the next configuration compiled in the background once a choice is made.

Evaluation (no autograd): training's compiled choice where this process has one; in a process that only evaluates,
the forward paths are timed and cached the same way, once the evaluation has lasted long enough for a background
compile to pay (``inference_path``).

Several processes (DDP, FSDP, DeepSpeed): the first local rank of a machine compiles and times; the others run
``lean`` until its choice is in the disk cache and take it, so a machine's ranks run one path. A rank that waits 5
minutes for the first rank's compile of a configuration (up to an hour while the cache says that rank is compiling
it), or 5 more for its choice, compiles or times its own (the first rank may never see that configuration: a
pipeline stage's own layers, another thread count). An FFN sharded as a whole (FSDP per transformer block) is timed
inside its forward, where its parameters are gathered; one with sharded units inside it (FSDP per layer, ZeRO-3) is
not timed (that would run their collectives on one rank alone) and takes the fixed rule once the background compile
is done.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import background_compile, gemm, loop_moves
from .autotune_cache import MEMORY_RULES as MEMORY_RULES
from .autotune_cache import (
    bases,
    clear,
    compute_dtype,
    ffn_signature,
    keys,
    layer_forms,
    load,
    refresh,
    store,
)
from .autotune_cache import kernel_memory as kernel_memory
from .autotune_cache import set_kernel_memory as set_kernel_memory
from .background_compile import launch, warm_tokens  # (this form also tells a checkpoint's loader to copy the file)
from .saved import saved_bytes

_choices: dict[str, str] = {}  # key -> path, this process
_decided: dict[str, dict[str, Any]] = {}  # key -> record, for decisions()
_seconds = [0.0]  # time spent timing candidates in this process (compiling from cache included)
_compiling_inside = [0.0]  # the compiler's seconds within _seconds
_compile_record = [0.0, 0.0]  # compile_seconds() so far, and the compiler's own record at that reading
_compiled_fns: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # FFN -> torch.compile of its forward


def compiled_forward(ffn: Any) -> Any:
    """``torch.compile`` of ``ffn``'s forward, one per FFN, called on the reference path (inside a compiled graph the
    kit's other paths trace its lean Function: dispatch.traced; this candidate is the reference, compiled)."""
    fn = _compiled_fns.get(ffn)
    if fn is None:
        loop_moves.install()  # as the fused helpers are compiled (layers/loop_moves.py)
        fn = _compiled_fns[ffn] = functools.partial(_on_reference, torch.compile(ffn._forward, dynamic=True))
    return fn


def _on_reference(fn: Any, x: torch.Tensor) -> torch.Tensor:
    from .dispatch import kernel

    with kernel("reference"):
        return fn(x)


def enabled() -> bool:
    return os.environ.get("KANFORMER_AUTOTUNE", "1") not in ("0", "false", "off")


def tuning_seconds() -> float:
    """Seconds this process has spent choosing paths (timing, compiling from the cache): not training time."""
    return _seconds[0]


def compile_seconds() -> float:
    """Seconds this process has spent in ``torch.compile``'s compilation (tracing, the compiler, loading from its
    cache), as the compiler records them; 0 where this torch keeps no such record. Never decreasing: where the record
    was cleared since the last reading (``torch._dynamo.reset()``), its new entries are added to what was read."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
        recorded = float(sum(compilation_time_metrics.get("_compile.compile_inner", ())))
    except Exception:  # noqa: BLE001 - a private record: its absence only hides compile time from the throughput
        recorded = 0.0
    total, last = _compile_record
    total += recorded - last if recorded >= last else recorded
    _compile_record[:] = [total, recorded]
    return total


def overhead_seconds() -> float:
    """Seconds of this process that were not training: choosing paths (``tuning_seconds``) and compiling outside
    that (a pinned ``fused`` path's first calls, ``torch.compile`` of a model, a recompilation)."""
    return _seconds[0] + compile_seconds() - _compiling_inside[0]


@contextlib.contextmanager
def _tuning() -> Iterator[None]:
    """Counts the block as time spent choosing paths (``tuning_seconds``)."""
    t0, c0 = time.perf_counter(), compile_seconds()
    try:
        yield
    finally:
        _seconds[0] += time.perf_counter() - t0
        _compiling_inside[0] += compile_seconds() - c0


def _ffns(model: torch.nn.Module) -> list[Any]:
    """The kit's FFNs inside ``model``."""
    return [m for m in model.modules() if hasattr(m, "_forward") and hasattr(m, "ffn_kwargs")]


def decisions(model: torch.nn.Module | None = None) -> dict[str, dict[str, Any]]:
    """This process's choices: key -> {path, times_ms, saved_mb, mlp_saved_mb, dropped, source (timed|cache)};
    with ``model``, only those of its own FFNs."""
    if model is None:
        return {k: dict(v) for k, v in _decided.items()}
    mine = {ffn_signature(m) for m in _ffns(model)}
    return {k: dict(v) for k, v in _decided.items() if k.split(" | ", 1)[0] in mine}


_expected: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # FFN -> the configurations its grids will take
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # FFN -> [(warm key, compile spec)] of those to come


def expect_grids(model: torch.nn.Module, ahead: list[tuple[int | None, bool]]) -> int:
    """Tell ``auto`` the configurations the grids of ``model``'s KAN FFNs will take in this process, in the order
    they come (the trainer's ``kan.grid_update_every`` and ``kan.grid_extend``: ``KanConfig.grids_ahead``): per
    configuration its grid size (None: as now) and whether the grids have been fitted to data by then. Once an FFN's
    choice is made, the graphs of the next configuration compile in the background, beside training (one at a time:
    the next starts at the choice after it), so the first call after a grid update or extension finds them compiled
    and is timed at once, instead of running ``lean`` (on an adapted grid ~4x the fused step at d 128, 1024 tokens)
    until a compile started then is done. Returns the number of FFNs with grids."""
    n = 0
    for ffn in _ffns(model):
        if ahead and any(getattr(b, "has_grid", False) for b in bases(ffn)):
            _expected[ffn] = list(ahead)
            n += 1
    return n


def _stand_in(ffn: Any, grid_size: int | None) -> tuple[str, tuple[int, ...]] | None:
    """(signature, the layers' function counts) of ``ffn`` with ``grid_size`` intervals (None: as it is), from a
    copy of its configuration built without values; None where such a copy is not ``ffn``'s configuration or cannot
    be built (an FFN its options do not rebuild): that size compiles when it comes."""
    if grid_size is None:
        return ffn_signature(ffn), tuple(n for n, _ in layer_forms(ffn))
    from .registry import create_ffn

    try:
        with torch.device("meta"):
            built = [create_ffn(ffn.name, ffn.d_model, ffn.hidden, **{**ffn.ffn_kwargs, **size})
                     for size in ({}, {"grid_size": grid_size})]
    except Exception:  # noqa: BLE001  (a forecast only: training goes on without it)
        return None
    if ffn_signature(built[0]) != ffn_signature(ffn):
        return None
    return ffn_signature(built[1]), tuple(n for n, _ in layer_forms(built[1]))


def _compile_expected(ffn: Any, x: torch.Tensor) -> None:
    """After a choice of ``ffn``: its grids' configurations up to the present one (``expect_grids``) passed, the
    background compile of the next one not yet compiled started (one at a time)."""
    if ffn in _expected:  # the first time: each configuration's warm key and background compile spec
        own_bases, plans = bases(ffn), []
        for size, fitted in _expected.pop(ffn):
            made = _stand_in(ffn, size)
            if made is None:
                continue
            signature, counts = made
            forms = tuple((n, b.fitted_form() if fitted else b.fused_form())
                          for n, b in zip(counts, own_bases, strict=True))
            warm = keys(ffn, x, forms, signature)[1]
            kwargs = ffn.ffn_kwargs if size is None else {**ffn.ffn_kwargs, "grid_size": size}
            plans.append((warm, {**_ffn_spec(ffn, x), "kwargs": kwargs, "forms": [f for _, f in forms]}))
        _plans[ffn] = plans
    ahead = _plans.get(ffn)
    if not ahead:
        return
    now, warms = keys(ffn, x)[1], [w for w, _ in ahead]
    del ahead[: warms.index(now) + 1 if now in warms else 0]
    for warm, spec in ahead:
        if warm == now:
            continue
        _pending_spec.setdefault(warm, spec)
        if _compile_state(warm) == "pending":
            return


def _inductor_dir() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        return cache_dir()
    except Exception:  # an older layout: the documented default
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "torchinductor"))


# -- choosing ------------------------------------------------------------------------------------------------------
def _has_triton(ffn: Any, x: torch.Tensor) -> bool:
    from .triton_kan import triton_available

    if not triton_available(x) or not x.is_cuda:
        return False
    layers = [m for m in ffn.modules() if hasattr(m, "basis")]
    return not layers or any(m.basis.triton_params() is not None for m in layers)


def _candidates(ffn: Any, x: torch.Tensor) -> list[str]:
    out = ["lean", "fused"]
    if _has_triton(ffn, x):
        out.append("triton")
    return [*out, "reference"]


def _compile_state(warm: str) -> str:
    """``ready`` (the compiler cache holds this FFN's fused helpers), ``pending`` (a background process is compiling
    them) or ``failed: <why>``; starts that process the first time, and again once a failure is a day old."""
    record = load()["compiled"].get(warm)
    kept_failure = _failed(record) and time.time() - record.get("since", 0.0) < _RETRY_FAILED_S
    if kept_failure or _ready(record):
        return record["state"]
    proc = background_compile.workers.get(warm)
    if proc is None:
        if _waiting_for_first_rank(warm, record):  # one compile per machine: the first local rank's
            refresh()
            return "pending"
        if _failed(record):  # a day old: the cause may have passed (a full disk, a compiler installed since)
            print(f"kanformer: the background compile of {warm} failed a day or more ago ({record['state']}); "
                  "trying it again", file=sys.stderr)
        state = _launch(warm)
        if state == "pending":
            store("compiled", warm, {"state": "pending", "since": time.time()})  # the other local ranks wait for it
        return state
    if proc.poll() is None:
        return "pending"
    proc.log.seek(0)
    err = proc.log.read().decode(errors="replace").strip().splitlines()
    proc.log.close()
    if proc.returncode < 0 and not getattr(proc, "again", False):
        # killed by a signal (the kernel's out-of-memory killer on a small machine, a user): a passing cause, maybe,
        # so once more before the failure is kept, for this machine and versions
        print(f"kanformer: the background compile of {warm} was killed (signal {-proc.returncode}); starting it "
              "once more", file=sys.stderr)
        state = _launch(warm)
        if state == "pending":
            background_compile.workers[warm].again = True
        return state
    why = f"killed by signal {-proc.returncode}, twice" if proc.returncode < 0 else (
        err[-1] if err else f"exit {proc.returncode}")
    state = "ready" if proc.returncode == 0 else f"failed: {why}"
    store("compiled", warm, {"state": state, "inductor_dir": _inductor_dir(), "since": time.time()})
    return state


_RETRY_FAILED_S = 86400.0  # a failed compile is kept this long, then tried again


def _ready(record: Any) -> bool:
    """Whether a background compile's record says the compiler's cache, as this process has it, holds the helpers."""
    return (isinstance(record, dict) and record.get("state") == "ready"
            and record.get("inductor_dir") == _inductor_dir() and Path(_inductor_dir()).is_dir())


_ready_keys: set[str] = set()  # warm keys this process found compiled: asked on every call of few tokens
_FEW = " | few"  # a warm key's suffix for its graphs of few tokens, compiled apart


def compiled_ready(ffn: Any, x: torch.Tensor) -> bool:
    """Whether the graphs of few tokens without autograd of ``ffn`` for inputs like ``x`` are in the compiler's cache
    (as recorded by their background compile). They are compiled apart from the FFN's other helpers, after them,
    when the first call that would take them comes (a process that only trains never compiles them, and training's
    switch does not wait for them); until then, False. Once found so, remembered: reading the record (the compiler's
    directory, a stat of it) took ~28 us, which in a generation step of the demo's B-spline GPT-2 cost ~9 % of its
    tokens/s."""
    background_compile.reclaim()
    warm = keys(ffn, x)[1]
    few = warm + _FEW
    if few in _ready_keys:
        return True
    if background_compile.lent() and x.device.type == "cpu":
        return False  # its first call would load the graphs on a thread fewer (made, and keyed, for the process's own)
    compiled = load()["compiled"]
    if _ready(compiled.get(few)):
        _ready_keys.add(few)
        return True
    if _ready(compiled.get(warm)):  # the FFN's own compile done: its graphs of few tokens next
        if few not in _pending_spec:
            _pending_spec[few] = {**_ffn_spec(ffn, x), "few": True}
        if _compile_state(few) == "ready":
            _ready_keys.add(few)
            return True
        refresh()
    return False


def _failed(record: Any) -> bool:
    return isinstance(record, dict) and record.get("state", "").startswith("failed")


def _timed_without_a_compile_now_had(cached: dict[str, Any], warm: str) -> bool:
    """Whether the cached choice ``cached`` was timed without ``fused`` because compiling it failed, and the compile
    now runs again or is done (tried again a day later, or the background process could not start then): the FFN is
    then timed again once it is ready, rather than keep for good a choice made without its fastest path."""
    return (cached.get("dropped", {}).get("fused", "").startswith("failed")
            and not _compile_state(warm).startswith("failed"))


_pending_spec: dict[str, dict[str, Any]] = {}  # warm key -> what its background compile is to compile


def _launch(warm: str) -> str:
    return launch(warm, _pending_spec[warm])


def _ffn_spec(ffn: Any, x: torch.Tensor) -> dict[str, Any]:
    return {"name": ffn.name, "d_model": ffn.d_model, "hidden": ffn.hidden, "kwargs": ffn.ffn_kwargs,
            "forms": [form for _, form in layer_forms(ffn)],
            "dtype": str(compute_dtype(x)).removeprefix("torch."), "device": x.device.type,
            "tokens": warm_tokens(x.numel() // x.shape[-1]), "threads": background_compile.threads()}


_ROUNDS = 5  # timed steps per candidate, taken in turns


def _time(step: Any, device: torch.device) -> float:
    """Seconds of one ``step()`` (CUDA synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _call(ffn: Any, x: torch.Tensor, path: str) -> torch.Tensor:
    """``ffn``'s forward on ``path`` (a kernel path, or ``compiled``)."""
    from .dispatch import scoped_kernel

    if path == "compiled":
        return compiled_forward(ffn)(x)
    with scoped_kernel(path):
        return ffn._forward(x)


def _warm_up(ffn: Any, x: torch.Tensor, path: str) -> None:
    """One forward + backward of ``ffn`` on ``path`` (gradients returned, not accumulated)."""
    xt = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = _call(ffn, xt, path)
        torch.autograd.grad(out, [xt, *(p for p in ffn.parameters() if p.requires_grad)], torch.ones_like(out))


def _measure(ffn: Any, x: torch.Tensor, candidates: list[str], backward: bool = True, rounds: int = _ROUNDS,
             memory: bool = True) -> dict[str, Any]:
    """Each candidate's median step time over ``rounds`` turns, forward + backward (``backward`` off: the forward
    alone, without autograd, and no saved activations measured), its steps' times, the bytes it saves and the MLP's
    (``memory`` off: not measured), and the candidates that failed."""
    from .registry import create_ffn

    xt = x.detach().clone().requires_grad_(backward)
    params = [p for p in ffn.parameters() if p.requires_grad]
    grad_out = torch.randn_like(xt)

    def step(path: str) -> Any:
        def run() -> None:
            if not backward:
                with torch.no_grad():
                    _call(ffn, xt, path)
                return
            with torch.enable_grad():
                out = _call(ffn, xt, path)
                torch.autograd.grad(out, [xt, *params], grad_out.to(out.dtype))
        return run

    mlp_saved = 0
    if backward and memory:
        mlp = create_ffn("mlp", ffn.d_model, 4 * ffn.d_model).to(x.device)
        with torch.enable_grad():
            mlp_saved = saved_bytes(lambda: mlp(xt))
    samples: dict[str, list[float]] = {}
    saved, dropped = {}, {}

    def attempt(path: str, fn: Any) -> None:
        try:
            fn()
        except Exception as err:  # noqa: BLE001  (a path that fails here is dropped, with the reason)
            dropped[path] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            samples.pop(path, None)

    for path in candidates:
        samples[path] = []
        attempt(path, step(path))  # first call: compiles where the path compiles
    for _ in range(rounds):  # interleaved, so a machine that drifts moves every candidate alike
        for path in list(samples):
            attempt(path, lambda p=path: samples[p].append(_time(step(p), x.device)))
    for path in list(samples) if backward and memory else ():
        def record(p: str = path) -> None:
            with torch.enable_grad():
                saved[p] = saved_bytes(lambda: _call(ffn, xt, p))
        attempt(path, record)
    times = {p: _median(v) for p, v in samples.items()}
    return {"times": times, "samples": samples, "saved": saved, "mlp_saved": mlp_saved, "dropped": dropped}


_CLOSE = 0.15  # the two fastest eligible candidates within 15 % of each other: a close call, timed again


def _median(steps: list[float]) -> float:
    """The median step time (the upper one of an even count)."""
    return sorted(steps)[len(steps) // 2]


def _confirm(ffn: Any, x: torch.Tensor, m: dict[str, Any], eligible: list[str], backward: bool = True) -> list[str]:
    """Where the two fastest of ``eligible`` (paths timed in ``m``) are within ``_CLOSE`` of each other, time those
    two again, ``2 * _ROUNDS`` more turns, and put each one's median over all its steps into ``m``; returns them
    (else nothing). A choice is kept for good, and a few slowed turns decided a close call once: Jacobi, d 768, 4096
    tokens, bf16 autocast, timed as eager lean 543 against fused 592 ms, so lean was kept, while in the benchmark
    that followed every other FFN ran fused at ~1.0x the MLP's step and Jacobi on lean at 1.32 - 1.54x."""
    ranked = sorted(eligible, key=m["times"].__getitem__)
    if len(ranked) < 2 or m["times"][ranked[1]] > m["times"][ranked[0]] * (1 + _CLOSE):
        return []
    again = _measure(ffn, x, ranked[:2], backward=backward, rounds=2 * _ROUNDS, memory=False)
    m["dropped"].update(again["dropped"])
    for path in ranked[:2]:
        if path in again["dropped"]:
            m["times"].pop(path)
        else:
            m["times"][path] = _median(m["samples"][path] + again["samples"][path])
    return ranked[:2]


def _sharded_inside(ffn: Any) -> bool:
    """Whether modules inside ``ffn`` are sharded units of their own (FSDP per layer, DeepSpeed ZeRO-3): their
    forward and backward run collectives, so timing them on one rank, outside the training step, would run those
    collectives alone (the other ranks waiting in another one). An FFN sharded as a whole (FSDP per block, the
    configs' wrapping) has its parameters gathered for its forward, where it is timed as usual."""
    with contextlib.suppress(ImportError):
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

        if any(m is not ffn and isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in ffn.modules()):
            return True
    return any(hasattr(p, "ds_id") for p in ffn.parameters())  # ZeRO-3 partitions (and gathers) every parameter


def _by_rule(ffn: Any, x: torch.Tensor, key: str, warm: str, interim: str, memory: str) -> str:
    """The untimed choice for an FFN with sharded modules inside: Triton where it applies, else ``fused`` once the
    background compile is done (``interim`` until then, and for good where compiling failed: ``lean`` for training,
    ``reference`` for evaluation). Kept in this process only: the disk cache holds timed choices."""
    state = _compile_state(warm)
    if state == "pending":
        return interim
    path = "triton" if _has_triton(ffn, x) else "fused" if state == "ready" else interim
    _choices[key] = path
    _decided[key] = {"path": path, "times_ms": {}, "saved_mb": {}, "dropped": {} if state == "ready" else
                     {"fused": state}, "memory": memory, "source": "rule: sharded modules inside the FFN"}
    return path


def _adopt(key: str, cached: dict[str, Any], warm_up: Any) -> str:
    """Take the disk cache's choice ``cached`` for ``key``; a compiled path is loaded (from the compiler's cache) now,
    by ``warm_up(path)``, as tuning time."""
    path = cached["path"]
    _choices[key], _decided[key] = path, {**cached, "source": "cache"}
    if path in ("fused", "triton", "compiled"):
        with _tuning(), background_compile.own_threads():
            warm_up(path)
    return path


def _keep(ffn: Any, key: str, path: str, times: dict[str, float], record: dict[str, Any], what: str = "") -> str:
    """Keep the timed choice ``path`` for ``key`` (on disk and in this process; ``record``: its other fields) and
    report it in a log line."""
    record = {"path": path, "times_ms": {p: round(t * 1e3, 3) for p, t in times.items()}, **record}
    store("choices", key, record)
    _choices[key], _decided[key] = path, {**record, "source": "timed"}
    measured = (", ".join(f"{p} {t * 1e3:.1f} ms" for p, t in times.items())
                or f"fused: {record['dropped'].get('fused')}")
    if record.get("retimed"):
        measured += f"; {' and '.join(record['retimed'])} close, timed again"
    print(f"kanformer kernel auto{what}: {ffn.name} FFN {ffn.d_model}x{ffn.hidden} -> {path} ({measured})",
          file=sys.stderr)
    return path


_FOLLOW_S = 300.0  # how long a non-first local rank waits for the first one's compile, then for its choice
_COMPILING_S = 3600.0  # how long a "pending" record (the first local rank's compile under way) is believed
_follow_since: dict[str, float] = {}  # choice key -> when this non-first local rank began waiting for the choice
_compile_wait_since: dict[str, float] = {}  # warm key -> when it began waiting for the compile


def _following(key: str, warm: str) -> bool:
    """Whether this process, a local rank other than the first of a multi-process run, waits for the first local
    rank's timed choice of ``key`` (read from the disk cache; lean meanwhile) instead of timing its own: every rank of
    a machine then runs one path (ranks timing at once on shared cores disturb each other's timings, and ranks on
    different paths differ in rounding and in speed, the slowest setting the pace). Up to ``_FOLLOW_S``, then it
    times its own; at once where it compiled ``warm`` itself (the first rank did not: it will not time it either)."""
    if os.environ.get("LOCAL_RANK", "0") == "0" or warm in background_compile.workers:
        return False
    since = _follow_since.setdefault(key, time.monotonic())
    if time.monotonic() - since > _FOLLOW_S:
        return False
    refresh()
    return True


def _waiting_for_first_rank(warm: str, record: Any) -> bool:
    """Whether this process, a local rank other than the first, leaves the compile of ``warm`` to the first local
    rank: while the disk cache says that rank is compiling it (``record``: ``pending``, for up to ``_COMPILING_S``),
    and up to ``_FOLLOW_S`` without such a record, then it compiles its own. The first rank may never compile it: it
    holds other layers (a pipeline stage), or runs on another thread count (the warm key's ``threads``); waiting on,
    such a rank would run ``lean`` to the end of training."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        return False
    if (isinstance(record, dict) and record.get("state") == "pending"
            and time.time() - record.get("since", 0.0) < _COMPILING_S):
        return True
    since = _compile_wait_since.setdefault(warm, time.monotonic())
    if time.monotonic() - since <= _FOLLOW_S:
        return True
    print(f"kanformer: local rank {os.environ['LOCAL_RANK']}: no compile of {warm} from the first local rank after "
          f"{_FOLLOW_S:.0f} s; compiling it here", file=sys.stderr)
    return False


def choice(ffn: Any, x: torch.Tensor) -> str:
    """The path for this training call of ``ffn`` on ``x`` under ``auto``."""
    background_compile.reclaim()
    key, warm = keys(ffn, x)
    if key in _choices:
        return _choices[key]
    _pending_spec.setdefault(warm, _ffn_spec(ffn, x))
    if _sharded_inside(ffn):
        path = _by_rule(ffn, x, key, warm, "lean", kernel_memory())
        if key in _choices:
            _compile_expected(ffn, x)
        return path
    cached = load()["choices"].get(key)
    if cached and not _timed_without_a_compile_now_had(cached, warm):
        path = _adopt(key, cached, lambda path: _warm_up(ffn, x, path))
        _compile_expected(ffn, x)
        return path
    candidates = _candidates(ffn, x)
    state = _compile_state(warm)
    if state == "pending" or busy() or _following(key, warm):
        # not cached: asked again next call. Nor timed beside another FFN's background compile: on a small machine it
        # takes a core from the candidates (it once made eager lean time faster than fused, and that choice sticks)
        return "lean"
    dropped = {}
    if state != "ready":
        candidates.remove("fused")
        dropped["fused"] = state
    else:  # the background process compiled torch.compile of the reference too
        candidates.append("compiled")
    with _tuning():
        m = _measure(ffn, x, candidates)
        fast = kernel_memory() == "fast"
        eligible = [p for p in m["times"] if fast or m["saved"][p] <= m["mlp_saved"]]
        retimed = _confirm(ffn, x, m, eligible)
    dropped.update(m["dropped"])
    fits = {p: t for p, t in m["times"].items() if p in eligible}
    if not fits:  # nothing measured fits: the lean path always runs and always fits
        fits = {"lean": m["times"].get("lean", 0.0)}
    path = _keep(ffn, key, min(fits, key=fits.get), m["times"], {
        "saved_mb": {p: round(b / 2**20, 2) for p, b in m["saved"].items()},
        "mlp_saved_mb": round(m["mlp_saved"] / 2**20, 2), "dropped": dropped, "memory": kernel_memory(),
        "retimed": retimed})
    _compile_expected(ffn, x)
    return path


_eval_since: dict[str, float] = {}  # warm key -> when this process's first evaluation call of it came


def eval_compile_after_s() -> float:
    """How long an evaluation runs on the reference before ``auto`` compiles the fused helpers for it in the
    background (``KANFORMER_EVAL_COMPILE_AFTER_S``, default 30 s: long enough that the compile pays, while a short
    evaluation, a notebook's generation, starts none; 0: at the first call)."""
    raw = os.environ.get("KANFORMER_EVAL_COMPILE_AFTER_S", "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"KANFORMER_EVAL_COMPILE_AFTER_S must be a number of seconds >= 0, got {raw!r}")
    return value


def _eval_candidates(ffn: Any, x: torch.Tensor, warm: str) -> tuple[list[str], dict[str, str]] | None:
    """The paths an evaluation call may time (the reference first; ``fused`` once the compiler's cache holds the
    FFN's helpers, ``triton`` where it applies) and the dropped ones with their reasons; None to wait (the reference
    meanwhile): the background compile runs, or the evaluation has not yet lasted ``eval_compile_after_s()``."""
    candidates, dropped = ["reference"], {}
    if _has_triton(ffn, x):
        candidates.append("triton")
    record = load()["compiled"].get(warm)
    started = warm in background_compile.workers or isinstance(record, dict)
    since = _eval_since.setdefault(warm, time.monotonic())  # read first: with 0 s to wait, the first call waits none
    if not started and time.monotonic() - since < eval_compile_after_s():
        return (candidates, dropped) if len(candidates) > 1 else None
    state = _compile_state(warm)
    if state == "pending":
        return (candidates, dropped) if len(candidates) > 1 else None
    if state == "ready":
        candidates.insert(1, "fused")
    else:
        dropped["fused"] = state
    return candidates, dropped


def _eval_choice(ffn: Any, x: torch.Tensor, key: str, warm: str) -> str:
    """The timed evaluation path of ``ffn`` for inputs like ``x`` (``key``): from this process, the disk cache, or
    measured now (forward only, without autograd; no memory rule: nothing is saved); ``reference`` until there is
    something to time against it."""
    if key in _choices:
        return _choices[key]
    _pending_spec.setdefault(warm, _ffn_spec(ffn, x))
    cached = load()["choices"].get(key)
    # a cached fused choice only with its helpers in the compiler's cache (else one call would compile for minutes)
    if cached and (cached["path"] != "fused" or _compile_state(warm) == "ready") and not (
            _timed_without_a_compile_now_had(cached, warm)):
        return _adopt(key, cached, lambda path: _call(ffn, x, path))
    if _sharded_inside(ffn):  # untimed (collectives on one rank alone): the fixed rule once its compile is ready
        return _by_rule(ffn, x, key, warm, "reference", "eval")
    found = _eval_candidates(ffn, x, warm)
    if found is None or busy() or _following(key, warm):
        return "reference"
    candidates, dropped = found
    times: dict[str, float] = {}
    retimed: list[str] = []
    if len(candidates) > 1:  # else nothing to time against the reference (compiling failed here)
        with _tuning():
            m = _measure(ffn, x, candidates, backward=False)
            retimed = _confirm(ffn, x, m, list(m["times"]), backward=False)
        dropped.update(m["dropped"])
        times = m["times"]
    path = min(times, key=times.get) if times else "reference"
    return _keep(ffn, key, path, times, {"saved_mb": {}, "dropped": dropped, "memory": "eval", "retimed": retimed},
                 " (evaluation)")


def inference_path(ffn: Any, x: torch.Tensor) -> str | None:
    """The path for a call of ``ffn`` without autograd (evaluation, generation) under ``auto``; None: the reference.

    A process that chose a compiled path (``fused``, ``triton``) for training the FFN in this dtype and device takes
    it: its forward graphs serve a forward without grad as they are (nothing compiled, nothing timed). bf16 autocast,
    d 384, 2048 tokens: the B-spline FFN's forward 18.5 ms fused against 123 ms reference, the GELU MLP's ~17 ms.
    Otherwise (a process that only evaluates: ``kanformer eval``, lm-evaluation-harness) the path is timed, forward
    only, per token-count bucket and cached on disk like training's: the reference against ``fused`` once the
    compiler's cache holds the FFN's helpers, which a background compile puts there when the evaluation has lasted
    ``eval_compile_after_s()`` (the reference meanwhile); where Triton kernels apply (CUDA), against them at once
    (and ``fused`` if ready). ``torch.inference_mode`` (which the compiled graphs are guarded against) takes the
    reference.

    One token (a generation step of one sequence) takes the reference until the background compile is done (a
    compiled graph specialises size 1, so anything else would compile now; the background process compiles the
    graph of few tokens for one token too), and then the path timed for it, in every process: the fused path's is
    the graph of few tokens, whose fixed costs at one token may exceed the reference's (2-core CPU, d 128, ms: the
    B-spline's reference 0.33, RBF's 0.20, Chebyshev's 0.14)."""
    if torch.is_inference_mode_enabled():
        return None
    background_compile.reclaim()
    key, warm = keys(ffn, x)
    evaluation = key.rsplit(" | ", 1)[0] + " | eval"
    if x.numel() <= x.shape[-1]:
        if evaluation not in _choices and not compiled_ready(ffn, x):
            return None
        path = _eval_choice(ffn, x, evaluation, warm)
        return None if path == "reference" else path
    for k, path in _choices.items():
        if path in ("fused", "triton") and k.startswith(warm + " | ") and not k.endswith(" | eval"):
            return path
    path = _eval_choice(ffn, x, evaluation, warm)
    return None if path == "reference" else path


def busy() -> bool:
    """Whether a background compile of this process is still running (or the core lent to it is not back yet: so
    nothing is timed on a thread fewer)."""
    background_compile.reclaim()
    return background_compile.lent() or background_compile.running()


def settle(ffn: Any, x: torch.Tensor, timeout_s: float = 1800.0) -> str:
    """Block until ``auto`` has chosen ``ffn``'s path for inputs like ``x`` (waiting for the background compile,
    where one runs) and return it: for benchmarks, which must time the path auto settles on, not the interim."""
    deadline = time.monotonic() + timeout_s
    key, _ = keys(ffn, x)
    while True:
        with torch.enable_grad():
            path = choice(ffn, x)
        if key in _choices or time.monotonic() > deadline:
            return path
        time.sleep(1.0)
        refresh(0.0)


def forget() -> None:
    """Drop this process's choices, the matmul library's included (the disk cache stays), and its clocks of waiting
    (for another rank's choice, a compile, an evaluation's start): the next call reads the cache or times again, as
    a new process's would."""
    gemm.set_library(gemm.setting())
    _choices.clear()
    _ready_keys.clear()
    _decided.clear()
    clear()
    _pending_spec.clear()
    for since in (_follow_since, _compile_wait_since, _eval_since):
        since.clear()
