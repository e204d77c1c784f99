"""The sandbox and the process containment, on real processes: what a run can see and write, and
that nothing of it outlives it (setsid grandchildren, SIGTERM-proof loops, forks, memory hogs)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from loop import sandbox, seccomp
from loop.procs import leftover_processes, run_contained

needs_bwrap = pytest.mark.skipif(not sandbox.available(), reason="bwrap is not usable here")
MARKER = "autoresearch-sandbox-test-marker"


def run(tmp_path: Path, code: str, spec: sandbox.SandboxSpec | None = None, timeout: float = 20, boxed: bool = True):
    spec = spec or sandbox.SandboxSpec(workdir=tmp_path / "work")
    spec.workdir.mkdir(exist_ok=True)
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    argv = sandbox.wrap(argv, spec) if boxed else argv
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1"}
    res = run_contained(argv, cwd=spec.workdir, env=env, timeout=timeout, log_path=tmp_path / "log",
                        preexec=sandbox.limits_preexec(spec))
    return res, (tmp_path / "log").read_text(errors="replace")


def survivors() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if MARKER in " ".join(p.info["cmdline"] or [])]


@needs_bwrap
def test_repo_hidden_host_read_only_no_network(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "val.txt").write_text("secret validation text")
    ckpt = repo / "runs" / "ckpt"
    ckpt.mkdir(parents=True)
    spec = sandbox.SandboxSpec(workdir=tmp_path / "work", writable=(ckpt,), hide=(repo,))
    res, log = run(tmp_path, f"""
        import os, socket
        print("repo:", sorted(os.listdir({str(repo)!r})))
        print("val readable:", os.path.exists({str(repo / 'val.txt')!r}))
        open({str(ckpt / 'model.pt')!r}, "w").write("weights")
        for path in ("/etc/autoresearch-test", {str(repo / 'x.py')!r}):
            try:
                open(path, "w").write("x"); print("wrote", path)
            except OSError as e:
                print("refused", path)
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=2); print("network: yes")
        except OSError:
            print("network: no")
        print("home:", os.listdir(os.path.expanduser("~")) if os.path.isdir(os.path.expanduser("~")) else None)
    """, spec)
    assert res.returncode == 0, log
    assert "repo: ['runs']" in log and "val readable: False" in log
    assert (ckpt / "model.pt").read_text() == "weights"
    assert "refused /etc/autoresearch-test" in log and "network: no" in log
    assert not (repo / "x.py").exists()


def test_file_size_cap(tmp_path: Path) -> None:
    spec = sandbox.SandboxSpec(workdir=tmp_path / "work", max_file_bytes=1 << 20)
    res, log = run(tmp_path, """
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            open("big", "wb").write(b"x" * (4 << 20)); print("wrote all")
        except OSError as e:
            print("capped:", e.errno)
    """, spec)
    assert "capped: 27" in log, log  # EFBIG
    assert (spec.workdir / "big").stat().st_size <= 1 << 20


def test_memory_hog_is_the_one_that_fails(tmp_path: Path) -> None:
    spec = sandbox.SandboxSpec(workdir=tmp_path / "work", max_memory_bytes=2 << 30)
    res, log = run(tmp_path, """
        try:
            block = bytearray(4 << 30); print("allocated")
        except MemoryError:
            print("MemoryError")
    """, spec)
    assert "MemoryError" in log and "allocated" not in log, log
    assert sandbox.memory_cap(sandbox.SandboxSpec(workdir=tmp_path, gpu=True)) is None  # CUDA maps huge


@needs_bwrap
def test_a_run_cannot_make_its_read_only_binds_writable(tmp_path: Path) -> None:
    """bwrap started by root would leave the run every capability of its user namespace, enough to
    remount a read-only bind (the interpreter's site-packages, /usr) writable and plant code the
    scorer runs next. The run has no capability, whoever started the daemon."""
    data = tmp_path / "data"
    data.mkdir()
    spec = sandbox.SandboxSpec(workdir=tmp_path / "work", readonly=(data,))
    res, log = run(tmp_path, f"""
        import subprocess
        status = [line for line in open("/proc/self/status") if line.startswith("CapEff")]
        print("caps", int(status[0].split()[1], 16))
        done = subprocess.run(["mount", "-o", "remount,bind,rw", {str(data)!r}], capture_output=True)
        print("remount", done.returncode)
        try:
            open({str(data / "planted.py")!r}, "w").write("x")
            print("planted")
        except OSError:
            print("refused")
    """, spec)
    assert "caps 0" in log and "refused" in log, log
    assert not (data / "planted.py").exists()


@pytest.mark.parametrize("boxed", [True, False])
def test_a_run_is_the_oom_killers_first_choice(tmp_path: Path, boxed: bool) -> None:
    """On a GPU no address-space cap applies: a run that takes the host's memory must be what the
    kernel's OOM killer ends, not the daemon. A daemon that may lower the score again
    (CAP_SYS_RESOURCE) keeps a sandboxed run, which never has that power, from lowering its own."""
    if boxed and not sandbox.available():
        pytest.skip("bwrap is not usable here")
    res, log = run(tmp_path, """
        path = "/proc/self/oom_score_adj"
        print("score", open(path).read().strip())
        try:
            open(path, "w").write("0")
        except OSError:
            pass
        print("after", open(path).read().strip())
    """, boxed=boxed)
    assert res.returncode == 0, log
    assert "score 1000" in log, log
    if boxed and CAP_SYS_RESOURCE in own_capabilities():
        assert "after 1000" in log, log


CAP_SYS_RESOURCE = 24


def own_capabilities() -> set[int]:
    """The capabilities this process has in effect (their numbers)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("CapEff:"))
    bits = int(line.split()[1], 16)
    return {i for i in range(64) if bits >> i & 1}


