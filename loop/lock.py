"""One daemon per repository: an flock the kernel releases when the process dies, even by kill -9."""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from loop.errors import AlreadyRunning


class RepoLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, tag: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.path)
            who = f" (pid {holder['pid']}, tag {holder['tag']})" if holder else ""
            raise AlreadyRunning(f"another autoresearch daemon runs in this repository{who}: `autoresearch stop` it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "tag": tag}).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_holder(path: Path) -> dict | None:
    """The live holder of the lock, or None when no daemon holds it."""
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(path.read_text() or "{}") or None
            except json.JSONDecodeError:
                return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # we could lock it: nobody holds it
    finally:
        os.close(fd)
