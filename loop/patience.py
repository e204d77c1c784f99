"""Waiting out a host that cannot start a process or a thread for a moment.

A run that forks or spawns threads without end fills the host's process table before its watch
(procs.Watch) sees it and ends it, a second or two later. In that moment nothing on the host can
fork: not git, not the next run, not a thread of the daemon's. The daemon's own starts wait the
moment out here instead of ending the night; only a host that stays full past PATIENCE_SECONDS is
an error.
"""
from __future__ import annotations

import errno
import threading
import time
from typing import Callable, TypeVar

PATIENCE_SECONDS = 60.0
FIRST_WAIT_SECONDS = 0.05
LONGEST_WAIT_SECONDS = 2.0
T = TypeVar("T")


def host_refused_start(error: BaseException) -> bool:
    """Whether `error` is the host refusing a new process or thread for now (fork's EAGAIN, or its
    ENOMEM while a run holds the memory; Python's "can't start new thread"), not something the
    call itself got wrong."""
    if isinstance(error, OSError):
        return error.errno in (errno.EAGAIN, errno.ENOMEM)
    return isinstance(error, RuntimeError) and "can't start new thread" in str(error)


def patiently(call: Callable[[], T], patience: float = PATIENCE_SECONDS) -> T:
    """call(), again after a growing wait each time the host could not start a process or thread
    for it, for up to `patience` seconds; any other error at once."""
    deadline = time.monotonic() + patience
    wait = FIRST_WAIT_SECONDS
    while True:
        try:
            return call()
        except (OSError, RuntimeError) as e:
            if not host_refused_start(e) or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)
        wait = min(wait * 2, LONGEST_WAIT_SECONDS)


def start_thread(thread: threading.Thread) -> None:
    """thread.start(), waiting out a full process table (a thread takes a slot in it too)."""
    patiently(thread.start)
