"""Each refusal of `start` is one clear line and a non-zero exit, and changes nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon_kit import git, make_repo, run_cli, start_background, wait_for_event


def refusal(result: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert result.returncode == code, result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines


def test_not_a_git_repo(tmp_path: Path) -> None:
    _, env = make_repo(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    refusal(run_cli(plain, "start", "--tag", "x", env=env), 3, "not a git repository")


def test_dirty_tree(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\n# edit\n")
    refusal(run_cli(repo, "start", "--tag", "x", env=env), 3, "uncommitted changes (train.py)")
    assert git(repo, "branch", "--list", "autoresearch/x") == ""


def test_branch_exists(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    git(repo, "branch", "autoresearch/x")
    refusal(run_cli(repo, "start", "--tag", "x", env=env), 3, "already exists")


def test_data_not_prepared(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    env["AUTORESEARCH_CACHE"] = str(tmp_path / "empty")
    refusal(run_cli(repo, "start", "--tag", "x", env=env), 3, "not prepared")


def test_val_checksum(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    (repo / "val.txt").write_text("tampered\n")
    git(repo, "commit", "-qam", "tamper")
    refusal(run_cli(repo, "start", "--tag", "x", env=env), 3, "fails its checksum")


def test_another_daemon_runs(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    queue = tmp_path / "queue"
    queue.mkdir()
    daemon = start_background(repo, "start", "--tag", "a", "--agent", "queue", "--queue", str(queue), "--budget", "1", env=env)
    try:
        wait_for_event(repo, "a", "proposing", n=1)
        refusal(run_cli(repo, "start", "--tag", "b", env=env), 4, "another autoresearch daemon")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def test_bad_flags(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    refusal(run_cli(repo, "start", "--tag", "bad tag", env=env), 2, "--tag")
    for tag in ("a..b", "x.lock", "x."):  # letters, digits and dots, but no branch name git takes
        refusal(run_cli(repo, "start", "--tag", tag, env=env), 2, f"--tag {tag!r}: git branch names cannot")
    refusal(run_cli(repo, "start", "--tag", "x", "--agent", "nope", env=env), 2, "unknown agent")
    for thing in ("collections:OrderedDict", "os:path", "json:JSONDecodeError"):  # loadable, but no agent
        refusal(run_cli(repo, "start", "--tag", "x", "--agent", thing, env=env), 2, f"--agent {thing}: ")
    refusal(run_cli(repo, "start", "--tag", "x", "--agent", "fractions:Fraction", env=env), 2, "not an agent class")
    refusal(run_cli(repo, "stop", env=env), 5, "no autoresearch daemon is running")
    refusal(run_cli(repo, "resume", "--tag", "never", env=env), 3, "no run tagged never")
    for ray_only in (("--screen-on", "A10"), ("--confirm-on", "H100"), ("--fetch-checkpoints",)):
        refusal(run_cli(repo, "start", "--tag", "x", *ray_only, env=env), 2, f"{ray_only[0]} only apply to runs on a Ray")
    mistyped = run_cli(repo, "start", "--tag", "x", "--bugdet", "5", env=env)  # told with start's own usage
    assert mistyped.returncode == 2 and "autoresearch start: error: unrecognized arguments: --bugdet 5" in mistyped.stderr
    assert "usage: autoresearch start" in mistyped.stderr
    refusal(run_cli(repo, "start", "--tag", "x", "--budget", "inf", env=env), 2, "--budget inf: must be a positive, finite")
    refusal(run_cli(repo, "start", "--tag", "x", "--max-hours", "nan", env=env), 2, "--max-hours nan: give a number")
    refusal(run_cli(repo, "start", "--tag", "x", "--agent", "queue", "--queue", str(tmp_path / "typo"), env=env), 2,
            "no such folder: make it")
    assert not (tmp_path / "typo").exists()
    assert not [b for b in git(repo, "branch", "--list").split() if "autoresearch" in b]  # refused before anything


def test_the_views_work_from_a_subfolder_and_say_so_outside_a_repository(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    assert run_cli(repo, "start", "--tag", "w", "--budget", "1", "--max-experiments", "1", env=env).returncode == 0
    sub = repo / "deeper"
    sub.mkdir()
    for command in (("runs",), ("show", "0"), ("report",), ("status",)):
        done = run_cli(sub, *command, env=env)
        assert done.returncode == 0 and "no run" not in done.stdout + done.stderr, (command, done.stdout, done.stderr)
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    for command in (("runs",), ("show", "0"), ("report",)):
        refusal(run_cli(outside, *command, env=env), 3, "is not a git repository")


def test_slots_that_cannot_be_had_leave_nothing_behind(tmp_path: Path) -> None:
    """GPUs that are not here, a malformed --gpus, a Ray head that does not answer: one line, and
    no branch, no checkout, no run folder, no last tag (so the same start works once fixed)."""
    repo, env = make_repo(tmp_path)
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, whatever machine runs the tests
    refusal(run_cli(repo, "start", "--tag", "g", "--gpus", "3", env=env), 2, "--gpus 3: no GPU is visible here")
    refusal(run_cli(repo, "start", "--tag", "g", "--gpus", "abc", env=env), 2, "--gpus abc: give all, a count N")
    refused = run_cli(repo, "start", "--tag", "g", "--ray", "127.0.0.1:9", env=env, timeout=120)
    refusal(refused, 3, "--ray 127.0.0.1:9: nothing answers at 127.0.0.1:9")
    assert git(repo, "branch", "--show-current") == "main"
    assert not [b for b in git(repo, "branch", "--list").split() if "autoresearch" in b]
    state = repo / ".autoresearch"
    assert not (state / "runs" / "g").exists() and not (state / "last_tag").exists()
    assert run_cli(repo, "start", "--tag", "g", "--budget", "1", "--max-experiments", "1", env=env).returncode == 0
    bad = subprocess.run([sys.executable, "-m", "loop.cli", "start"], cwd=repo, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--tag" in bad.stderr
