"""A run that starts processes or threads without end is ended at its cap and leaves nothing
behind; and while a host cannot start a process at all (a fork bomb fills its process table
before any watch can see it), the daemon's own git calls and threads wait instead of failing.

The host's process table is never filled here: the kernel's per-user cap on processes
(RLIMIT_NPROC, which root is exempt from, hence a helper that runs as nobody) makes one process
unable to fork, exactly as a full table would, and lifts it again."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest
from daemon_kit import MAIN, git

from loop.runner import Runner, RunSpec

CAP = 64

FORKS = textwrap.dedent('''
    import os, time
    for _ in range(9):  # doubling: up to 512 processes, all asleep
        os.fork()
    time.sleep(600)
''').encode()

THREADS = textwrap.dedent('''
    import threading, time
    for _ in range(300):
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    time.sleep(600)
''').encode()


@pytest.mark.parametrize("flood", ["forks", "threads"])
def test_a_run_with_too_many_processes_or_threads_is_ended_at_its_cap(tmp_path: Path, flood: str) -> None:
    exp = tmp_path / "runner" / "0001"
    exp.mkdir(parents=True)
    pinned = {name: (MAIN / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")}
    spec = RunSpec(FORKS if flood == "forks" else THREADS, exp, budget=300.0, timeout=600.0, max_tasks=CAP)
    outcome = Runner(tmp_path / "runner", pinned).train(spec)
    assert outcome.reason.startswith("processes: it ran "), outcome.reason
    assert f"over the {CAP} a run may have" in outcome.reason
    assert outcome.train_seconds < 300  # ended at the cap, not at its budget
    left = []
    for p in psutil.process_iter():
        try:
            if p.cwd().startswith(str(exp)):
                left.append(p)
        except psutil.Error:
            pass
    assert left == []


HELPER = textwrap.dedent('''
    import json, os, resource, subprocess, sys, threading, time
    sys.path[:0] = [sys.argv[1]]
    from loop.gitops import Git
    from loop.patience import host_refused_start, patiently, start_thread

    def my_tasks():
        count = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.stat(f"/proc/{pid}").st_uid == os.getuid():
                    count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
        return count

    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    go = threading.Semaphore(0)

    def lift_later():  # started before the cap: it needs no new task to lift it
        for _ in range(2):
            go.acquire()
            time.sleep(0.5)
            resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))

    threading.Thread(target=lift_later, daemon=True).start()
    found = {}

    def full():
        resource.setrlimit(resource.RLIMIT_NPROC, (my_tasks(), hard))

    full()
    try:
        patiently(lambda: subprocess.run(["true"]), patience=0.3)
        found["fork_while_full"] = "started"
    except OSError as e:
        found["fork_while_full"] = f"out of tasks: {host_refused_start(e)}"
    try:
        threading.Thread(target=lambda: None).start()
        found["thread_while_full"] = "started"
    except RuntimeError as e:
        found["thread_while_full"] = f"out of tasks: {host_refused_start(e)}"
    go.release()
    started = time.monotonic()
    found["head"] = Git(sys.argv[2]).head()
    found["git_waited"] = time.monotonic() - started
    full()
    go.release()
    started = time.monotonic()
    start_thread(threading.Thread(target=lambda: None))
    found["thread_waited"] = time.monotonic() - started
    print(json.dumps(found))
''')


def test_git_and_threads_wait_out_a_host_that_cannot_start_a_process(tmp_path: Path) -> None:
    # The repo lies where nobody may enter without privilege: git and GitPython check with
    # access(2), which ignores the power to read any folder that nobody is lent below.
    repo = Path(tempfile.mkdtemp(prefix="autoresearch-nproc-"))
    try:
        repo.chmod(0o755)
        git(repo, "init", "-q")
        (repo / "f").write_text("x")
        git(repo, "add", "f")
        git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
        head = git(repo, "rev-parse", "HEAD").strip()
        argv = [sys.executable, "-c", HELPER, str(MAIN), str(repo)]
        if os.geteuid() == 0:  # root ignores RLIMIT_NPROC: be nobody, still able to read the checkout
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: cannot become a user the process cap applies to")
            subprocess.run(["chown", "-R", "65534:65534", str(repo)], check=True)
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
                    "--ambient-caps=+dac_read_search", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(repo)},
                              cwd=repo)
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["fork_while_full"] == "out of tasks: True"  # past its patience, the error is raised
    assert found["thread_while_full"] == "out of tasks: True"
    assert found["head"] == head and found["git_waited"] >= 0.4
    assert found["thread_waited"] >= 0.4
