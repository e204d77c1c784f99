"""Run one untrusted command to completion: own process session, capped log, hard timeout, and
the whole process tree gone afterwards.

`run_contained` is the only way the daemon starts train.py or the evaluator. It never raises for
anything the child does; it reports what happened in a ProcResult.

While it runs, a Watch ends it, as at a timeout, once it takes the host's free disk below a floor or
runs more processes and threads at once than a cap: either would leave the daemon itself unable to
write its state or to start git.

A run's processes are found three ways, since each alone can be dodged: the descendants seen while
it ran, the processes carrying its token in their environment, and (the daemon being a child
subreaper) orphans that were reparented to the daemon instead of to init.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence

import psutil

DEFAULT_LOG_CAP = 8 * 1024 * 1024  # bytes of output kept from the start
TAIL_KEEP = 256 * 1024  # bytes kept from the end once the cap is reached
INODE_FLOOR = 20_000  # free inodes below which a watched run is ended, as below its disk floor
# Processes and threads a watched run may have at once. Honest training, torch.compile's workers and
# data loaders included, stays in the hundreds; the cap leaves most of the host's process table
# (pid_max) to everything else, so a fork bomb is ended before the host cannot start a process.
MAX_TASKS = 8192
TASKS_ENV = "AUTORESEARCH_MAX_TASKS"  # overrides MAX_TASKS
KILL_GRACE_SECONDS = 5.0
EXIT_SETTLE_SECONDS = 2.0  # a run's process still alive this long after the run ended was left running
EXIT_POLL_SECONDS = 0.05
TOKEN_ENV = "AUTORESEARCH_RUN_TOKEN"
PR_SET_CHILD_SUBREAPER = 36
_STARTED: set[int] = set()  # pids of Contained processes whose exit status their owner has yet to read
# Held while a Contained starts (until its pid is in _STARTED) and while orphans are reaped: a
# process that ended at once is never taken for an orphan by another run's clean-up.
_STARTED_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProcResult:
    returncode: int | None  # None when killed by us
    timed_out: bool
    cancelled: bool
    wall_seconds: float
    log_path: Path
    dropped_bytes: int  # output beyond the cap
    leftovers_killed: int  # processes of the tree still alive after the main one ended
    disk_full: bool = False  # ended because free disk fell below its floor (see Watch)
    tasks_over: int = 0  # ended for running this many processes and threads at once, over its cap


@dataclass(frozen=True)
class Watch:
    """What a run may take of the host besides time: the free disk under `folder` must stay above
    `disk_floor` bytes (and INODE_FLOOR files), and its processes and threads at `max_tasks`."""

    folder: Path
    disk_floor: int
    max_tasks: int


def task_cap(wanted: int = MAX_TASKS) -> int:
    """`wanted` (TASKS_ENV where set), or a quarter of the host's process table where smaller."""
    if TASKS_ENV in os.environ:
        wanted = int(os.environ[TASKS_ENV])
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return wanted
    return max(64, min(wanted, pid_max // 4))


class Cancel:
    """A handle another thread (a signal handler) can use to kill the running command."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def run_contained(argv: Sequence[str], *, timeout: float, cancel: Cancel | None = None, **start: object) -> ProcResult:
    """Run argv in a new session to completion, its output (stdout and stderr together) to log_path."""
    return Contained(argv, **start).wait(timeout, cancel)  # type: ignore[arg-type]


class Contained:
    """One untrusted process tree, started at once: its own session and token, output pumped into
    a capped log; `wait` bounds it in time and kills the whole tree at the end.

    stdin_data is written to its stdin (then closed); with stdin_fd/stdout_fd it talks over pipes
    the caller made instead (its stderr then goes to the log); pass_fds are inherited as they are.
    watch_disk (folder, bytes): the tree is ended, as at a timeout, once the free disk under the
    folder falls below that many bytes (a run that fills the disk would take the daemon with it).
    """

    def __init__(self, argv: Sequence[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                 log_cap: int = DEFAULT_LOG_CAP, on_line: Callable[[str], None] | None = None,
                 preexec: Callable[[], None] | None = None, stdin_data: bytes | None = None,
                 stdin_fd: int | None = None, stdout_fd: int | None = None, pass_fds: Sequence[int] = (),
                 watch: Watch | None = None) -> None:
        become_subreaper()
        token = secrets.token_hex(8)
        self.start = time.monotonic()
        own_stdout = stdout_fd is None
        # Nothing to read: a pipe already at its end, not /dev/null (an open handle on a host device
        # node, whose mode a root daemon's run could change through it).
        empty = _empty_pipe() if stdin_data is None and stdin_fd is None else None
        stdin = subprocess.PIPE if stdin_data is not None else empty if stdin_fd is None else stdin_fd
        with _STARTED_LOCK:
            try:
                self.proc = subprocess.Popen(
                    list(argv),
                    cwd=cwd,
                    env={**env, TOKEN_ENV: token},
                    stdin=stdin,
                    stdout=subprocess.PIPE if own_stdout else stdout_fd,
                    stderr=subprocess.STDOUT if own_stdout else subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=preexec,
                    pass_fds=tuple(pass_fds),
                )
            finally:
                if empty is not None:
                    os.close(empty)
            _STARTED.add(self.proc.pid)
        if stdin_data is not None:
            threading.Thread(target=_feed, args=(self.proc.stdin, stdin_data), daemon=True).start()
        # Remember the tree as it grows: a double-forked grandchild leaves the session's process
        # group only by calling setsid, and by then it is usually in our snapshot already.
        self.tree = _Tree(self.proc.pid, token)
        stream = self.proc.stdout if own_stdout else self.proc.stderr
        assert stream is not None  # piped above
        self.pump = _LogPump(stream, log_path, log_cap, on_line)
        try:
            self.pump.start()
        except RuntimeError:  # no thread to be had (a full process table): never leave it running unwatched
            kill_tree(self.proc.pid, self.tree)
            self.proc.wait()
            _STARTED.discard(self.proc.pid)
            raise
        self.log_path = log_path
        self.watch = watch
        self.tasks_over = 0

    def breach(self) -> str:
        """'tasks' or 'disk' once the tree has gone past its watch's limits (looked at now), else ''."""
        tasks = self.tree.snapshot()
        if self.watch is None:
            return ""
        if tasks > self.watch.max_tasks:
            self.tasks_over = max(self.tasks_over, tasks)
            return "tasks"
        return "disk" if disk_below(self.watch.folder, self.watch.disk_floor) else ""

    def wait(self, timeout: float, cancel: Cancel | None = None) -> ProcResult:
        proc = self.proc
        timed_out = cancelled = False
        breach = ""
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if breach := self.breach():
                    break
                if time.monotonic() - self.start > timeout:
                    timed_out = True
                    break
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
        # A run can fill the disk in a burst and exit before the next look: look once more.
        if not breach and self.watch is not None and disk_below(self.watch.folder, self.watch.disk_floor):
            breach = "disk"
        if timed_out or cancelled or breach:
            kill_tree(proc.pid, self.tree)
            proc.wait()
        leftovers = kill_tree(proc.pid, self.tree, settle=EXIT_SETTLE_SECONDS)
        # Until the last of its processes was gone: one that finishes within the settle time still
        # ran, and its time counts against the budget.
        wall = time.monotonic() - self.start
        _STARTED.discard(proc.pid)
        self.pump.join(timeout=10)
        return ProcResult(
            returncode=None if (timed_out or cancelled or breach) else proc.returncode,
            timed_out=timed_out,
            cancelled=cancelled,
            wall_seconds=wall,
            log_path=self.log_path,
            dropped_bytes=self.pump.dropped,
            leftovers_killed=leftovers,
            disk_full=breach == "disk",
            tasks_over=self.tasks_over if breach == "tasks" else 0,
        )

    def kill(self) -> ProcResult:
        """End it now, whatever it is doing (a model process once its scorer is done)."""
        kill_tree(self.proc.pid, self.tree)
        return self.wait(timeout=KILL_GRACE_SECONDS)


def _empty_pipe() -> int:
    """The read end of a pipe whose writer is gone: reads say end of file at once."""
    read, write = os.pipe()
    os.close(write)
    return read


def disk_below(folder: Path, floor: int) -> bool:
    """Whether the free disk under `folder` is below `floor` bytes, or its file system is nearly out
    of inodes (INODE_FLOOR), where it counts them; not knowing is not below."""
    try:
        fs = os.statvfs(folder)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < floor or (fs.f_files > 0 and fs.f_favail < INODE_FLOOR)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except OSError:
        pass  # it exited without reading: its exit status says why


@functools.cache
def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux), so a double-forked
    grandchild of a run reparents here, where `leftover_processes` finds it, and not to init."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def leftover_processes(token: str) -> list[psutil.Process]:
    """Live processes carrying a run's token in their environment."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.status() != psutil.STATUS_ZOMBIE and p.environ().get(TOKEN_ENV) == token:
                found.append(p)
        except psutil.Error:
            pass
    return found


class _Tree:
    """Every process ever seen belonging to a run, with its creation time (pid reuse)."""

    def __init__(self, root: int, token: str) -> None:
        self.root, self.token = root, token
        self.seen: dict[int, float] = {}

    def snapshot(self) -> int:
        """Add the processes of the run alive now to those seen; return how many processes and
        threads they are."""
        found: list[psutil.Process] = []
        try:
            root = psutil.Process(self.root)
            found += [root, *root.children(recursive=True)]
        except psutil.Error:
            pass
        try:
            # Orphans reparented to us (the subreaper) that are not our own direct children.
            me = psutil.Process()
            for child in me.children():
                if child.pid != self.root and _has_token(child, self.token):
                    found += [child, *child.children(recursive=True)]
        except psutil.Error:
            pass
        tasks = 0
        for p in found:
            try:
                self.seen.setdefault(p.pid, p.create_time())
                tasks += p.num_threads()
            except psutil.Error:
                pass
        return tasks

    def add_leftovers(self) -> None:
        for p in leftover_processes(self.token):
            try:
                self.seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass

    def reap(self) -> None:
        """Collect the exit status of orphans that were reparented to us (no zombies left).

        Besides the processes seen during the run, any zombie child of ours in another session
        counts: a sandbox's helper process can be reparented to us and die between two snapshots.
        """
        zombies = {c.pid for c in psutil.Process().children() if _is_zombie(c)}
        # Never another Contained's own process: its exit status is its owner's to collect (a
        # scorer that ended while its model processes were killed would read as exit 0).
        with _STARTED_LOCK:
            for pid in (set(self.seen) | zombies) - (_STARTED - {self.root}):
                if not _outside_our_session(pid):
                    continue
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def alive(self) -> list[psutil.Process]:
        out = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                pass
        return out


def kill_tree(root: int, tree: _Tree, settle: float = 0.0) -> int:
    """SIGKILL the session's process group and every process of the run; return how many were
    still alive `settle` seconds after the call (left running, when the run itself had ended)."""
    tree.snapshot()
    tree.add_leftovers()
    lingering = tree.alive()
    # One caught mid-exit (a sandbox's init on a busy host) is gone a moment later; how long that
    # moment is depends on the host's load, so wait for it, and only a process that outlives the
    # wait was left running.
    settle_until = time.monotonic() + settle
    while lingering and time.monotonic() < settle_until:
        time.sleep(EXIT_POLL_SECONDS)
        tree.snapshot()
        lingering = tree.alive()
    try:
        os.killpg(root, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    alive = tree.alive()
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=KILL_GRACE_SECONDS)
    tree.reap()
    return len(lingering)


def _has_token(p: psutil.Process, token: str) -> bool:
    try:
        return p.environ().get(TOKEN_ENV) == token
    except psutil.Error:
        return False


class _LogPump(threading.Thread):
    """Copies the child's output to the log: the head up to a cap, then only the last lines, so a
    flood cannot fill the disk and the summary the run prints last is never lost."""

    def __init__(self, stream: IO[bytes], log_path: Path, cap: int, on_line: Callable[[str], None] | None) -> None:
        super().__init__(daemon=True)
        self.stream, self.log_path, self.cap, self.on_line = stream, log_path, cap, on_line
        self.dropped = 0

    def run(self) -> None:
        written, tail_bytes = 0, 0
        tail: deque[bytes] = deque()
        try:
            log: IO[bytes] | None = open(self.log_path, "wb")
        except OSError:  # no room for even the file (a full disk, no inodes left): drain all the same
            log = None
        for raw in iter(lambda: self.stream.readline(65536), b""):
            if written < self.cap:
                log = self._write(log, raw)
                written += len(raw)
            else:
                tail.append(raw)
                tail_bytes += len(raw)
                while tail_bytes > TAIL_KEEP:
                    tail_bytes -= len(dropped := tail.popleft())
                    self.dropped += len(dropped)
            if self.on_line is not None:
                self.on_line(raw.decode("utf-8", errors="replace").rstrip("\n"))
        if self.dropped:
            log = self._write(log, f"\n[autoresearch: {self.dropped} bytes of output dropped here]\n".encode())
        for raw in tail:
            log = self._write(log, raw)
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()

    def _write(self, log: IO[bytes] | None, data: bytes) -> IO[bytes] | None:
        """Write to the log while it takes writes; once it fails (the run filled the disk), keep
        draining the pipe, so the run is never blocked on it and the daemon never stops on it."""
        if log is None:
            return None
        try:
            log.write(data)
            return log
        except OSError:
            with contextlib.suppress(OSError):
                log.close()
            return None


def _outside_our_session(pid: int) -> bool:
    """A run's processes, orphans or not, live in sessions of their own (a run starts one, and no
    process can join the daemon's). Everything else the daemon started, git above all, shares its
    session: collecting one of those would steal its exit status from the thread waiting on it,
    whose wait then reads 0 (a conflicted merge would read as clean)."""
    try:
        return os.getsid(pid) != os.getsid(0)
    except OSError:
        return False


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tail(path: Path, max_bytes: int = 4000) -> str:
    """The end of a log as text, for the agent and for crash reasons (never fails)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