@pytest.mark.parametrize("boxed", [True, False])
def test_nothing_of_a_run_survives_it(tmp_path: Path, boxed: bool) -> None:
    if boxed and not sandbox.available():
        pytest.skip("bwrap is not usable here")
    # A setsid'ed double-fork that outlives the run, a SIGTERM-proof loop, and 30 forked sleepers.
    res, log = run(tmp_path, f"""
        import os, signal, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["{MARKER}", "300"])
            os._exit(0)
        for _ in range(30):
            if os.fork() == 0:
                os.execvp("sleep", ["{MARKER}", "301"])
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("started", flush=True)
        time.sleep(1)
    """, boxed=boxed)
    assert "started" in log, log
    assert res.returncode == 0 and not res.timed_out
    if not boxed:  # in the sandbox the PID namespace takes them down with its init first
        assert res.leftovers_killed >= 1, (res, survivors())
    assert survivors() == []


def test_a_process_that_ends_just_after_the_run_was_not_left_running(tmp_path: Path) -> None:
    # A busy host can keep a run's last process (a sandbox's init) alive a moment past the run;
    # that is no crash, but its time is the run's: the wall clock runs until it is gone.
    res, _ = run(tmp_path, f"""
        import os
        if os.fork() == 0:
            os.setsid()
            os.execvp("sleep", ["{MARKER}", "0.6"])
    """, boxed=False)
    assert res.returncode == 0 and res.leftovers_killed == 0, res
    assert res.wall_seconds >= 0.6
    assert survivors() == []


KEYRING_CALLS = """
    import ctypes, os
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    found = syscall(ctypes.c_long({keyctl}), ctypes.c_long(0), ctypes.c_long(-3), ctypes.c_long(0))
    print("session keyring", found, os.strerror(ctypes.get_errno()) if found < 0 else "", flush=True)
    added = syscall(ctypes.c_long({add_key}), b"user", b"note-for-the-next-run", b"x", ctypes.c_size_t(1),
                    ctypes.c_long(-4))
    print("added to the user keyring", added, os.strerror(ctypes.get_errno()) if added < 0 else "", flush=True)
"""


