"""The machine a timing belongs to, and the kit's cache files that keep timings per machine.

``auto``'s path choices (autotune.py) and the matmul library's timing (gemm.py) are measured once per machine and
kept in JSON files under ``KANFORMER_CACHE`` (default ``~/.cache/kanformer``), keyed by what the measurement depends
on: autotune's by ``fingerprint`` (the CPU, its vector instructions in force, the versions, the layer code), gemm's by
the CPU, its vector instructions and PyTorch alone. ``locked_cache`` reads and writes such a file whole under a lock,
so that processes starting together (a machine's ranks) time once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector instructions PyTorch's CPU kernels and the compiler's C++ loops use here (``AVX512``, ``AVX2``, ...):
    the CPU's widest unless ``ATEN_CPU_CAPABILITY`` narrows it, so one machine times differently under each."""
    return torch.backends.cpu.get_cpu_capability()


def fingerprint() -> dict[str, Any]:
    """What a timing depends on besides what is timed: the machine and the versions."""
    try:
        from importlib.metadata import version
        kanformer_version = version("kanformer")
    except Exception:  # a checkpoint's copy of these files, without the package
        kanformer_version = "portable"
    here = Path(__file__).resolve().parent  # the layer code itself: an edit (or another copy) is timed afresh
    code = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()[:12]
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "machine": platform.machine(), "cpu_isa": cpu_isa(),
            "torch": torch.__version__, "kanformer": kanformer_version, "layers_code": code,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fingerprint_id() -> str:
    return hashlib.sha256(json.dumps(fingerprint(), sort_keys=True).encode()).hexdigest()[:16]


def cache_path(name: str) -> Path:
    """The kit's cache file ``name``: under ``KANFORMER_CACHE``, else ``~/.cache/kanformer``."""
    root = os.environ.get("KANFORMER_CACHE") or Path.home() / ".cache" / "kanformer"
    return Path(root) / name


_memory_only: dict[str, dict[str, Any]] = {}  # a cache file this process could not write -> its contents, kept here


@contextlib.contextmanager
def locked_cache(name: str) -> Any:
    """The whole cache file ``name``, read under an exclusive lock; what the block leaves in the dict is written
    back. Where the file cannot be written (a read-only or full disk, no home directory for the default), this
    process keeps it in memory from then on, with one warning: a later process times again, but no step fails."""
    path: Path | None = None
    try:
        path = cache_path(name)
    except RuntimeError as err:  # Path.home() found no home directory for the default
        failure: Exception = err
    where = f"~/.cache/kanformer/{name}" if path is None else str(path)
    if where in _memory_only:
        yield _memory_only[where]
        return
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(path.with_suffix(".lock"), "w")
        except OSError as err:
            path, failure = None, err
    if path is None:
        yield _in_memory(where, {}, failure)
        return
    with lock:
        with contextlib.suppress(ImportError):  # POSIX; elsewhere writers may race (a lost entry is timed again)
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            data = {}  # a damaged cache only costs a re-timing
        yield data
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            _in_memory(where, data, err)


def _in_memory(where: str, data: dict[str, Any], err: Exception) -> dict[str, Any]:
    """``data``, now this process's copy of the cache file at ``where``, which it could not write (``err``)."""
    _memory_only[where] = data
    warnings.warn(f"kanformer: cannot write the cache {where} ({type(err).__name__}: {err}); this process keeps "
                  "its timed choices in memory and a later one times them again. Set KANFORMER_CACHE to a writable "
                  "directory to keep them.", RuntimeWarning, stacklevel=2)
    return data
