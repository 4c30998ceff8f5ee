"""``metrics.jsonl``: one strict JSON record per line (non-finite numbers written as null), read back tolerating the
torn last line that a crash mid-write leaves."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
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


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``records`` atomically (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def read_metrics(path: Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every record of ``path`` ([] if there is none). A last line that does not parse (a write cut short) is dropped
    with a warning; a bad line before it is an error naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == len(lines) - 1:
                if warn is not None:
                    warn(f"{path}: dropped its last line, cut short by an interrupted write ({line[:60]!r})")
                break
            raise ValueError(f"{path}, line {i + 1}: not a metrics record ({e}): {line[:80]!r}") from None
        records.append(record)
    return records
