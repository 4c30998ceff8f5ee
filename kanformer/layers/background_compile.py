"""The background compile: a process that compiles a KAN FFN's fused helpers into the compiler's on-disk cache.

``auto`` (autotune.py) never makes a step wait for the compiler: the first time it meets an FFN configuration whose
fused helpers are not in the compiler's cache, it starts one such process (``launch``) and runs the eager lean path
meanwhile; the process (``run``) builds the same FFN, calls it on the fused path and on ``torch.compile`` of its
reference at a few token counts, and exits. Once it is done the training process loads those graphs from the cache in
seconds, times the candidates and switches. ``workers`` holds this process's background compiles by warm key (the
FFN's configuration, dtype, device, thread count and matmul routing: ``autotune_cache.keys``); none outlives the
process.

While one runs, a process whose threads fill the machine lends it a core (``lend``, ``reclaim``): its OpenMP threads
and the compiler would otherwise share the cores, and every parallel region then waits for the thread the compiler
displaced. On the 2-core Zen 5 VM (the demo's B-spline GPT-2 training beside its FFN's compile, 30 s each): eager
``lean`` 2.2 K tokens/s on two threads against 6.6 K on one, the compile 63 against 47 s; ``fused`` (another FFN's
compile beside it) 3.8 K against 10.0 K. What is compiled and keyed by the thread count keeps the process's own
(``threads``), and nothing is compiled or loaded in this process while the core is lent (``autotune``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import gemm
from .compile_options import get_compile_options, options_tag

workers: dict[str, subprocess.Popen] = {}  # warm key -> its background compile
_lent: list[int] = []  # the process's own thread count while it lends a core to its background compiles


def launch(warm: str, spec: dict[str, Any]) -> str:
    """Starts the background compile of ``warm`` (the FFN and the process it compiles for: ``spec``, autotune's
    ``_ffn_spec``): ``pending``, or ``failed: <why>`` where no process is to be had (a process limit, a sandbox),
    which this process alone keeps."""
    try:
        workers[warm] = start(warm, spec)
    except OSError as err:
        return f"failed: could not start the background compile ({type(err).__name__}: {err})"
    lend()
    return "pending"


def threads() -> int:
    """The process's own thread count (what its compiled C++ loops are made for and its warm keys name): PyTorch's,
    or what it was before a core was lent to a background compile."""
    return _lent[0] if _lent else torch.get_num_threads()


def lent() -> bool:
    """Whether this process runs on a thread fewer than its own now, a core lent to a background compile."""
    return bool(_lent)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def lend() -> None:
    """One thread fewer for this process while its background compiles run, where its threads (with the machine's
    other local ranks', ``LOCAL_WORLD_SIZE``) fill the cores it may run on and it has more than one."""
    n = torch.get_num_threads()
    ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")  # a launcher's (torchrun, accelerate); anything else: one rank
    if not _lent and n > 1 and n * (int(ranks) if ranks.isdigit() else 1) >= _cpus():
        _lent.append(n)
        torch.set_num_threads(n - 1)


@contextlib.contextmanager
def own_threads() -> Iterator[None]:
    """The block on the process's own thread count while a core is lent: graphs loaded or compiled here are made
    for it, and the compiler's cache keys them on it (loaded on one thread fewer, they would be compiled afresh)."""
    if not _lent:
        yield
        return
    torch.set_num_threads(_lent[0])
    try:
        yield
    finally:
        if _lent:
            torch.set_num_threads(_lent[0] - 1)


def running() -> bool:
    """Whether any of this process's background compiles still runs (a poll of each)."""
    return any(proc.poll() is None for proc in workers.values())


def reclaim() -> None:
    """The lent core back once none of this process's background compiles runs (asked by every call under
    ``auto`` while one is lent: a poll of each worker)."""
    if _lent and not running():
        own = _lent.pop()
        if torch.get_num_threads() == own - 1:  # else the user has set a count since: theirs stands
            torch.set_num_threads(own)


@atexit.register
def stop_all() -> None:
    """A process that ends leaves no compile running behind it (what was compiled stays in the compiler's cache)."""
    for proc in workers.values():
        if proc.poll() is None:
            proc.terminate()


def start(warm: str, ffn_spec: dict[str, Any]) -> subprocess.Popen:
    """The process that compiles ``warm``'s helpers (``run``), its messages kept in ``proc.log``."""
    spec = {"warm": warm, "ffn": ffn_spec}
    # the compiler on one thread, so the training it runs beside keeps the other cores (at normal priority: on a busy
    # small machine a low-priority compile never finished); its few warm-up calls on this process's thread count,
    # for which the compiler makes its C++ loops and which its cache keys on: compiled on one thread, the graphs missed
    # a 2-thread process's cache, whose switching call then compiled them again (RBF FFN, d 128, 2-core CPU: 29.7 s
    # against 5.7 s loading them); the matmul library this process runs (layers/gemm.py), so the worker compiles the
    # graphs it will load
    env = {**os.environ, "KANFORMER_AUTOTUNE": "0", "OMP_NUM_THREADS": str(spec["ffn"]["threads"]),
           "TORCHINDUCTOR_COMPILE_THREADS": "1",
           "KANFORMER_GEMM": gemm.chosen().get("library", gemm.setting()),  # CUDA runs choose none
           "KANFORMER_COMPILE_OPTIONS": options_tag(get_compile_options())}  # as set here, by API or environment
    # this very copy of the code, which may not be the ``kanformer`` the interpreter would import: a checkpoint's copy
    # (``from_pretrained`` with ``trust_remote_code``: a package under the modules cache of transformers, maybe with no
    # kanformer installed) or a checkout put on ``sys.path`` at run time; its directory goes last on the path, so the
    # user's own ``PYTHONPATH`` keeps its precedence
    package = __package__ or "kanformer.layers"
    root = str(Path(__file__).resolve().parents[len(package.split("."))])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), root) if p)
    log = tempfile.TemporaryFile()  # its messages, read when it ends (a pipe could fill and stall it)
    # the module as the package imports it (``-m`` would run a second copy of it as ``__main__``, with a warning); the
    # working directory, which ``-c`` puts first on the path, taken off it: a process started from a checkout of
    # another version imported that one (its graphs missed this process's: 2 compiled again in the switching call)
    code = ("import sys; sys.path[:1] = [] if sys.path[:1] == [''] else sys.path[:1]; "
            f"import json; from {package} import background_compile; "
            "background_compile.run(json.loads(sys.argv[1]))")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], stdout=subprocess.DEVNULL, stderr=log,
                            env=env)
    proc.log = log
    return proc