@pytest.mark.parametrize("boxed", [True, False])
def test_a_run_has_no_keyring_to_share(tmp_path: Path, boxed: bool) -> None:
    """Keyrings are not namespaced and a key's permissions go by the host's user ids: a run (the
    daemon's user on the host, root's for a root daemon) could leave a key in that user's keyring,
    which outlives it, for the next run to find, or clear it. Its keyring calls are refused."""
    if boxed and not sandbox.available():
        pytest.skip("bwrap is not usable here")
    if seccomp.program() is None:
        pytest.skip("no seccomp filter for this machine's architecture")
    keyctl, add_key = seccomp.ARCHITECTURES[platform.machine()][1][2], seccomp.ARCHITECTURES[platform.machine()][1][0]
    res, log = run(tmp_path, KEYRING_CALLS.format(keyctl=keyctl, add_key=add_key), boxed=boxed)
    assert res.returncode == 0, log
    assert "session keyring -1 Operation not permitted" in log, log
    assert "added to the user keyring -1 Operation not permitted" in log, log
    assert "note-for-the-next-run" not in Path("/proc/keys").read_text()


def test_timeout_kills_a_sigterm_proof_hang(tmp_path: Path) -> None:
    res, log = run(tmp_path, f"""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen(["{MARKER}", "302"], executable="sleep", start_new_session=True)
        print("hanging", flush=True)
        while True:
            time.sleep(1)
    """, timeout=2, boxed=sandbox.available())
    assert res.timed_out and res.returncode is None and 2 <= res.wall_seconds < 10
    assert survivors() == []


def test_leftover_processes_finds_by_token(tmp_path: Path) -> None:
    assert leftover_processes("no-such-token") == []


def test_warning_line() -> None:
    assert (sandbox.warning() is None) == sandbox.available()
    assert sandbox.NO_SANDBOX_WARNING.count("\n") == 0


