"""`autoresearch stop [--now]`: ask the running daemon to finish (or to stop at once)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from loop import gitops, target
from loop.commands.common import lock_path
from loop.errors import NotRunning
from loop.lock import read_holder

STOP_NOW_WAIT_S = 60.0


def stop(repo: Path, now: bool, target_file: str | None = None) -> int:
    root = gitops.Git(repo).root
    # The target named, else the one declared at the root (a plain `stop` in a project with an
    # autoresearch.toml), else the builtin experiment's daemon.
    locks = [target.lock_file(root, target.of_config(root, target_file))]
    if not target_file:
        locks.append(lock_path(root))
    lock = next((path for path in locks if read_holder(path)), locks[0])
    holder = read_holder(lock)
    if not holder:
        raise NotRunning("no autoresearch daemon is running in this repository")
    os.kill(int(holder["pid"]), signal.SIGUSR1 if now else signal.SIGTERM)
    if not now:
        print(f"stop requested: the daemon (pid {holder['pid']}) finishes and records the experiments in flight, "
              "then exits")
        return 0
    deadline = time.monotonic() + STOP_NOW_WAIT_S
    while read_holder(lock) and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"stopped now: the experiments in flight were interrupted (pid {holder['pid']}); "
          f"`autoresearch resume --tag {holder['tag']}` continues")
    return 0
