"""`runs` lists a repository's runs; `show` opens one experiment: on hand-made journals and folders."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_kit import run_cli
from test_report import CHECKOUT, KNOWN, T0, journal_events, write_events, write_journal

from loop.commands.runs import runs_command
from loop.commands.show import LOG_TAIL_LINES, show_command
from loop.errors import SetupError, UsageError
from loop.journal import experiment_dir, run_dir, state_dir


def started(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def hold_lock(repo: Path, tag: str) -> subprocess.Popen:
    """A separate process that holds the repository's daemon lock, as a running daemon does."""
    code = ("import sys; from pathlib import Path; from loop.lock import RepoLock; "
            f"RepoLock(Path({str(state_dir(repo) / 'daemon.lock')!r})).acquire({tag!r}); print('held', flush=True); "
            "sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=CHECKOUT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_runs_lists_every_run_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_journal(tmp_path, "first", KNOWN)
    later = journal_events("second", KNOWN[:3], stopped=False)
    write_events(tmp_path, "second", [{**e, "ts": e["ts"] + 86400} for e in later])
    write_journal(tmp_path, "third", KNOWN[:2], stopped=False)  # killed: no stop, no daemon
    third = state_dir(tmp_path) / "runs" / "third" / "journal.jsonl"
    third.write_text(third.read_text().replace(third.read_text().splitlines()[0], "{broken", 1))
    holder = hold_lock(tmp_path, "second")
    try:
        assert runs_command(tmp_path) == 0
    finally:
        holder.communicate("")
    out, err = capsys.readouterr()
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["tag", "state", "started", "exps"]
    by_tag = {line.split()[0]: line for line in lines}
    assert list(by_tag) == ["third", "first", "second"]  # a run without its run_started sorts first, then by start
    first = by_tag["first"].split()
    assert first[1] == "stopped" and " ".join(first[2:4]) == started(T0)
    assert first[4:9] == ["7", "2", "2", "3", "0.900000"] and by_tag["first"].endswith("muon for embeddings")
    second = by_tag["second"].split()
    assert second[1] == "running" and " ".join(second[2:4]) == started(T0 + 86400)
    assert second[4:9] == ["2", "1", "1", "0", "0.950000"]
    assert by_tag["third"].split()[1] == "killed"
    assert "run third: journal.jsonl line 1: garbled, skipped" in err
    # Once the daemon is gone, the run no longer reads as running.
    runs_command(tmp_path)
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("second")] == ["killed"]


def test_runs_with_no_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert runs_command(tmp_path) == 0
    assert capsys.readouterr().out.startswith("no runs yet")


def test_show_one_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = journal_events("night", KNOWN)
    for ev in events:
        if ev.get("n") == 5 and ev["event"] == "proposed":
            ev.update(hypothesis="Muon suits embedding matrices too", agent_seconds=42.0)
        if ev.get("n") == 5 and ev["event"] == "evaluated":
            ev.update(eval_seconds=12.0)
        if ev.get("n") == 5 and ev["event"] == "decided":
            ev.update(best_before=0.95, reason="better by 0.05")
    write_events(tmp_path, "night", events)
    write_journal(tmp_path, "older", KNOWN[:2])
    (state_dir(tmp_path) / "last_tag").write_text("night\n")
    folder = experiment_dir(tmp_path, "night", 5)
    folder.mkdir(parents=True)
    (folder / "diff.patch").write_text("--- a/train.py\n+++ b/train.py\n-OPT = 'adamw'\n+OPT = 'muon'\n")
    (folder / "train.log").write_text("".join(f"step {i}\n" for i in range(50)))
    assert show_command(tmp_path, 5, None) == 0
    out = capsys.readouterr().out
    decided = next(e for e in events if e.get("n") == 5 and e["event"] == "decided")
    recorded = next(e for e in events if e.get("n") == 5 and e["event"] == "recorded")
    first = next(e for e in events if e.get("n") == 5)
    assert "experiment 5 of run night: keep" in out and "description: muon for embeddings" in out
    assert "hypothesis: Muon suits embedding matrices too" in out and "reason: better by 0.05" in out
    assert f"val_bpb: {KNOWN[5][1]:.6f}; best before: 0.950000 ({KNOWN[5][1] - 0.95:+.6f})" in out
    assert (f"times: agent 42s, train {KNOWN[5][6]:.0f}s, eval 12s, wall {recorded['ts'] - first['ts']:.0f}s") in out
    assert decided["status"] == "keep"
    assert "+OPT = 'muon'" in out
    assert f"step {49}" in out and f"step {50 - LOG_TAIL_LINES}\n" in out and f"step {49 - LOG_TAIL_LINES}\n" not in out
    assert "--- eval-val.log: none" in out  # the builtin scorer's log, which it does not have
    experiment_dir(tmp_path, "older", 0).mkdir(parents=True)
    (experiment_dir(tmp_path, "older", 0) / "diff.patch").write_text("")  # the baseline changes nothing
    assert show_command(tmp_path, 0, "older") == 0
    out = capsys.readouterr().out
    assert "experiment 0 of run older: keep" in out and "diff.patch: empty" in out


