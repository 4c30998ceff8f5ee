"""One writer per run directory: an exclusive lock held for as long as a run trains.

The lock is an ``flock`` on ``<run_dir>/.lock``, so the kernel releases it when its process dies, however it dies.
The file names its holder (host, pid, start time): a second launch on the same directory fails naming the live
holder, and a lock file left by a process that died is reported as stale and taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    pass


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None
        self.stale: str | None = None  # what a dead previous holder left, when there was one

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self.held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by another run ({_describe(holder)}): two processes "
                            f"writing one run directory would interleave its metrics and checkpoints. Wait for it "
                            f"to finish or stop it, or choose another name / out_dir") from None
        previous = _read(fd)
        if previous:  # a clean release empties the file: whoever wrote this died holding the lock
            self.stale = f"stale lock of a process that ended without releasing it ({_describe(previous)})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode(),
                  0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {"unreadable": True}


def _describe(holder: dict) -> str:
    if not holder or holder.get("unreadable"):
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {since}"
