"""The compiler's options for the fused path's helpers (``torch.compile(..., options=...)``), process-wide.

On CUDA the eager fused FFN step waits on its host: the compiled graphs' Python wrappers launch each kernel, and on an
H200 the B-spline FFN's step took 3.0 ms of wall time against 1.2 ms of kernels (docs/speed.md, *GPU*). Options such
as ``cpp_wrapper`` (the kernels launched from C++) or ``triton.cudagraphs`` (a graph's kernels replayed as one CUDA
graph) may shorten that; ``python -m benchmarks.bench_ffn --compile-options '{"cpp_wrapper": true}'`` times the kit's
path under them against the default in one process, and the GPU check does so on a GPU (``bench_model --gpu``, stage
``ffn_options``). Set them with ``KANFORMER_COMPILE_OPTIONS`` (a JSON object; inherited by ``auto``'s background
compiles) or :func:`set_compile_options`. Each set of options compiles copies of the helpers of its own, and
``autotune`` keys its timings and background compiles on them. A compiled model's graph (``train.compile``) is
compiled with the model's own options, not these.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import torch

_OPTIONS: list[dict[str, Any] | None] = [None]  # None: not read from the environment yet
EXAMPLE = '{"cpp_wrapper": true}'


def _check(options: Any, source: str) -> dict[str, Any]:
    """``options`` as the compiler takes them: a dict of its option names (``torch._inductor.list_options()``) to
    JSON values; else a ValueError naming ``source`` and the problem."""
    if not isinstance(options, dict):
        raise ValueError(f"{source}: compile options are a JSON object of the compiler's options, e.g. {EXAMPLE}; "
                         f"got {options!r}")
    known = set(torch._inductor.list_options())
    unknown = sorted(str(k) for k in options if k not in known)
    if unknown:
        raise ValueError(f"{source}: unknown compiler option(s) {', '.join(map(repr, unknown))} (allowed: the names "
                         "torch._inductor.list_options() gives, e.g. cpp_wrapper, triton.cudagraphs, max_autotune)")
    try:
        json.dumps(options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: compile options take JSON values ({err})") from None
    return dict(options)


def parse(text: str, source: str) -> dict[str, Any]:
    """Compile options from a JSON object's text (empty: none)."""
    text = text.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not JSON ({err}): {text!r}; e.g. {EXAMPLE}") from None
    return _check(value, source)


def get_compile_options() -> dict[str, Any]:
    """This process's options (empty: torch.compile's defaults): :func:`set_compile_options`'s, else
    ``KANFORMER_COMPILE_OPTIONS``'s."""
    if _OPTIONS[0] is None:
        _OPTIONS[0] = parse(os.environ.get("KANFORMER_COMPILE_OPTIONS", ""), "KANFORMER_COMPILE_OPTIONS")
    return _OPTIONS[0]


def set_compile_options(options: dict[str, Any] | None) -> None:
    """The options from now on (None or {}: the defaults). They take effect at a helper's next call: a backward runs
    on the options in force when it runs."""
    _OPTIONS[0] = _check({} if options is None else options, "set_compile_options")


@contextlib.contextmanager
def compile_options(options: dict[str, Any] | None) -> Iterator[None]:
    """:func:`set_compile_options` for a block (a forward and its backward inside it), the previous options after."""
    previous = get_compile_options()
    set_compile_options(options)
    try:
        yield
    finally:
        _OPTIONS[0] = previous


def options_tag(options: dict[str, Any]) -> str:
    """``options`` as one canonical string (keys sorted; empty for none): in the compiled copies' names and in
    ``autotune``'s keys."""
    return json.dumps(options, sort_keys=True, separators=(",", ":")) if options else ""
