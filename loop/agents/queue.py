"""The queue agent: proposals that a person or another tool drops into a folder.

Taken in name order: `NAME.py` is a whole new train.py, `NAME.diff` a unified diff against the
current train.py; the description is the first line of `NAME.txt` if present, else NAME. A used
proposal (and its .txt) waits in `DIR/taken/` until the daemon has journaled it, then moves to
`DIR/done/`; what a killed daemon took but never journaled goes back into the queue at the next
start. An empty queue waits for the next file. A crash gets no fix attempt: the next file is the
next experiment, whatever it was meant as.
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
TAKEN = "taken"  # proposals handed out, not yet journaled


class QueueAgent:
    name = "queue"
    concurrent = False  # two takers could race for the same file; the queue is a person's pace anyway
    fixes = False  # the next file is the next experiment, not a fix of the one that crashed

    def __init__(self, queue_dir: Path | None = None, should_stop: Callable[[], bool] | None = None) -> None:
        if queue_dir is None:
            raise AgentFatal("the queue agent needs --queue DIR: the folder to take proposals from")
        self.dir = Path(queue_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.should_stop = should_stop or (lambda: False)
        self.empty = False  # the last look found nothing to take: the run waits on a person
        self._put_back_taken()

    def waiting_on(self) -> str:
        """What the run waits on, for `status`: a file in an empty queue."""
        return f"an empty queue: put NAME.py or NAME.diff in {self.dir}" if self.empty else ""

    def _put_back_taken(self) -> None:
        """Proposals taken by a daemon that was killed before it journaled them go back in the queue."""
        taken = self.dir / TAKEN
        for f in sorted(taken.iterdir()) if taken.is_dir() else []:
            if f.is_file() and not (self.dir / f.name).exists():
                try:
                    f.rename(self.dir / f.name)
                except OSError:
                    pass  # left where it is: a person can move it back

    def accepted(self, receipt: str) -> None:
        """The daemon journaled the proposal taken from `receipt`: file it, and its note, as done."""
        done = self.dir / "done"
        for name in (receipt, str(Path(receipt).with_suffix(".txt"))):
            f = self.dir / TAKEN / name
            if f.is_file():
                done.mkdir(exist_ok=True)
                f.replace(done / name)

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
            for entry in entries:
                try:
                    proposal = self._take(entry, context)
                    self.empty = False
                    return proposal
                except FileNotFoundError:
                    continue  # taken away between the listing and the reading: the next one
                except OSError as e:
                    raise ProposalFailed(f"queue: cannot take {entry.name}: {e.strerror or e}") from None
            if self.should_stop():
                raise ProposalFailed("queue: stopped while waiting for a proposal")
            self.empty = True
            time.sleep(POLL_SECONDS)

    def _take(self, entry: Path, context: Context) -> Proposal:
        text = _read(entry)  # first: an entry gone by now is simply not there
        note = entry.with_suffix(".txt")
        description = entry.stem
        if note.is_file():
            lines = _read(note).strip().splitlines()
            description = lines[0] if lines else description
        files: dict[str, str] = {}
        try:
            if context.editable:
                files, text = apply_target_diff(context, entry.name, text), ""
            elif entry.suffix == ".diff":
                text = apply_diff(context.train_py, text)
        except ProposalFailed:
            self._file(entry, note, "done")  # used up: its failure is journaled
            raise
        self._file(entry, note, TAKEN)
        return Proposal(train_py=text, description=description, files=files, receipt=entry.name)

    def _file(self, entry: Path, note: Path, folder: str) -> None:
        (self.dir / folder).mkdir(exist_ok=True)
        for f in (entry, note):
            if f.is_file():
                shutil.move(str(f), self.dir / folder / f.name)


def _read(path: Path) -> str:
    """A file's text as it is: its line endings kept (CRLF stays CRLF), bytes that are not UTF-8 replaced."""
    return path.read_bytes().decode("utf-8", errors="replace")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def apply_target_diff(context: Context, name: str, diff: str) -> dict[str, str]:
    """A unified diff of the target's files, applied with `git apply`; returns the files it changed.
    Every path it names must lie inside the repository: the diff is applied to copies in a scratch
    folder, and a path that leads out of it would be read or written there."""
    if not name.endswith(".diff"):
        raise ProposalFailed(f"queue: {name}: this target takes NAME.diff proposals (a unified diff of "
                             f"{', '.join(sorted(context.editable))})")
    named = {line[6:].strip() for line in diff.splitlines() if line.startswith("+++ b/")}
    repo = context.repo.resolve()
    for path in sorted(named - set(context.editable)):
        source = (context.repo / path)
        if Path(path).is_absolute() or ".." in Path(path).parts or not source.resolve().is_relative_to(repo):
            raise ProposalFailed(f"queue: {name} names {path}, outside the repository")
        if source.exists() and not source.is_file():
            raise ProposalFailed(f"queue: {name} names {path}, which is not a file")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "files"
        scratch.mkdir()
        before = dict(context.editable)
        for path in named - set(before):
            source = context.repo / path
            before[path] = _read(source) if source.is_file() else ""
        for path, text in before.items():
            _write(scratch / path, text)
        patch = Path(tmp) / "change.diff"
        _write(patch, diff)
        reason = gitops.apply_patch(scratch, patch, "--unidiff-zero", "--recount", "-p1")
        if reason:
            raise ProposalFailed(f"queue: {name} does not apply to the target's files: {reason}")
        after = {p: _read(scratch / p) for p in before if (scratch / p).is_file()}
    return {p: text for p, text in after.items() if text != before[p]}


def apply_diff(train_py: str, diff: str) -> str:
    """Apply a unified diff of train.py (with or without the a/ and b/ prefixes) with `git apply` in
    a scratch folder; a diff that touches any other file is refused whole."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "files"
        _write(scratch / "train.py", train_py)
        patch = Path(tmp) / "change.diff"
        _write(patch, diff)
        reason = gitops.apply_patch(scratch, patch, "--unidiff-zero", "--recount", "-p1")
        if reason and not gitops.apply_patch(scratch, patch, "--recount", "-p0"):
            reason = ""
        if reason:
            raise ProposalFailed(f"queue: diff does not apply to train.py: {reason}")
        others = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*") if p.name != "train.py")
        if others or not (scratch / "train.py").is_file():
            touched = ", ".join(others) or "deletes train.py"
            raise ProposalFailed(f"queue: the diff changes more than train.py ({touched}): a proposal edits train.py only")
        return _read(scratch / "train.py")
