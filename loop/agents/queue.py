"""The queue agent: proposals that a person or another tool drops into a folder.

Taken in name order: `NAME.py` is a whole new train.py, `NAME.diff` a unified diff against the
current train.py; the description is the first line of `NAME.txt` if present, else NAME. A used
proposal (and its .txt) moves to `DIR/done/`. An empty queue waits for the next file.
For a target declared in autoresearch.toml (many editable files, any language) a proposal is a
`NAME.diff` against its editable files; files it names that are not editable are read from the
repository, so that the guard, not the queue, refuses such a change.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from loop import gitops
from loop.agents.base import Context, Proposal
from loop.errors import AgentFatal, ProposalFailed

POLL_SECONDS = 0.5


class QueueAgent:
    name = "queue"
    concurrent = False  # two takers could race for the same file; the queue is a person's pace anyway

    def __init__(self, queue_dir: Path | None = None, should_stop: Callable[[], bool] | None = None) -> None:
        if queue_dir is None:
            raise AgentFatal("the queue agent needs --queue DIR: the folder to take proposals from")
        self.dir = Path(queue_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.should_stop = should_stop or (lambda: False)

    def check(self) -> None:
        """The folder exists (made at construction) and can be read."""
        try:
            next(self.dir.iterdir(), None)
        except OSError as e:
            raise AgentFatal(f"queue: cannot read {self.dir} ({e.strerror}): "
                             "give a folder you can read with --queue") from None

    def propose(self, context: Context) -> Proposal:
        while True:
            entries = sorted(p for p in self.dir.iterdir() if p.suffix in (".py", ".diff") and p.is_file())
            if entries:
                return self._take(entries[0], context)
            if self.should_stop():
                raise ProposalFailed("queue: stopped while waiting for a proposal")
            time.sleep(POLL_SECONDS)

    def _take(self, entry: Path, context: Context) -> Proposal:
        note = entry.with_suffix(".txt")
        description = entry.stem
        if note.exists():
            lines = note.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            description = lines[0] if lines else description
        done = self.dir / "done"
        done.mkdir(exist_ok=True)
        try:
            if context.editable:
                files = apply_target_diff(context, entry)
                return Proposal(train_py="", description=description, files=files)
            if entry.suffix == ".py":
                text = entry.read_text(encoding="utf-8", errors="replace")
            else:
                text = apply_diff(context.train_py, entry.read_text(encoding="utf-8", errors="replace"))
        finally:
            for f in (entry, note):
                if f.exists():
                    shutil.move(str(f), done / f.name)
        return Proposal(train_py=text, description=description)


def apply_target_diff(context: Context, entry: Path) -> dict[str, str]:
    """A unified diff of the target's files, applied with `git apply`; returns the files it changed."""
    if entry.suffix != ".diff":
        raise ProposalFailed(f"queue: {entry.name}: this target takes NAME.diff proposals (a unified diff of "
                             f"{', '.join(sorted(context.editable))})")
    diff = entry.read_text(encoding="utf-8", errors="replace")
    named = {line[6:].strip() for line in diff.splitlines() if line.startswith("+++ b/")}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "files"
        scratch.mkdir()
        before = dict(context.editable)
        for path in named - set(before):
            source = context.repo / path
            before[path] = source.read_text(encoding="utf-8", errors="replace") if source.is_file() else ""
        for path, text in before.items():
            (scratch / path).parent.mkdir(parents=True, exist_ok=True)
            (scratch / path).write_text(text, encoding="utf-8")
        patch = Path(tmp) / "change.diff"
        patch.write_text(diff, encoding="utf-8")
        reason = gitops.apply_patch(scratch, patch, "--unidiff-zero", "--recount", "-p1")
        if reason:
            raise ProposalFailed(f"queue: {entry.name} does not apply to the target's files: {reason}")
        after = {p: (scratch / p).read_text(encoding="utf-8") for p in before if (scratch / p).is_file()}
    return {p: text for p, text in after.items() if text != before[p]}


def apply_diff(train_py: str, diff: str) -> str:
    """Apply a unified diff of train.py with `git apply` in a scratch folder."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "train.py"
        target.write_text(train_py, encoding="utf-8")
        patch = Path(tmp) / "change.diff"
        patch.write_text(diff, encoding="utf-8")
        reason = gitops.apply_patch(Path(tmp), patch, "--unidiff-zero", "--recount", "-p1")
        if reason:
            reason = gitops.apply_patch(Path(tmp), patch, "--recount", "-p0")
        if reason:
            raise ProposalFailed(f"queue: diff does not apply to train.py: {reason}")
        return target.read_text(encoding="utf-8")