def test_show_refusals(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="no run found"):
        show_command(tmp_path, 0, None)
    write_journal(tmp_path, "night", KNOWN)
    with pytest.raises(UsageError) as missing:
        show_command(tmp_path, len(KNOWN), None)  # no last_tag: the run started last
    message = str(missing.value)
    assert "\n" not in message and f"no experiment {len(KNOWN)}" in message and f"0 to {len(KNOWN) - 1}" in message
    assert missing.value.exit_code != 0
    with pytest.raises(SetupError, match="no run tagged other"):
        show_command(tmp_path, 0, "other")


def test_show_repeats_and_skipped_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = journal_events("seeds", KNOWN[:3])
    at = next(i for i, e in enumerate(events) if e["event"] == "evaluated" and e["n"] == 2)
    ts = events[at]["ts"]
    events[at].update(run=0, scores={"val": 0.95, "holdout": 0.97})
    second = {**events[at], "run": 1, "val_bpb": 0.97, "scores": {"holdout": 0.99}}
    events[at:at + 1] = [  # where each run ran is journaled as it starts, as the daemon does
        {"event": "running", "ts": ts, "n": 2, "run": 0, "seed": 1},
        {"event": "started", "ts": ts, "n": 2, "run": 0, "slot": "gpu0", "device": "cuda:0", "host": "node-1"},
        events[at],
        {"event": "running", "ts": ts, "n": 2, "run": 1, "seed": 2},
        {"event": "started", "ts": ts, "n": 2, "run": 1, "slot": "gpu1", "device": "cuda:1", "host": "node-1"},
        second]
    path = write_events(tmp_path, "seeds", events)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3] + ["not json\n"] + lines[3:]))
    assert show_command(tmp_path, 2, "seeds") == 0
    out, err = capsys.readouterr()
    assert "val_bpb: 0.960000" in out and "holdout: 0.980000" in out  # the mean of the two runs
    assert "run 1: val 0.950000, holdout 0.970000; seed 1 slot gpu0 device cuda:0 host node-1" in out
    assert "run 2: val 0.970000, holdout 0.990000; seed 2 slot gpu1 device cuda:1 host node-1" in out
    assert "journal.jsonl line 4: garbled, skipped" in err


def test_show_tails_the_logs_an_experiment_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The builtin target's folder: train.log, the scorer's eval-val.log (tailed), and the model processes'
    and the holdout's logs, which are named but not printed (the model's have seen the validation text)."""
    write_journal(tmp_path, "night", KNOWN)
    folder = experiment_dir(tmp_path, "night", 2)
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("step 1\nstep 2\n")
    (folder / "eval-val.log").write_text("".join(f"scored window {i}\n" for i in range(30)) + "val_bpb: 0.95\n")
    for name in ("eval-main.log", "eval-reference.log", "eval-holdout.log"):
        (folder / name).write_text(f"SECRET-ish output of {name}\n")
    assert show_command(tmp_path, 2, "night") == 0
    out = capsys.readouterr().out
    assert "step 2" in out and "val_bpb: 0.95" in out and "scored window 29" in out
    assert f"{folder / 'eval-val.log'} (last {LOG_TAIL_LINES} of 31 lines)" in out
    assert "eval.log: none" not in out and "SECRET-ish" not in out
    assert "other logs in" in out and "eval-holdout.log, eval-main.log, eval-reference.log" in out
    # A folder without an evaluator's log says so once, under the scorer's name.
    (folder / "eval-val.log").unlink()
    show_command(tmp_path, 2, "night")
    assert "--- eval-val.log: none" in capsys.readouterr().out


def test_show_a_custom_targets_diff_comes_from_git(tmp_path: Path) -> None:
    """A declared target's commit changes its own files, not train.py: show gives that diff even when
    diff.patch holds nothing; its evaluator's eval.log is tailed. The report of a run of a few seconds
    does not claim an hourly rate, and says where it was written."""
    from test_target import SHORT, TWO_TARGETS, new_repo, queue_diff

    repo, env = new_repo(tmp_path, TWO_TARGETS)
    queue_diff(tmp_path / "qb", "1", repo, "beta/params.sh", "Y=2", "Y=5", "y to 5")
    done = run_cli(repo, "start", "--tag", "b1", "--target", "beta.toml", "--queue", str(tmp_path / "qb"), *SHORT,
                   env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = run_cli(repo, "show", "1", "--tag", "b1", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "-Y=2" in shown.stdout and "+Y=5" in shown.stdout, shown.stdout
    assert "diff.patch: empty" not in shown.stdout and "accuracy: 96" in shown.stdout
    assert "+Y=5" in (experiment_dir(repo, "b1", 1) / "diff.patch").read_text()  # what the agent's history shows
    assert f"{experiment_dir(repo, 'b1', 1) / 'eval.log'}" in shown.stdout
    baseline = run_cli(repo, "show", "0", "--tag", "b1", env=env)
    assert baseline.returncode == 0 and "the baseline changes nothing" in baseline.stdout, baseline.stdout
    report = run_cli(repo, "report", "--tag", "b1", env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "experiments per hour: too early to say (1 in " in report.stdout, report.stdout
    assert re.search(r"#1 \w{7} 96\.000000 \+21\.000000  y to 5", report.stdout), report.stdout  # as measured
    assert report.stdout.rstrip().splitlines()[-1].startswith(f"report written to {run_dir(repo, 'b1') / 'report'}")
