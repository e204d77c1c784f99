#!/usr/bin/env python3
"""The guard's time per experiment and the sandbox's start-up overhead.

    python scripts/bench_guard.py [--repeats N]

Guard: check_commit + check_tree on a real commit of this project's train.py in a scratch repo,
with the secret index (val.txt's hashed windows, built once per run) and without it.
Process scan: the after-run search for a run's leftover processes.
Sandbox: `python -c pass` wrapped by bwrap against the same command unwrapped. Medians of N.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from daemon_kit import git, make_repo  # noqa: E402

from loop import guard, sandbox  # noqa: E402
from loop.procs import leftover_processes  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo, _ = make_repo(Path(tmp), harness="real")
        protected = guard.protected_hashes(repo)
        parent = git(repo, "rev-parse", "HEAD")
        (repo / "train.py").write_text((repo / "train.py").read_text().replace("MLP_RATIO = 4", "MLP_RATIO = 3"))
        git(repo, "commit", "-qam", "narrower MLP")

        started = time.perf_counter()
        secrets = guard.secret_index(repo)
        built = time.perf_counter() - started
        text = (repo / "train.py").read_text()
        found_in = median_seconds(lambda: secrets.found_in(text), args.repeats)

        def check(index: guard.SecretIndex | None) -> None:
            assert guard.check_commit(repo, "HEAD", parent, protected, secrets=index) == []
            assert guard.check_tree(repo, protected) == []

        bare = median_seconds(lambda: check(None), args.repeats)
        full = median_seconds(lambda: check(secrets), args.repeats)
        print(f"secret index: built once per run in {built * 1000:.0f} ms ({secrets.size:,} windows); "
              f"found_in on train.py: median {found_in * 1000:.1f} ms")
        print(f"guard per experiment (check_commit + check_tree): median {full * 1000:.1f} ms with the secret index, "
              f"{bare * 1000:.1f} ms without; goal < 100 ms")
        scan = median_seconds(lambda: leftover_processes("bench"), args.repeats)
        print(f"after-run process scan (leftover_processes over all processes): median {scan * 1000:.1f} ms")
        work = Path(tmp) / "work"
        work.mkdir()
        plain = [sys.executable, "-c", "pass"]
        unboxed = median_seconds(lambda: subprocess.run(plain, check=True), args.repeats)
        if not sandbox.available():
            print(f"sandbox: {sandbox.NO_SANDBOX_WARNING}")
            return 0
        wrapped = sandbox.wrap(plain, sandbox.SandboxSpec(workdir=work, hide=(repo,)))
        boxed = median_seconds(lambda: subprocess.run(wrapped, check=True), args.repeats)
        print(f"python start-up: {unboxed * 1000:.1f} ms plain, {boxed * 1000:.1f} ms in the sandbox; "
              f"sandbox overhead {(boxed - unboxed) * 1000:.1f} ms; goal < 1000 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