# The compiler's C++ backend sums an fp32 reduction of more than 4,096 elements in chunks (its cascade sum), so a graph
# compiled for at most 4,096 tokens is guarded to that range and compiled afresh above it: a fused backward's sums over
# the tokens (the bias's gradient, the wavelet's parameters') compiled at 256 tokens recompiled at 5,000 (B-spline FFN,
# d 128), in the call that loads the background compile's graphs; compiled at 4,097 it served 4,098 - 16,384 as one.
SUM_CHUNK = 4096


def warm_tokens(tokens: int) -> int:
    """The token count the background compile runs at for a process at ``tokens``: small (a quick compile), but in the
    range of ``tokens`` on either side of the C++ backend's chunked sums (``SUM_CHUNK``)."""
    return min(tokens, 256) if tokens <= SUM_CHUNK else SUM_CHUNK + 1


def take_forms(ffn: Any, forms: list[str]) -> None:
    """Give the KAN layers of ``ffn``, a fresh FFN of the configuration compiled for, the fused forms ``forms`` (per
    layer, in module order: ``autotune_cache.layer_forms``): the process it compiles for may hold grids fitted to
    data, whose graphs (the knot tables') differ from a fresh FFN's uniform grids."""
    bases = [m.basis for m in ffn.modules() if hasattr(getattr(m, "basis", None), "fused_form")]
    if forms and len(forms) != len(bases):
        raise ValueError(f"{len(forms)} fused forms for the {len(bases)} KAN layers of {type(ffn).__name__}")
    for basis, form in zip(bases, forms, strict=False):
        basis.take_form(form)


def run(spec: dict[str, Any]) -> None:
    """Compile the fused helpers of the FFN in ``spec`` into the compiler's on-disk cache (fwd + bwd, twice); with
    ``few`` in its FFN's spec, its graphs of few tokens without autograd instead (autotune.compiled_ready)."""
    from .autotune import compiled_forward
    from .dispatch import kernel
    from .few_tokens import few_tokens, tiny_tokens
    from .registry import create_ffn

    f = spec["ffn"]
    torch.set_num_threads(f["threads"])  # the compiled loops are made for it (and its cache entries keyed on it)
    torch.manual_seed(0)
    device = torch.device(f["device"])
    ffn = create_ffn(f["name"], f["d_model"], f["hidden"], **f["kwargs"]).to(device)
    take_forms(ffn, f.get("forms", []))
    dtype = getattr(torch, f["dtype"])
    autocast = dtype in (torch.float16, torch.bfloat16)
    if f.get("few"):
        # the graphs of few tokens without autograd (layers/few_tokens.py: generation's steps), at two sizes too: the
        # one whose products are sums in its loops (the fewest tokens), and the one whose products are the matmul
        # library's; one token, which a compiled graph specialises
        past = tiny_tokens(ffn, dtype) + 1  # the fewest tokens past the tiny ones
        for tokens in sorted({1, 2, 3, past, past + 1}):
            if hasattr(ffn, "fc1") and few_tokens(ffn, tokens):
                with kernel("fused"), torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
                    ffn(torch.randn(tokens, f["d_model"], device=device))
        return
    compiled = compiled_forward(ffn)  # the "compiled" candidate: the reference, compiled
    for tokens in (f["tokens"], f["tokens"] + 1):  # two sizes: the dynamic-shape graphs the main process will load
        x = torch.randn(tokens, f["d_model"], device=device, requires_grad=True)
        with kernel("fused"), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            ffn(x).float().square().sum().backward()
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            compiled(x).float().square().sum().backward()
