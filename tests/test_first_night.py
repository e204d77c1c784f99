"""A new user's first night: refusals that leave nothing behind, a failed baseline that says what
to do, proposals that change nothing, a truthful status, help, journal damage, disk over a night."""
from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

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

from loop.journal import JOURNAL_NAME, run_dir

FAST = ("--budget", "2")


def _branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/").splitlines()


def test_bad_numbers_are_refused_before_anything_runs(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    for flags in (("--budget", "-5"), ("--timeout", "0"), ("--max-experiments", "0"), ("--budget", "30", "--timeout", "10")):
        done = run_cli(repo, "start", "--tag", "x", *flags, env=env)
        assert done.returncode == 2, (flags, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert _branches(repo) == ["main"]


def test_refused_start_leaves_nothing_behind(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    done = run_cli(repo, "start", "--tag", "t", "--agent", "nonexistent", env=env)
    assert done.returncode == 2 and "unknown agent" in done.stderr
    env_no_key = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    done = run_cli(repo, "start", "--tag", "t", "--agent", "anthropic", env=env_no_key)
    assert done.returncode == 7 and "ANTHROPIC_API_KEY" in done.stderr, done.stderr
    assert _branches(repo) == ["main"] and not run_dir(repo, "t").exists()
    done = run_cli(repo, "start", "--tag", "t", "--max-experiments", "1", *FAST, env=env)
    assert done.returncode == 0, done.stderr


def test_unchanged_proposal_is_a_failed_proposal_not_a_crash(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    queue = tmp_path / "queue"
    src = (repo / "train.py").read_text()
    queue_proposal(queue, "a", src, "nothing changed")
    queue_proposal(queue, "b", src.replace("LR = 0.02", "LR = 0.01"), "lower LR")
    done = run_cli(repo, "start", "--tag", "u", "--agent", "queue", "--queue", str(queue), "--max-experiments", "1",
                   *FAST, env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr + done.stdout, done.stderr
    failed = [e for e in journal_events(repo, "u") if e["event"] == "proposal_failed"]
    assert [e["error"] for e in failed] == ["the proposal changes nothing"]
    assert [r[4] for r in read_results(repo)] == ["baseline", "lower LR"]
    assert_invariants(repo, "u")


def test_crashed_baseline_exits_non_zero_and_frees_the_tag(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\nraise RuntimeError('broken on purpose')\n")
    git(repo, "commit", "-qam", "break train.py")
    done = run_cli(repo, "start", "--tag", "b", *FAST, env=env)
    assert done.returncode == 3, done.stderr
    assert "baseline crashed" in done.stderr and "broken on purpose" in done.stderr and "start --tag b" in done.stderr
    line = len((repo / "train.py").read_text().rstrip("\n").splitlines())
    assert f"broken on purpose (train.py line {line})" in done.stderr  # where, as a traceback says it
    assert "autoresearch/b" not in _branches(repo) and git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert not (repo / "results.tsv").exists()  # its crashed row went with its logs
    failed = next((repo / ".autoresearch" / "runs").glob("b.failed-*"))
    assert (failed / "results.tsv").read_text().count("\tcrash\t") == 1 and (failed / "0000").is_dir()
    told = run_cli(repo, "status", env=env)
    assert told.returncode == 0 and "baseline crashed" in told.stdout and "start --tag b" in told.stdout, told
    git(repo, "revert", "--no-edit", "HEAD")
    done = run_cli(repo, "start", "--tag", "b", "--max-experiments", "1", *FAST, env=env)
    assert done.returncode == 0, done.stderr  # the same tag works once the cause is fixed


def test_stop_now_during_the_baseline_says_resume_works(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path, sleep=5.0)
    daemon = start_background(repo, "start", "--tag", "sb", *FAST, env=env)
    wait_for_event(repo, "sb", "started", n=0)
    assert run_cli(repo, "stop", "--now", env=env).returncode == 0
    assert daemon.wait(timeout=60) == 0
    out = (tmp_path / "daemon.out").read_text()
    assert "resume --tag sb" in out and "crash" not in out
    done = run_cli(repo, "resume", "--tag", "sb", "--max-experiments", "1", env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_results(repo)[0][3] == "keep"


def test_ctrl_c_says_what_it_does_and_twice_stops_now(tmp_path: Path) -> None:
    """In the foreground the first Ctrl-C is answered at once (the experiments in flight finish
    first, which can take minutes), the second stops now, and the last line says which it was."""
    repo, env = make_repo(tmp_path, sleep=5.0)
    daemon = start_background(repo, "start", "--tag", "cc", *FAST, env=env)
    wait_for_event(repo, "cc", "started", n=0)
    out = tmp_path / "daemon.out"
    daemon.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while "stop requested: the experiments in flight finish first" not in out.read_text():
        assert time.monotonic() < deadline and daemon.poll() is None, out.read_text()
        time.sleep(0.1)
    daemon.send_signal(signal.SIGINT)
    assert daemon.wait(timeout=60) == 0
    said = out.read_text()
    assert "stopping now: the runs in flight are interrupted" in said and "resume --tag cc" in said
    assert next(e for e in journal_events(repo, "cc") if e["event"] == "run_stopped")["reason"] == "stopped now"


def test_a_baseline_that_learned_nothing_is_said_and_proves_nothing_about_the_harness(tmp_path: Path) -> None:
    """On a machine too busy for its budget the untouched model scores chance (8 bits a byte) on
    every seed. That is said, live and in status; and its identical repeats do not make the harness
    look deterministic, where one lucky run would then be kept on its own."""
    repo, env = make_repo(tmp_path)
    (repo / "train.py").write_text((repo / "train.py").read_text() + '\nforced_metric = "8.000000"\n')
    git(repo, "commit", "-qam", "a model that learns nothing in its budget")
    queue = tmp_path / "queue"
    queue_proposal(queue, "a", (repo / "train.py").read_text().replace('"8.000000"', '"7.500000"'), "lucky")
    done = run_cli(repo, "start", "--tag", "ln", "--agent", "queue", "--queue", str(queue), *FAST,
                   "--max-experiments", "1", env=env)
    assert done.returncode == 0, done.stderr
    warning = "warning: the baseline scored 8.000000, what a model that learned nothing scores"
    assert warning in done.stdout, done.stdout
    told = run_cli(repo, "status", "--tag", "ln", env=env)
    assert warning in told.stdout and "longer --budget" in told.stdout, told.stdout
    lucky = folded(journal_events(repo, "ln")).by_n[1]
    assert "repeats are identical" not in lucky.reason, lucky.reason


def test_one_slow_last_step_is_not_over_budget_but_training_past_it_is(tmp_path: Path) -> None:
    """On a busy machine the step under way when the budget runs out can take many times the mean:
    the overshoot allowed is the run's slowest step, so that an honest run is not a crash; a run
    whose time is past the budget by more than its slowest step still is."""
    repo, env = make_repo(tmp_path)
    base = (repo / "train.py").read_text()
    summary = 'print(f"training_seconds: {min(time.time() - t0, TIME_BUDGET):.1f}")'
    assert summary in base
    queue = tmp_path / "queue"
    slow_end = base.replace(summary, 'print("training_seconds: 3.0")').replace(
        'print("num_steps: 2")', 'print("num_steps: 10")\n    print("slowest_step_seconds: 1.20")')
    first = slow_end.replace("LR = 0.02", "LR = 0.01")
    queue_proposal(queue, "a", first, "a slow last step")
    done = run_cli(repo, "start", "--tag", "ob", "--agent", "queue", "--queue", str(queue), *FAST,
                   "--max-experiments", "1", env=env)
    assert done.returncode == 0, done.stderr
    # Made on the first, now the best.
    queue_proposal(queue, "b", first.replace("slowest_step_seconds: 1.20", "slowest_step_seconds: 0.30")
                   .replace("WIDTH = 8", "WIDTH = 16"), "past its budget")
    done = run_cli(repo, "resume", "--tag", "ob", "--max-experiments", "2", env=env)
    assert done.returncode == 0, done.stderr
    by_name = {e.description: e for e in folded(journal_events(repo, "ob")).experiments}
    assert by_name["a slow last step"].status == "keep", by_name["a slow last step"].reason
    assert by_name["past its budget"].status == "crash"
    assert by_name["past its budget"].reason == "over budget: reported 3.0s > 2.3s"


def test_status_tells_the_truth(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    queue = tmp_path / "queue"
    slow = (repo / "train.py").read_text().replace(
        'print("step 1 | loss 2.5000", flush=True)',
        'print("step 1 | loss 2.5000", flush=True)\n    print("step 2 | loss 1.2345", flush=True)\n    time.sleep(30)')
    queue_proposal(queue, "slow", slow, "slow one")
    daemon = start_background(repo, "start", "--tag", "st", "--agent", "queue", "--queue", str(queue),
                              "--budget", "40", "--baseline-runs", "1", "--best-runs", "1", env=env)
    wait_for_event(repo, "st", "started", n=1, timeout=120)
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline and "loss 1.2345" not in text:
        text = run_cli(repo, "status", env=env).stdout
        time.sleep(0.3)
    assert "loss 1.2345" in text, text  # the latest loss, not the first
    assert "experiment 1 training for" in text and "(budget 40s, plus start-up)" in text
    training = re.compile(r"experiment 1 training for (\d+)s \(budget 40s, plus start-up\), loss [0-9.]+, busy (\d+)%")
    while time.monotonic() < deadline and not ((m := training.search(text)) and int(m.group(1)) >= 6):
        text = run_cli(repo, "status", env=env).stdout
        time.sleep(0.3)
    assert m and int(m.group(2)) >= 50, text  # the run under way counts: the slot has done little else
    assert "experiments per hour: too early to say" in text
    while time.monotonic() < deadline and "waiting on an empty queue" not in text:
        text = run_cli(repo, "status", env=env).stdout  # the next proposal is asked ahead, of an empty queue
        time.sleep(0.3)
    assert f"agent proposing: experiment(s) 2, waiting on an empty queue: put NAME.py or NAME.diff in {queue}" in text, text
    run_cli(repo, "stop", env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "stopping" not in text:
        text = run_cli(repo, "status", env=env).stdout
    assert "stopping" in text, text  # a pending graceful stop is shown
    piped = subprocess.run(f"{sys.executable} -m loop.cli status | head -1", shell=True, cwd=repo, env=env,
                           capture_output=True, text=True)
    assert "Traceback" not in piped.stderr and piped.stdout.startswith("running")
    subprocess.run([sys.executable, "-m", "loop.cli", "stop", "--now"], cwd=repo, env=env, capture_output=True)
    daemon.wait(timeout=120)
    other = run_cli(repo, "status", "--tag", "st", env=env)
    assert other.returncode == 0 and "not running (tag st)" in other.stdout


def test_help_shows_defaults_and_version(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    help_text = run_cli(repo, "start", "--help", env=env).stdout
    assert "(default: 300.0)" in help_text and "--keep-checkpoints" in help_text and "--gpus" in help_text
    options = re.split(r"\n  (?=-)", help_text)
    assert "(default: None)" not in help_text and all(o.count("default") <= 1 for o in options), help_text
    resume_help = " ".join(run_cli(repo, "resume", "--help", env=env).stdout.split())
    assert "keeps the settings it was started with" in resume_help and "(default: None)" not in resume_help
    version = run_cli(repo, "--version", env=env)
    assert version.returncode == 0 and version.stdout.startswith("autoresearch ")


def test_garbled_journal_line_is_reported(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    assert run_cli(repo, "start", "--tag", "g", "--max-experiments", "2", *FAST, env=env).returncode == 0
    journal = run_dir(repo, "g") / JOURNAL_NAME
    lines = journal.read_text().splitlines(keepends=True)
    lines.insert(5, '{"event": "decided", "n": \n')
    journal.write_text("".join(lines))
    status = run_cli(repo, "status", env=env)
    assert "line 6" in status.stdout and "skipped" in status.stdout, status.stdout
    resumed = run_cli(repo, "resume", "--tag", "g", "--max-experiments", "3", env=env)
    assert resumed.returncode == 0 and "line 6" in resumed.stdout, resumed.stdout + resumed.stderr


def test_checkpoints_of_discarded_experiments_are_not_kept(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    queue = tmp_path / "queue"
    src = (repo / "train.py").read_text()
    queue_proposal(queue, "a", src.replace("LR = 0.02", "LR = 0.01"), "better")
    queue_proposal(queue, "b", src.replace("WIDTH = 8", "WIDTH = 400"), "worse")  # merges onto the kept LR
    done = run_cli(repo, "start", "--tag", "c", "--agent", "queue", "--queue", str(queue), "--max-experiments", "2",
                   *FAST, env=env)
    assert done.returncode == 0, done.stderr
    statuses = {e.n: e.status for e in folded(journal_events(repo, "c")).experiments}
    assert statuses == {0: "keep", 1: "keep", 2: "discard"}
    ckpt = lambda n: run_dir(repo, "c") / f"{n:04d}" / "ckpt" / "model.pt"  # noqa: E731
    assert ckpt(0).exists() and ckpt(1).exists() and not ckpt(2).exists()
    assert (run_dir(repo, "c") / "0002" / "train.log").exists()  # the logs stay
    config = next(e for e in journal_events(repo, "c") if e["event"] == "run_started")["config"]
    assert config["keep_checkpoints"] == "kept"


def test_report_compare_includes_the_tag_given(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    for tag in ("one", "two"):
        done = run_cli(repo, "start", "--tag", tag, "--max-experiments", "1", *FAST, env=env)
        assert done.returncode == 0, done.stderr
        git(repo, "checkout", "-q", "main")
    report = run_cli(repo, "report", "--tag", "one", "--compare", "two", env=env)
    assert report.returncode == 0, report.stderr
    rows = [line.split("\t")[0] for line in report.stdout.splitlines() if "\t" in line]
    assert "one" in rows and "two" in rows, report.stdout


def test_status_shows_a_holdout_being_scored(tmp_path: Path) -> None:
    """A kept commit's holdout is scored on its own (on CPU it takes a slot): status says so, rather
    than showing nothing under way."""
    repo, env = make_repo(tmp_path, eval_sleep=4.0, holdout=True)
    daemon = start_background(repo, "start", "--tag", "ho", "--budget", "2", "--baseline-runs", "1",
                              "--max-experiments", "1", env=env)
    deadline, text = time.monotonic() + 120, ""
    while time.monotonic() < deadline and "scoring the holdout" not in text and daemon.poll() is None:
        text = run_cli(repo, "status", env=env).stdout
        time.sleep(0.3)
    assert "experiment 0: scoring the holdout for" in text, text
    assert daemon.wait(timeout=120) == 0
    assert [e for e in journal_events(repo, "ho") if e["event"] == "holdout" and e["n"] == 0]


def test_a_holdout_cut_short_by_a_kill_is_scored_on_resume(tmp_path: Path) -> None:
    """Every kept commit gets its holdout score: one the daemon was killed while scoring is scored
    when the run resumes, and one already scored is not scored again."""
    repo, env = make_repo(tmp_path, eval_sleep=4.0, holdout=True)
    daemon = start_background(repo, "start", "--tag", "hk", "--budget", "2", "--baseline-runs", "1",
                              "--max-experiments", "1", env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and daemon.poll() is None:
        if any(e["event"] == "decided" and e["n"] == 0 for e in journal_events(repo, "hk")):
            break
        time.sleep(0.05)
    daemon.kill()
    daemon.wait(timeout=30)
    assert not [e for e in journal_events(repo, "hk") if e["event"] == "holdout"]  # killed while scoring it
    done = run_cli(repo, "resume", "--tag", "hk", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    events = journal_events(repo, "hk")
    kept = {e["n"] for e in events if e["event"] == "decided" and e["status"] == "keep"}
    holdouts = [e["n"] for e in events if e["event"] == "holdout"]
    assert 0 in kept and sorted(holdouts) == sorted(kept), (kept, holdouts)
    assert all(e["scores"]["holdout"] is not None for e in events if e["event"] == "holdout")


def test_check_after_a_run_that_kept_nothing_says_so(tmp_path: Path) -> None:
    """The quick start's run on a project's own commit: with nothing kept, the run's branch is its
    base commit, whose own change (the project's, not the run's) is no experiment to judge."""
    repo, env = make_repo(tmp_path)
    (repo / "program.md").write_text((repo / "program.md").read_text() + "\nmore words\n")
    git(repo, "commit", "-qam", "the project's own change to a protected file")
    base = (repo / "train.py").read_text()
    queue = tmp_path / "queue"
    queue_proposal(queue, "01", base.replace("\nif __name__", "\nraise ValueError('no')\n\nif __name__", 1), "broken")
    done = run_cli(repo, "start", "--tag", "k", "--agent", "queue", "--queue", str(queue), "--budget", "1",
                   "--max-experiments", "1", "--fix-attempts", "0", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    checked = run_cli(repo, "check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "is where run k started: nothing of the run to check yet" in checked.stdout
    assert run_cli(repo, "check", "autoresearch/k", env=env).returncode == 0
    assert run_cli(repo, "check", "HEAD~0", env=env).returncode == 0
    # A second run from the same commit: each branch is its own run's, the base commit both runs'.
    git(repo, "checkout", "-q", "main")
    queue_proposal(queue, "02", base.replace("\nif __name__", "\nraise ValueError('no')\n\nif __name__", 1), "broken")
    done = run_cli(repo, "start", "--tag", "j", "--agent", "queue", "--queue", str(queue), "--budget", "1",
                   "--max-experiments", "1", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "is where run j started" in run_cli(repo, "check", env=env).stdout
    assert "is where run k started" in run_cli(repo, "check", "autoresearch/k", env=env).stdout
    git(repo, "checkout", "-q", "main")
    assert "is where runs j, k started" in run_cli(repo, "check", env=env).stdout


def test_check_tells_a_train_py_that_does_not_parse(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\ndef broken(:\n")
    git(repo, "commit", "-qam", "a typo")
    checked = run_cli(repo, "check", env=env)
    assert checked.returncode == 0 and "passes the lint" not in checked.stdout
    assert "does not parse (line " in checked.stdout and "as a run it would crash" in checked.stdout, checked.stdout


def test_an_untracked_virtualenv_in_the_checkout_is_no_finding(tmp_path: Path) -> None:
    """`python -m venv venv` in the repository, as many do: the baseline is no crash for it."""
    repo, env = make_repo(tmp_path)
    site = repo / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "foo.py").write_text("x = 1\n")
    done = run_cli(repo, "start", "--tag", "v", "--budget", "1", "--max-experiments", "1", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert [row[3] for row in read_results(repo)][0] == "keep"
    assert_invariants(repo, "v")


def test_the_live_line_is_redrawn_in_place_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the live line is redrawn by a carriage return; the escaping of what runs print
    (which shows their control characters as \\x0d) must not catch the display's own."""
    repo, env = make_repo(tmp_path)
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "loop.cli", "run", "--budget", "1"], cwd=repo, env=env,
                            stdin=subprocess.DEVNULL, stdout=sub, stderr=sub)
    os.close(sub)
    out, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([main], [], [], 1.0)[0]:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal's other end closed
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0, out
    text = out.decode()
    assert "\r#0000 training" in text and "\\x0d" not in text, text
