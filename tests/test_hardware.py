"""Like for like: a result is compared only with the best's score on the same hardware, and a run
resumed on other hardware measures the best there first."""
from __future__ import annotations

from pathlib import Path

from daemon_kit import assert_invariants, journal_events, make_repo, read_results, run_cli

from loop.executor import HARDWARE_LABEL_ENV


def test_resume_on_other_hardware_remeasures_the_best_first(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    # --best-runs 1: no settling runs, which would measure the best on the new hardware as well
    first = run_cli(repo, "start", "--tag", "hw", "--budget", "2", "--max-experiments", "1", "--best-runs", "1",
                    env={**env, HARDWARE_LABEL_ENV: "box-a"})
    assert first.returncode == 0, first.stderr
    assert not [e for e in journal_events(repo, "hw") if e["event"] == "remeasuring"]
    second = run_cli(repo, "resume", "--tag", "hw", "--max-experiments", "3", env={**env, HARDWARE_LABEL_ENV: "box-b"})
    assert second.returncode == 0, second.stderr
    events = journal_events(repo, "hw")
    remeasured = [e for e in events if e["event"] == "remeasuring"]
    assert len(remeasured) == 1 and remeasured[0]["hardware"] == "box-b"
    best_n = remeasured[0]["n"]
    runs_b = [e for e in events if e["event"] == "evaluated" and e["n"] == best_n
              and e["hardware"].get("label") == "box-b"]
    assert len(runs_b) == 1  # the best, once, on the new hardware
    first_b = min(i for i, e in enumerate(events) if e["event"] == "decided" and e["n"] > 1)
    assert events.index(runs_b[0]) < first_b  # ... before any result there was judged
    assert len(read_results(repo)) == 4
    assert_invariants(repo, "hw")
