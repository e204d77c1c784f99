"""kill -9 of the daemon in each phase of an experiment, then `resume`: nothing lost, nothing twice."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from daemon_kit import (
    assert_invariants,
    folded,
    git,
    journal_events,
    make_repo,
    queue_proposal,
    read_results,
    run_cli,
    start_background,
    wait_for_event,
)


@pytest.mark.parametrize("event", ["committed", "running", "evaluating", "decided"])
def test_kill_then_resume(tmp_path: Path, event: str) -> None:
    repo, env = make_repo(tmp_path, sleep=0.6, eval_sleep=0.6)
    daemon = start_background(repo, "start", "--tag", "k", "--budget", "2", "--max-experiments", "3", env=env)
    wait_for_event(repo, "k", event, n=1)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    killed_at = folded(journal_events(repo, "k")).experiments[1].phase
    done = run_cli(repo, "resume", "--tag", "k", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    rows = read_results(repo)
    assert len(rows) == 4, (killed_at, rows)  # baseline + 3, experiment 1 neither lost nor doubled
    assert_invariants(repo, "k")
    events = journal_events(repo, "k")
    keys = {e["config"]["seed_key"] for e in events if e["event"] in ("run_started", "run_resumed")}
    assert len(keys) == 1 and "" not in keys  # the night's secret survives the kill
    # Every run's work folder, the killed one's too, is gone; its logs are filed under its experiment.
    assert not (repo / ".autoresearch/runs/k/work").exists()
    assert (repo / ".autoresearch/runs/k/0001/train.log").is_file()
    if killed_at in ("committed", "running", "evaluating"):
        assert "resuming experiment 1 from its commit" in done.stdout


def test_kill_while_proposing(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    queue = tmp_path / "queue"
    queue.mkdir()
    daemon = start_background(repo, "start", "--tag", "p", "--agent", "queue", "--queue", str(queue),
                              "--budget", "1", "--max-experiments", "2", env=env)
    wait_for_event(repo, "p", "proposing", n=1)  # the queue is empty: the agent waits
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    src = (repo / "train.py").read_text()
    queue_proposal(queue, "a", src.replace("LR = 0.02", "LR = 0.01"), "lower LR")
    queue_proposal(queue, "b", src.replace("WIDTH = 8", "WIDTH = 16"), "wider")
    done = run_cli(repo, "resume", "--tag", "p", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    rows = read_results(repo)
    assert rows[0][4] == "baseline" and sorted(r[4] for r in rows[1:]) == ["lower LR", "wider"]  # rows: as decided
    assert_invariants(repo, "p")


def test_stop_graceful_and_now(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path, sleep=3.0)
    daemon = start_background(repo, "start", "--tag", "g", "--budget", "5", "--best-runs", "1", env=env)
    wait_for_event(repo, "g", "running", n=1)
    stopped = run_cli(repo, "stop", env=env)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    assert daemon.wait(timeout=60) == 0
    rows = read_results(repo)
    assert len(rows) == 2  # experiment 1 was finished and recorded
    assert_invariants(repo, "g")

    seen = len(journal_events(repo, "g"))
    daemon = start_background(repo, "resume", "--tag", "g", env=env)
    running = first_run_after(repo, "g", seen)
    now = run_cli(repo, "stop", "--now", env=env)
    assert now.returncode == 0, now.stderr
    assert daemon.wait(timeout=60) == 0
    run = folded(journal_events(repo, "g"))
    assert run.by_n[running].status == "interrupted"
    rows = read_results(repo)
    assert len(rows) == len(run.decided) and running not in {e.n for e in run.decided}  # no crash row for it
    assert_invariants(repo, "g")


def first_run_after(repo: Path, tag: str, seen: int, timeout: float = 60) -> int:
    """The experiment of the first run started after the journal's first `seen` events (whichever
    the agent had ready), once the daemon that started it has journaled its resume."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = journal_events(repo, tag)[seen:]
        started = [e["n"] for e in events if e["event"] == "running" and e.get("n", 0) > 0]
        if started and any(e["event"] == "run_resumed" for e in events):
            return started[0]
        time.sleep(0.01)
    raise AssertionError(f"no run started within {timeout}s of the resume")


def test_kill_after_a_conflict_resumes_on_the_new_best(tmp_path: Path) -> None:
    """An experiment whose commit no longer merged onto a new best was handed back to the agent; a
    kill then must not resume it from that stale commit (run as if built on the new best, a keep
    would move the branch to a line without the best's change)."""
    repo, env = make_repo(tmp_path, sleep=0.3)
    queue = tmp_path / "queue"
    src = (repo / "train.py").read_text()
    queue_proposal(queue, "01", src.replace("DEPTH = 2", "DEPTH = 3"), "depth 3")
    queue_proposal(queue, "02", src.replace("DEPTH = 2", "DEPTH = 4"), "depth 4")  # both change one line
    daemon = start_background(repo, "start", "--tag", "c", "--agent", "queue", "--queue", str(queue), "--budget", "2",
                              "--slots", "1", "--lookahead", "0", "--max-experiments", "2", env=env)
    wait_for_event(repo, "c", "proposal_failed", n=2, timeout=120, where=lambda e: bool(e.get("conflict")))
    first = wait_for_event(repo, "c", "decided", n=1)
    assert first["status"] == "keep"
    kept = next(e["commit"] for e in journal_events(repo, "c") if e["event"] == "committed" and e["n"] == 1)
    wait_for_event(repo, "c", "proposing", n=2, where=lambda e: e["parent"] == kept)  # asked again, on the new best
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    best = git(repo, "show", f"{kept}:train.py") + "\n"
    queue_proposal(queue, "03", best.replace("WIDTH = 8", "WIDTH = 16"), "wider, on depth 3")
    done = run_cli(repo, "resume", "--tag", "c", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "resuming experiment 2 from its commit" not in done.stdout
    second = [e for e in journal_events(repo, "c") if e["event"] == "committed" and e["n"] == 2][-1]
    assert git(repo, "rev-parse", f"{second['commit']}^") == kept
    assert git(repo, "merge-base", "--is-ancestor", kept, "autoresearch/c") == ""  # the kept line is whole
    assert_invariants(repo, "c")
