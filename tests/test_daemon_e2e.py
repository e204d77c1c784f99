"""End to end through the real CLI: start with the search agent, results.tsv, refs, journal."""
from __future__ import annotations

from pathlib import Path

from daemon_kit import assert_invariants, journal_events, make_repo, read_results, run_cli


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
