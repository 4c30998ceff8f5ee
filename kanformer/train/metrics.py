"""``metrics.jsonl``: one strict JSON record per line (non-finite numbers written as null), read back line by line
tolerating the torn last line that a crash mid-write leaves, and cut in place where a resumed run takes over."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON (what every parser reads): non-finite numbers become null."""
    return json.dumps(_strict(value), allow_nan=False, **kwargs)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(dumps(record) + "\n")


def _records(path: Path, warn: Callable[[str], None] | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(end offset, record) of each line of ``path``, read line by line. A last line that does not parse (a write
    cut short) is dropped with a warning; a bad line before it is an error naming the file and the line."""
    with open(path, "rb") as f:
        offset, number, line = 0, 0, f.readline()
        while line:
            following = f.readline()
            number += 1
            offset += len(line)
            if line.strip():
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    if not following:
                        if warn is not None:
                            warn(f"{path}: dropped its last line, cut short by an interrupted write ({line[:60]!r})")
                        return
                    raise ValueError(f"{path}, line {number}: not a metrics record ({e}): {line[:80]!r}") from None
                yield offset, record
            line = following


def read_metrics(path: Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every record of ``path`` ([] if there is none), a torn last line dropped (see ``_records``)."""
    path = Path(path)
    return [r for _, r in _records(path, warn)] if path.exists() else []


def truncate_after(path: Path, step: int, warn: Callable[[str], None] | None = None) -> None:
    """Cut ``path`` after the last record of step <= ``step`` (what a resumed run replays comes after it), in place:
    one writer appends records in step order, so the file is read line by line and never rewritten."""
    path = Path(path)
    if not path.exists():
        return
    keep = 0
    for offset, record in _records(path, warn):
        if record.get("step", 0) > step:
            break
        keep = offset
    os.truncate(path, keep)
    if keep:
        with open(path, "rb+") as f:  # a complete last record whose newline was never written gets it now
            f.seek(keep - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
