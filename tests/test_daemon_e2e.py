"""End to end through the real CLI: start with the search agent, results.tsv, refs, journal."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from daemon_kit import assert_invariants, folded, journal_events, make_repo, read_results, run_cli


def test_search_run_of_four_experiments(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    done = run_cli(repo, "start", "--tag", "t1", "--budget", "2", "--max-experiments", "4", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "agent: search" in done.stdout
    rows = read_results(repo)
    assert len(rows) == 5 and rows[0][4] == "baseline" and rows[0][3] == "keep"
    assert all(len(r) == 5 for r in rows)
    assert_invariants(repo, "t1")
    events = [e["event"] for e in journal_events(repo, "t1")]
    assert events[0] == "run_started" and events[-1] == "run_stopped"
    assert "reached --max-experiments 4" in done.stdout


def test_real_harness_run(tmp_path: Path, prepared_cache: Path) -> None:
    """The real prepare.py/train.py/val.txt, a 5-second budget: the baseline learns (when a step with a
    learning rate above 0 fit in the budget: on a machine busy enough none may, and the untrained
    model scores the uniform 8 bits a byte), then an experiment runs. Two runs take about 50 s on a
    quiet 2-core machine; the limit allows for a machine several times busier."""
    repo, env = make_repo(tmp_path, harness="real")
    env["AUTORESEARCH_CACHE"] = str(prepared_cache)
    done = run_cli(repo, "start", "--tag", "real", "--budget", "5", "--max-experiments", "1", "--baseline-runs", "1",
                   "--best-runs", "1", env=env, timeout=900)
    assert done.returncode == 0, done.stderr + done.stdout
    rows = read_results(repo)
    reasons = [(e.n, e.status, e.reason) for e in folded(journal_events(repo, "real")).experiments]
    assert len(rows) == 2, (reasons, done.stdout[-2000:])
    steps = float(folded(journal_events(repo, "real")).by_n[0].summary.get("num_steps") or 0)
    assert rows[0][3] == "keep" and 0 < float(rows[0][1]) <= 8.0
    # The warm-up steps and the first timed one run at the schedule's learning rate at 0 s trained: 0.
    warmup = int(re.search(r"^WARMUP_STEPS = (\d+)", (repo / "train.py").read_text(), re.M).group(1))
    assert float(rows[0][1]) < 8.0 or steps <= warmup + 1, steps  # below a uniform byte model once it learnt
    assert_invariants(repo, "real")


def test_new_tag_archives_previous_results(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    assert run_cli(repo, "start", "--tag", "a", "--budget", "1", "--max-experiments", "1", env=env).returncode == 0
    first = (repo / "results.tsv").read_text()
    assert run_cli(repo, "start", "--tag", "b", "--budget", "1", "--max-experiments", "1", env=env).returncode == 0
    assert (repo / ".autoresearch/runs/a/results.tsv").read_text() == first
    assert len(read_results(repo)) == 2
    assert_invariants(repo, "b")


def test_status_and_check(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    assert run_cli(repo, "start", "--tag", "s", "--budget", "1", "--max-experiments", "2", env=env).returncode == 0
    out = run_cli(repo, "status", env=env).stdout
    assert "not running (tag s)" in out and "experiments: 2 besides the baseline" in out and "baseline val_bpb:" in out and "best val_bpb:" in out
    assert "spend: $0.00" in out
    check = run_cli(repo, "check", env=env)
    assert check.returncode == 0, check.stdout


def test_manual_run_does_not_touch_git(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    done = run_cli(repo, "run", "--budget", "1", env=env)
    assert done.returncode == 0, done.stderr
    assert "val_bpb: 1.60" in done.stdout
    assert "num_steps: 2\n" in done.stdout  # a whole number as train.py printed it, not 2.0
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout == head
    assert not (repo / "results.tsv").exists()


def test_detach_runs_in_the_background(tmp_path: Path) -> None:
    import re

    import psutil

    repo, env = make_repo(tmp_path, sleep=1.0)
    done = run_cli(repo, "start", "--tag", "bg", "--budget", "2", "--max-experiments", "2", "--detach", env=env)
    assert done.returncode == 0, done.stderr
    pid = re.search(r"started in the background \(pid (\d+)", done.stdout)
    assert pid, done.stdout
    assert run_cli(repo, "status", env=env).stdout.startswith("running (tag bg, pid")
    # The daemon has written everything once it has exited (its last line comes after the journal's).
    try:
        psutil.Process(int(pid.group(1))).wait(timeout=300)
    except psutil.NoSuchProcess:
        pass
    assert any(e["event"] == "run_stopped" for e in journal_events(repo, "bg"))
    assert len(read_results(repo)) == 3
    assert "reached --max-experiments 2" in (repo / ".autoresearch" / "daemon.log").read_text()
    assert_invariants(repo, "bg")
    # resume goes to the background the same way, its settings changed by what it is given
    done = run_cli(repo, "resume", "--tag", "bg", "--max-experiments", "3", "--detach", env=env)
    assert done.returncode == 0, done.stderr
    pid = re.search(r"started in the background \(pid (\d+)", done.stdout)
    assert pid, done.stdout
    try:
        psutil.Process(int(pid.group(1))).wait(timeout=300)
    except psutil.NoSuchProcess:
        pass
    assert len(read_results(repo)) == 4
    assert "reached --max-experiments 3" in (repo / ".autoresearch" / "daemon.log").read_text()
    assert_invariants(repo, "bg")


def test_a_train_py_that_is_not_utf8_does_not_end_the_night(tmp_path: Path) -> None:
    """A Latin-1 comment in train.py (declared, so Python runs it): the patches the daemon files
    keep git's bytes, and the run goes on."""
    repo, env = make_repo(tmp_path)
    source = (repo / "train.py").read_bytes().replace(b"# model width", b"# model width (caf\xe9)")
    (repo / "train.py").write_bytes(b"# -*- coding: latin-1 -*-\n" + source)
    subprocess.run(["git", "commit", "-qam", "a Latin-1 comment"], cwd=repo, check=True)
    done = run_cli(repo, "start", "--tag", "l1", "--agent", "search", "--budget", "2", "--max-experiments", "2",
                   env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert len(read_results(repo)) == 3
    assert_invariants(repo, "l1")
    patches = [(repo / ".autoresearch/runs/l1" / f"{n:04d}" / "diff.patch").read_bytes() for n in (1, 2)]
    assert all(p.startswith(b"diff --git") for p in patches)
