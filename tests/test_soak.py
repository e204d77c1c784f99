"""A soak of 200 experiments: the daemon's open files, child processes and memory stay flat."""
from __future__ import annotations

import time
from pathlib import Path

import psutil
from daemon_kit import assert_invariants, make_repo, start_background, wait_for_event

EXPERIMENTS = 200


def sample(pid: int) -> tuple[int, int, float]:
    """The daemon's fds, children and RSS at its quietest over two seconds: a leak raises the
    floor, while a pipe or a child that one run has open for a moment does not."""
    proc, seen = psutil.Process(pid), []
    for _ in range(200):
        seen.append((proc.num_fds(), len(proc.children(recursive=True)), proc.memory_info().rss / 2**20))
        time.sleep(0.01)
    return min(s[0] for s in seen), min(s[1] for s in seen), min(s[2] for s in seen)


def test_soak_stays_flat(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    daemon = start_background(repo, "start", "--tag", "soak", "--budget", "1", "--max-experiments", str(EXPERIMENTS), env=env)
    samples = {}
    for n in (20, EXPERIMENTS - 20):
        wait_for_event(repo, "soak", "recorded", n=n, timeout=600, poll=0.05)
        samples[n] = sample(daemon.pid)
    assert daemon.wait(timeout=300) == 0
    (fds_early, kids_early, rss_early), (fds_late, kids_late, rss_late) = samples[20], samples[EXPERIMENTS - 20]
    assert fds_late <= fds_early + 2, samples
    assert kids_late <= max(kids_early, 1), samples  # no git cat-file or run processes pile up
    assert rss_late < rss_early * 1.25 + 8, samples
    assert_invariants(repo, "soak")
