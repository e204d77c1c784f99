"""Targets declared in autoresearch.toml: the declaration, a Rust crate run by the daemon, and two
targets of one repository side by side.

The Rust example (examples/linreg-rust) builds offline with std only; the other targets are shell
scripts, so what is tested is the daemon's handling of a target, not a compiler's speed.
"""
from __future__ import annotations

import difflib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from loop import target as targets
from loop.errors import UsageError
from loop.journal import fold
from tests.daemon_kit import MAIN, git, journal_events, run_cli, start_background

EXAMPLE = MAIN / "examples" / "linreg-rust"
IGNORED = "/.autoresearch/\n/target/\n/results*.tsv\n"


def new_repo(tmp_path: Path, files: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A real git repository holding files, committed on main; and the CLI's environment."""
    repo = tmp_path / "repo"
    for path, text in {**files, ".gitignore": IGNORED}.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "target repo")
    env = dict(__import__("os").environ)
    env.pop("ANTHROPIC_API_KEY", None)
    env["PYTHONPATH"] = str(MAIN)
    return repo, env


def queue_diff(queue: Path, name: str, repo: Path, path: str, old: str, new: str, description: str) -> None:
    """A unified diff of one file of the repository, as a person would drop it into the queue."""
    before = (repo / path).read_text()
    assert old in before, old
    after = before.replace(old, new, 1)
    diff = "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"a/{path}", f"b/{path}", n=0))
    queue.mkdir(parents=True, exist_ok=True)
    (queue / f"{name}.txt").write_text(description + "\n")
    (queue / f".{name}.tmp").write_text(diff)
    (queue / f".{name}.tmp").rename(queue / f"{name}.diff")


def rows(repo: Path, name: str, metric: str) -> list[list[str]]:
    lines = (repo / name).read_text().splitlines()
    assert lines[0] == f"commit\t{metric}\tmemory_gb\tstatus\tdescription"
    return [line.split("\t") for line in lines[1:]]


def reasons(repo: Path, tag: str) -> dict[str, str]:
    return {e.description: e.reason for e in fold(journal_events(repo, tag)).decided}