def test_a_run_leaves_the_exit_status_of_the_daemons_other_children_alone(tmp_path: Path) -> None:
    """A run's clean-up collects the zombies of orphans reparented to the daemon, never those of
    the daemon's own commands (git), whose threads read their exit status: a stolen status reads
    as 0, which once let a conflicted merge be committed as clean."""
    ours = subprocess.Popen(["sh", "-c", "exit 3"])
    while psutil.Process(ours.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    res, _ = run(tmp_path, "print('done')", boxed=False)
    assert res.returncode == 0
    assert ours.wait(timeout=10) == 3


def test_orphans_of_a_run_that_die_after_it_leave_no_zombie(tmp_path: Path) -> None:
    """The other side of the session rule: a run's orphans, in a session of their own (setsid) or
    in the run's, reparent to the daemon and die; each is collected, so a night of runs that do
    this cannot fill the process table with zombies."""
    before = {c.pid for c in psutil.Process().children()}
    res, log = run(tmp_path, """
        import os, time
        for new_session in (True, False):
            if os.fork() == 0:
                if new_session:
                    os.setsid()
                if os.fork() == 0:
                    time.sleep(0.3)  # outlives its parent, then dies an orphan
                    os._exit(0)
                os._exit(0)
        time.sleep(0.1)
        print("forked", flush=True)
    """, boxed=False)
    assert "forked" in log and res.returncode == 0, log
    zombies = [c for c in psutil.Process().children() if c.pid not in before and c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []


def test_a_device_node_whose_mode_a_run_changed_is_put_back_and_told(tmp_path: Path) -> None:
    """A root daemon's run owns the host nodes bwrap binds into its /dev: it can change their mode
    (chmod 0 /dev/null would break every other user's programs) and set their times (a message to
    the next run). The daemon puts back what changed after each run; a stand-in node here."""
    node = tmp_path / "null"
    node.write_text("")
    node.chmod(0o666)
    st = node.stat()
    states = {node: (st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns)}
    assert sandbox.put_back_devices(states) == []
    node.chmod(0o600)
    assert sandbox.put_back_devices(states) == [f"{node} (made mode 600, owner {os.getuid()}:{os.getgid()})"]
    assert (node.stat().st_mode & 0o777) == 0o666
    os.utime(node, ns=(1111111111000000042, 2222222222000000042))
    assert sandbox.put_back_devices(states) == [f"{node} (times set to 1111111111000000042 2222222222000000042)"]
    assert (node.stat().st_atime_ns, node.stat().st_mtime_ns) == (st.st_atime_ns, st.st_mtime_ns)
    assert set(sandbox.device_states(sandbox.SandboxSpec(workdir=tmp_path))) <= {Path("/dev") / n for n in sandbox.DEV_NODES}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root owns the host's /dev/null")
def test_device_states_are_the_first_seen_not_what_a_sibling_run_left() -> None:
    """Two runs in flight: the second's `before` must not be what the first has just done to a node,
    or putting it back after the second would leave the first's mark for the run after."""
    spec = sandbox.SandboxSpec(workdir=Path("/"))
    first = sandbox.device_states(spec)
    null = Path("/dev/null")
    try:
        os.utime(null, ns=(1111111111000000042, 2222222222000000042))  # a sibling run's mark
        second = sandbox.device_states(spec)
        assert second[null] == first[null]
    finally:
        assert sandbox.put_back_devices(first) == [f"{null} (times set to 1111111111000000042 2222222222000000042)"]
    assert (null.stat().st_atime_ns, null.stat().st_mtime_ns) == first[null][3:]


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="only a root daemon's runs own the host's device nodes")
def test_a_root_run_gets_its_own_device_nodes(tmp_path: Path) -> None:
    """A root daemon's run gets copies of /dev/null and the rest: they work as the host's do, and
    what it does to their mode and times happens to its copies only, so no other run (a sibling in
    flight, another daemon's) sees a mark, is blamed for one or misses one; the next run's are new."""
    spec = sandbox.SandboxSpec(workdir=tmp_path / "work", nodes_dir=tmp_path / "nodes")
    host = {name: (Path("/dev") / name).stat() for name in sandbox.DEV_NODES}
    assert [h for h, _ in sandbox.node_copies(spec)] == [Path("/dev") / n for n in sandbox.DEV_NODES
                                                         if (Path("/dev") / n).exists()]
    assert not set(sandbox.device_states(spec)) & {Path("/dev") / n for n in sandbox.DEV_NODES}
    res, log = run(tmp_path, """
        import os
        with open("/dev/null", "w") as f:
            f.write("into nothing")
        print("zero", open("/dev/zero", "rb").read(4), "random", len(open("/dev/urandom", "rb").read(8)))
        os.utime("/dev/null", ns=(1111111111000000042, 2222222222000000042))
        os.chmod("/dev/null", 0)
        os.chmod("/dev/zero", 0)
        print("marked", oct(os.stat("/dev/null").st_mode & 0o777))
    """, spec=spec)
    assert res.returncode == 0 and "zero b'\\x00\\x00\\x00\\x00' random 8" in log and "marked 0o0" in log, log
    for name, st in host.items():  # the host's nodes are as they were
        now = (Path("/dev") / name).stat()
        assert (now.st_mode, now.st_atime_ns, now.st_mtime_ns) == (st.st_mode, st.st_atime_ns, st.st_mtime_ns), name
    assert (tmp_path / "nodes" / "null").stat().st_mtime_ns == 2222222222000000042  # the mark is on its copy
    res, log = run(tmp_path, """
        import os
        st = os.stat("/dev/null")
        print("fresh", oct(st.st_mode & 0o777), st.st_mtime_ns != 2222222222000000042)
    """, spec=spec)
    assert f"fresh {oct(host['null'].st_mode & 0o777)} True" in log, log


@needs_bwrap
def test_a_run_holds_no_handle_on_a_host_device(tmp_path: Path) -> None:
    """Its stdin is an empty pipe, not the daemon's /dev/null: no open file of the host's /dev."""
    res, log = run(tmp_path, """
        import os, stat, sys
        print("stdin is a pipe:", stat.S_ISFIFO(os.fstat(0).st_mode), "reads:", repr(sys.stdin.read()))
    """)
    assert "stdin is a pipe: True reads: ''" in log, log
