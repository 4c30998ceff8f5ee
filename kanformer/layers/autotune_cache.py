"""What ``auto``'s choices are kept under (layers/autotune.py): the keys of an FFN's call, the memory rule that is part
of every key, and this machine's section of the cache file.

The choice key names the FFN's configuration (its repr, and the fused forms of its layers where a grid was fitted to
data), the compute dtype, the device, on a CPU the process's thread count, the compiled loops' moves and the fp32
products' routing, the compiler options of the fused helpers, the token-count bucket and the memory rule. The warm key
is the same without the token count and the memory rule: what the compiled helpers are made for, which a background
compile makes once for every token count. The cache file (``autotune.json`` in ``KANFORMER_CACHE``) holds a section
per machine fingerprint (layers/machine.py), read once by a process and re-read where another process may have
written it since.
"""

from __future__ import annotations

import os
import re
import time
import weakref
from typing import Any

import torch

from . import background_compile, gemm, loop_moves
from .compile_options import get_compile_options, options_tag
from .machine import fingerprint, fingerprint_id, locked_cache

MEMORY_RULES = ("lean", "fast")
_memory = [os.environ.get("KANFORMER_KERNEL_MEMORY", "lean")]
_disk: dict[str, Any] = {}  # this machine's section of the cache file (machine.py)
_CACHE_FILE = "autotune.json"


def set_kernel_memory(rule: str) -> None:
    """``lean``: only paths that save no more activations than the MLP; ``fast``: the fastest path."""
    if rule not in MEMORY_RULES:
        raise ValueError(f"Unknown kernel memory rule {rule!r}. Allowed: {', '.join(MEMORY_RULES)}")
    _memory[0] = rule


def kernel_memory() -> str:
    """The memory rule in effect: ``set_kernel_memory``'s, else ``KANFORMER_KERNEL_MEMORY``, else ``lean``."""
    if _memory[0] not in MEMORY_RULES:  # a bad environment value: set_kernel_memory checks its own
        raise ValueError(f"Unknown kernel memory rule {_memory[0]!r} (KANFORMER_KERNEL_MEMORY). "
                         f"Allowed: {', '.join(MEMORY_RULES)}")
    return _memory[0]


# -- keys ------------------------------------------------------------------------------------------------------------
def compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


_forms_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # FFN -> (bases, their versions, forms, signature)


def _entry(ffn: Any) -> tuple[Any, ...]:
    """``ffn``'s KAN layers' bases, their ``form_version``s, their forms and the FFN's signature, taken again where a
    version moved (a B-spline's ``refresh_checks``, which every grid change calls); asked every call (reading the
    forms on every call cost ~3 us)."""
    entry = _forms_of.get(ffn)
    bases = (tuple(m.basis for m in ffn.modules() if hasattr(getattr(m, "basis", None), "fused_form"))
             if entry is None else entry[0])
    versions = tuple(b.form_version for b in bases)
    if entry is None or entry[1] != versions:
        forms = tuple((b.n_basis, b.fused_form()) for b in bases)
        entry = _forms_of[ffn] = (bases, versions, forms,
                                  re.sub(r"\bFSDP(?=[A-Z])", "", " ".join(repr(ffn).split())))
    return entry


def layer_forms(ffn: Any) -> tuple[tuple[int, str], ...]:
    """Per KAN layer of ``ffn`` (module order): its basis' function count and fused form (``Basis.fused_form``), what
    a grid update or extension changes in place."""
    return _entry(ffn)[2]


def ffn_signature(ffn: Any) -> str:
    """The FFN's configuration (its repr: kind, widths, options, every layer's shape; FSDP2's renaming of the classes
    it wraps, ``FSDP<Name>``, left out: the same FFN sharded is the same configuration), taken again where a grid
    changed (an extension: a repr taken once named the old shapes, and ``auto`` kept the old shapes' choice and
    compiled the new ones' graphs in a training step)."""
    return _entry(ffn)[3]


def _form_tag(forms: tuple[tuple[int, str], ...]) -> str:
    """The layers' fused forms (``layer_forms``) where one is not its basis' first (a B-spline's adapted grid: "knots"),
    for the keys: an FFN whose grids were fitted to data has graphs, a background compile and timings of its own."""
    return f" | forms={','.join(f or '-' for _, f in forms)}" if any(f for _, f in forms) else ""


def _bucket(tokens: int) -> int:
    return 1 << max(0, (tokens - 1).bit_length())


def keys(ffn: Any, x: torch.Tensor, forms: tuple[tuple[int, str], ...] | None = None,
          signature: str | None = None) -> tuple[str, str]:
    """(choice key, warm key): the warm key leaves out the token count, which the compiled helpers take as dynamic.
    ``forms`` and ``signature``: the keys of ``ffn`` once its layers take these fused forms (``layer_forms``'s) and it
    this configuration (``ffn_signature``'s: a grid extended)."""
    tokens = x.numel() // x.shape[-1]
    dtype = compute_dtype(x)
    _, _, now, own = _entry(ffn)
    warm = (f"{signature or own}{_form_tag(now if forms is None else forms)} | "
            f"{str(dtype).removeprefix('torch.')} | {x.device.type}")
    if x.device.type == "cpu":  # the compiled C++ loops are made for the process's thread count (background_compile)
        warm += f" | threads={background_compile.threads()}"
        if not loop_moves.active():  # and their moves as generated (layers/loop_moves.py)
            warm += " | loop_moves=off"
    if dtype == torch.float32 and x.device.type == "cpu":  # its graphs call the process's matmul library, so routed
        warm += f" | gemm={gemm.routing()}"
    options = get_compile_options()
    if options:  # the fused helpers compiled with these (layers/compile_options.py): graphs and timings of their own
        warm += f" | compile={options_tag(options)}"
    return f"{warm} | tokens<={_bucket(tokens)} | memory={kernel_memory()}", warm


# -- this machine's section of the cache file ----------------------------------------------------------------------
def bases(ffn: Any) -> tuple[Any, ...]:
    """The bases of ``ffn``'s KAN layers, in module order."""
    return _entry(ffn)[0]


def _section(data: dict[str, Any]) -> dict[str, Any]:
    return data.setdefault(fingerprint_id(), {"fingerprint": fingerprint(), "choices": {}, "compiled": {}})


def load() -> dict[str, Any]:
    if not _disk:
        with locked_cache(_CACHE_FILE) as data:
            _disk.update(_section(data))
    return _disk


_last_read = [0.0]


def refresh(every_s: float = 5.0) -> None:
    """Re-read the disk cache (at most every ``every_s``): another process may have finished a compile."""
    if time.monotonic() - _last_read[0] >= every_s:
        _last_read[0] = time.monotonic()
        _disk.clear()


def store(kind: str, key: str, value: Any) -> None:
    with locked_cache(_CACHE_FILE) as data:
        _section(data)[kind][key] = value
        _disk.clear()
        _disk.update(_section(data))


def clear() -> None:
    """Forget what this process read of the cache file: the next ``load`` reads it again."""
    _disk.clear()
