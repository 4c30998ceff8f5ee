"""Atomic, verified checkpoints.

Each checkpoint is written to a hidden temporary directory and renamed into place only when complete: the trainer
state file, written last, lists the SHA-256 of every other file, and files and directories are fsynced before the
rename, so neither a kill nor a power cut leaves a checkpoint that looks good but is not. On resume a checkpoint is
used only if its files match their digests; ``--resume auto`` falls back to the newest one that does, naming each it
passed over. The last ``keep_last`` complete checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.sources import sha256_file

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d{8})$")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root`` (their state file written), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def latest_verified(root: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint whose files match their digests; ``warn`` names each newer one passed over and why."""
    for path in reversed(checkpoint_dirs(root)):
        problem = verify(path)
        if problem is None:
            return path
        warn(f"passing over checkpoint {path}: {problem}")
    return None


def temp_dir(root: Path, step: int) -> Path:
    return root / f".tmp_step_{step:08d}"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STATE_FILE)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finalize(root: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Record the digests of the temporary directory's files in the trainer state, write it, make it all durable,
    rename the directory into place and prune old checkpoints."""
    tmp, final = temp_dir(root, step), root / f"step_{step:08d}"
    files = _files(tmp)
    state = {**state, "files": {p.relative_to(tmp).as_posix(): sha256_file(p) for p in files}}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    for p in [*files, tmp / STATE_FILE, *sorted({p.parent for p in files} | {tmp})]:
        _fsync(p)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in checkpoint_dirs(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: Path) -> dict[str, Any]:
    file = path / STATE_FILE
    try:
        state = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{file} holds no trainer state (no integer 'step')")
    return state


def verify(path: Path) -> str | None:
    """What is wrong with checkpoint ``path`` (unreadable state, a missing, extra-short or altered file), or None.
    Checkpoints written before digests were recorded are accepted as they are."""
    try:
        state = read_state(path)
    except ValueError as e:
        return str(e)
    for name, digest in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if sha256_file(file) != digest:
            return f"{name} does not match the SHA-256 recorded when it was saved (truncated or altered)"
    return None
