"""Atomic checkpoints: each is written to a hidden temporary directory and renamed into place only when complete
(the trainer state file is the last thing written), so a run killed mid-save never leaves a checkpoint that looks
good but is not; the last ``keep_last`` complete checkpoints are kept."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d{8})$")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def temp_dir(root: Path, step: int) -> Path:
    return root / f".tmp_step_{step:08d}"


def finalize(root: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write the trainer state into the temporary directory, rename it into place, prune old checkpoints."""
    tmp, final = temp_dir(root, step), root / f"step_{step:08d}"
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())
