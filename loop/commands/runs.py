"""`autoresearch runs`: every run of the repository on one line each, newest last.

Reads only the journals under `.autoresearch/runs/` and the daemon's lock, so it is safe to call
while a daemon works; a damaged journal line is named on stderr rather than silently dropped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from loop.journal import JOURNAL_NAME, state_dir
from loop.lock import read_holder
from loop.report import RunView, read_run, warn

DESCRIPTION_CHARS = 48  # the best experiment's description is cut to this much to keep one line


def lock_path(repo: Path) -> Path:
    return state_dir(repo) / "daemon.lock"


@dataclass
class RunLine:
    """What one line of `runs` says about a run."""

    tag: str
    state: str  # running | stopped | killed (no stop recorded and no daemon holds the lock)
    started_at: float | None
    experiments: int
    keep: int
    discard: int
    crash: int
    best: float | None
    best_description: str

    def text(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started_at)) if self.started_at else "-"
        best = f"{self.best:.6f}" if self.best is not None else "-"
        desc = self.best_description
        desc = desc if len(desc) <= DESCRIPTION_CHARS else desc[: DESCRIPTION_CHARS - 1] + "…"
        return (f"{self.tag:<16} {self.state:<8} {started:<16} {self.experiments:>5} {self.keep:>5} {self.discard:>7} "
                f"{self.crash:>5}  {best:<9} {desc}")


HEADER = (f"{'tag':<16} {'state':<8} {'started':<16} {'exps':>5} {'keep':>5} {'discard':>7} {'crash':>5}  "
          f"{'best':<9} description")


def run_line(view: RunView, running_tag: str | None) -> RunLine:
    run = view.run
    done = [e for e in run.finished if e.n > 0]  # besides the baseline, as status counts them
    best = run.best
    if view.tag == running_tag:
        state = "running"
    else:
        state = "stopped" if run.stopped_at is not None else "killed"
    return RunLine(tag=view.tag, state=state, started_at=run.started_at, experiments=len(done),
                   keep=sum(e.status == "keep" for e in done), discard=sum(e.status == "discard" for e in done),
                   crash=sum(e.status == "crash" for e in done), best=best.val_bpb if best else None,
                   best_description=" ".join(best.description.split()) if best else "")


def list_runs(repo: Path) -> list[RunLine]:
    """Every run with a journal, oldest first (a run that never started sorts first)."""
    holder = read_holder(lock_path(repo))
    running_tag = holder.get("tag") if holder else None
    lines = []
    for journal in sorted((state_dir(repo) / "runs").glob(f"*/{JOURNAL_NAME}")):
        view = read_run(repo, journal.parent.name)
        warn(view.problems, view.tag)
        lines.append(run_line(view, running_tag))
    return sorted(lines, key=lambda line: (line.started_at or 0.0, line.tag))


def runs_command(repo: Path) -> int:
    lines = list_runs(repo)
    if not lines:
        print(f"no runs yet in {state_dir(repo) / 'runs'}: start one with `autoresearch start --tag NAME`")
        return 0
    print(HEADER)
    for line in lines:
        print(line.text())
    return 0
