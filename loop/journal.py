"""The append-only journal of a run, and results.tsv as a view of it.

The journal (`.autoresearch/runs/TAG/journal.jsonl`) is the source of truth: one JSON object per
line, one line per state change, fsync'd before the daemon moves on, so that a kill -9 anywhere
leaves a prefix of the truth on disk. A torn last line (killed mid-write) is ignored on read.

The events, one record type each, are in events.py.

results.tsv is rebuilt from the folded records whenever there is doubt (resume), and appended to
one fsync'd row at a time otherwise, so `tail -f results.tsv` shows each row as it lands.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from loop.agents.base import Usage
from loop.events import (
    Committed,
    Decided,
    Evaluated,
    Evaluating,
    Event,
    ExperimentEvent,
    HoldoutScored,
    Interrupted,
    ProposalFailed,
    Proposed,
    Proposing,
    Recorded,
    RunResumed,
    RunStarted,
    RunStopped,
    parse,
)
from loop.screen import printable

MAX_MEMORY_MB = float(1 << 30)  # a petabyte: no run's peak memory is more

JOURNAL_NAME = "journal.jsonl"
RESULTS_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
STATUSES = ("keep", "discard", "crash")


def state_dir(repo: Path) -> Path:
    return repo / ".autoresearch"


def run_dir(repo: Path, tag: str) -> Path:
    return state_dir(repo) / "runs" / tag


def experiment_dir(repo: Path, tag: str, n: int) -> Path:
    return run_dir(repo, tag) / f"{n:04d}"


def fsync_append(path: Path, text: str) -> None:
    """Append `text` and make it durable before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Journal:
    """Appends events to one run's journal file, durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_torn_tail()

    def append(self, event: Event) -> Event:
        """Write `event`, stamped with the time, durably; the event as it will be read back."""
        line = json.dumps(replace(event, ts=round(time.time(), 3)).to_json(), default=_jsonable)
        fsync_append(self.path, line + "\n")
        written = parse(json.loads(line))  # what a resumed daemon will fold: the live fold must be the same
        assert written is not None
        return written

    def events(self) -> list[Event]:
        return read_events(self.path)

    def _repair_torn_tail(self) -> None:
        # A kill mid-write can leave a last line without its newline; appending after it would
        # glue two events together. Cut it off: its state change never completed.
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        keep = data[: data.rfind(b"\n") + 1]
        with open(self.path, "r+b") as f:
            f.truncate(len(keep))
            f.flush()
            os.fsync(f.fileno())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_events(path: Path) -> list[Event]:
    """All complete events of a journal; a torn last line (a kill mid-write) is ignored."""
    return read_events_checked(path)[0]


@dataclass
class ExperimentRecord:
    """One experiment folded from its events. Fields stay None until the event that sets them."""

    n: int
    phase: str = ""  # name of the last event seen for it
    parent: str | None = None
    commit: str | None = None
    description: str = ""
    hypothesis: str = ""
    status: str | None = None  # keep | discard | crash | interrupted
    reason: str = ""
    val_bpb: float | None = None
    peak_vram_mb: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    fix_attempts: int = 0
    failed_proposals: int = 0
    best_before: float | None = None
    best_after: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    agent_seconds: float = 0.0
    train_seconds: float | None = None
    eval_seconds: float | None = None
    recorded: bool = False
    kind: str = ""  # baseline | agent | combine
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)  # run index -> its fields, as journaled
    decided_order: int | None = None  # results.tsv lists experiments in the order they were decided
    decided_runs: int = 0  # runs whose mean decided it (more than one when confirmed)
    decided_through: int = 0  # runs numbered below this had finished when it was decided
    holdout_scored: bool = False  # a kept commit's holdout score (or why it has none) is in

    def scores(self, split: str = "val") -> list[float]:
        """The split's score of every run that finished with one, in run order."""
        return [score for _, score in sorted(self.scores_by_run(split).items())]

    def scores_by_run(self, split: str = "val") -> dict[int, float]:
        return {run: r["scores"][split] for run, r in self.runs.items()
                if isinstance(r.get("scores"), dict) and r["scores"].get(split) is not None}

    def runs_since_kept(self) -> dict[int, dict[str, Any]]:
        """A kept commit's runs after its decision that have finished, scored or crashed."""
        if self.status != "keep":
            return {}
        return {run: r for run, r in self.runs.items()
                if run >= max(self.decided_through, 1) and r.get("phase") == "evaluated"}

    def crashed_reruns(self) -> list[int]:
        """Those of runs_since_kept that ended without a score: a best that cannot be run again is no
        result to build on, and train.py can tell a later run from the first (its output directory),
        so a crash there may be on purpose, to keep a lucky first score standing."""
        return sorted(run for run, r in self.runs_since_kept().items() if r.get("reason"))

    @property
    def is_experiment(self) -> bool:
        """Whether it got as far as a commit (failed proposals alone are not experiments)."""
        return self.commit is not None

    @property
    def memory_gb(self) -> float:
        return self.peak_vram_mb / 1024 if self.status != "crash" else 0.0

    @property
    def wall_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass
class RunRecord:
    """A whole run folded from its journal (`problems`: garbled lines skipped on the way)."""

    tag: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # the latest run_started/run_resumed fields
    started_at: float | None = None
    stopped_at: float | None = None
    stop_reason: str = ""
    experiments: list[ExperimentRecord] = field(default_factory=list)  # by n, pending ones too
    problems: list[str] = field(default_factory=list)
    by_n: dict[int, ExperimentRecord] = field(default_factory=dict, repr=False)
    decisions: int = 0

    @property
    def decided(self) -> list[ExperimentRecord]:
        """Decided experiments in the order they were decided."""
        done = [e for e in self.experiments if e.status in STATUSES]
        return sorted(done, key=lambda e: (e.decided_order if e.decided_order is not None else -1, e.n))

    @property
    def finished(self) -> list[ExperimentRecord]:
        return [e for e in self.experiments if e.status in STATUSES]

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for e in self.experiments:
            total = total + e.usage
        return total

    @property
    def best(self) -> ExperimentRecord | None:
        """The last kept experiment: each keep is decided against the best before it, so the last one
        is the branch's tip, even where its score is above an earlier keep's (a keep is compared
        with the best's later runs, not with the lucky one that made it the best)."""
        kept = [e for e in self.experiments if e.status == "keep" and e.val_bpb is not None]
        return max(kept, key=lambda e: (e.decided_order if e.decided_order is not None else -1, e.n), default=None)


def fold(events: Iterable[Event]) -> RunRecord:
    """Fold a journal's events into one record per experiment number."""
    run = RunRecord()
    for ev in events:
        apply_event(run, ev)
    return run


def apply_event(run: RunRecord, ev: Event) -> None:
    """Fold one more event into `run`, in place (the daemon keeps its record current this way)."""
    match ev:
        case RunStarted() | RunResumed():
            run.meta.update(ev.payload())
            run.tag = ev.tag or run.tag
            if run.started_at is None:
                run.started_at = ev.ts
            run.stopped_at = None  # a resumed run is running again
        case RunStopped():
            run.stopped_at, run.stop_reason = ev.ts, ev.reason
        case ExperimentEvent():
            rec = run.by_n.get(ev.n)
            if rec is None:
                rec = run.by_n[ev.n] = ExperimentRecord(n=ev.n)
                run.experiments.append(rec)
                if run.experiments[-2:-1] and run.experiments[-2].n > rec.n:
                    run.experiments.sort(key=lambda e: e.n)
            _apply(rec, ev)
            if isinstance(ev, Decided):
                rec.decided_order, run.decisions = run.decisions, run.decisions + 1


# The events that make up one run's own record (ExperimentRecord.runs).
_RUN_PHASES = ("running", "started", "evaluating", "evaluated", "interrupted")


def _apply(rec: ExperimentRecord, ev: ExperimentEvent) -> None:
    rec.phase = ev.NAME
    if rec.started_at is None:
        rec.started_at = ev.ts
    usage = getattr(ev, "usage", None)
    if isinstance(usage, Usage):
        rec.usage = rec.usage + usage
    run = getattr(ev, "run", None)
    if run is not None and ev.NAME in _RUN_PHASES:
        fields = {k: v for k, v in ev.payload().items() if k != "run"}
        rec.runs.setdefault(int(run), {}).update(fields, phase=ev.NAME, **{f"{ev.NAME}_at": ev.ts})
        if rec.status in STATUSES:
            return  # a decided experiment run again elsewhere (the best, remeasured): its decision stands
    match ev:
        case ProposalFailed():
            rec.failed_proposals += 1
            if ev.conflict:  # its commit no longer merges onto the best: the experiment starts over
                rec.commit, rec.runs = None, {}
        case Proposed():
            rec.description, rec.hypothesis = ev.description, ev.hypothesis
            rec.agent_seconds += float(ev.agent_seconds)
            rec.fix_attempts = max(rec.fix_attempts, int(ev.fix_attempt))
        case Committed():
            rec.commit, rec.parent = ev.commit or None, ev.parent or rec.parent
            rec.kind = ev.kind or rec.kind or ("baseline" if rec.n == 0 else "agent")
            rec.runs = {}  # a fix attempt is a new commit: its runs start afresh
        case Proposing():
            rec.parent = ev.parent or rec.parent
        case Evaluating():
            rec.summary = ev.summary or rec.summary
            if ev.train_seconds is not None:
                rec.train_seconds = ev.train_seconds
        case Evaluated():
            rec.val_bpb = ev.val_bpb
            rec.reason = ev.reason or rec.reason
            rec.summary = ev.summary or rec.summary
            memory = float(ev.peak_vram_mb or 0.0)  # the run's own word: a figure past any GPU is none
            rec.peak_vram_mb = memory if 0.0 <= memory < MAX_MEMORY_MB else 0.0
            if ev.train_seconds is not None:
                rec.train_seconds = ev.train_seconds
            if ev.eval_seconds is not None:
                rec.eval_seconds = ev.eval_seconds
        case Decided():
            rec.status = ev.status
            rec.reason = ev.reason or rec.reason
            rec.best_before, rec.best_after = ev.best_before, ev.best_after
            if ev.status == "crash" or ev.val_bpb is not None:  # the mean that decided it (a crash has none)
                rec.val_bpb = ev.val_bpb if ev.status != "crash" else None
            rec.decided_runs = int(ev.runs or 0)
            rec.decided_through = int(ev.through or rec.decided_runs)
        case Recorded():
            rec.recorded, rec.finished_at = True, ev.ts
        case HoldoutScored():
            rec.holdout_scored = True
        case Interrupted(run=None):
            rec.status, rec.finished_at = "interrupted", ev.ts


def load_run(repo: Path, tag: str) -> RunRecord:
    events, problems = read_events_checked(run_dir(repo, tag) / JOURNAL_NAME)
    run = fold(events)
    run.tag, run.problems = run.tag or tag, problems
    return run


def _parse_line(line: str) -> Event | None:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("event"), str):
        raise ValueError("not an event")
    n = entry.get("n", 0)
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError("n is not an experiment number")
    try:
        event = parse(entry)
    except TypeError:  # an experiment's event without its number
        raise ValueError("incomplete") from None
    run = getattr(event, "run", None)
    if run is not None and (not isinstance(run, int) or isinstance(run, bool)):
        raise ValueError("run is not a run number")
    return event


def one_line(text: str) -> str:
    """A description fit for one TSV cell: no tabs, no newlines, no leading/trailing space, and no
    control character a terminal would act on when the file is read there."""
    return printable(" ".join(text.replace("\t", " ").split()))


def results_row(rec: ExperimentRecord) -> str:
    """The results.tsv line for a decided experiment."""
    crashed = rec.status == "crash" or rec.val_bpb is None
    commit = (rec.commit or "0000000")[:7]
    val = 0.0 if crashed else float(rec.val_bpb)  # type: ignore[arg-type]
    mem = 0.0 if crashed else rec.peak_vram_mb / 1024
    description = one_line(rec.description)
    if rec.decided_runs > 1 and rec.kind != "baseline" and not crashed:
        description += f" (mean of {rec.decided_runs})"
    return f"{commit}\t{val:.6f}\t{mem:.1f}\t{rec.status}\t{description}\n"


def results_rows(run: RunRecord) -> Iterator[str]:
    for rec in run.decided:
        yield results_row(rec)


def rebuild_results(path: Path, run: RunRecord) -> None:
    """Rewrite results.tsv from the journal: the header and one row per decided experiment."""
    atomic_write(path, RESULTS_HEADER + "".join(results_rows(run)))


def append_result(path: Path, rec: ExperimentRecord) -> None:
    if not path.exists() or path.stat().st_size == 0:
        atomic_write(path, RESULTS_HEADER)
    fsync_append(path, results_row(rec))


def read_events_checked(path: Path) -> tuple[list[Event], list[str]]:
    """The complete events of a journal, and one line per line that had to be skipped.

    A torn last line (no newline: the daemon was killed mid-write) is normal and not reported.
    Any other line that is not a JSON object with an `event` name (and an integer `n` where the event
    is an experiment's) is skipped and named by its line number, so a damaged journal never goes
    unnoticed. An event name this version does not know is passed over in silence.
    """
    if not path.exists():
        return [], []
    events: list[Event] = []
    problems: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith("\n"):
                break
            try:
                event = _parse_line(line)
            except ValueError:
                problems.append(f"{path.name} line {number}: garbled, skipped: {line.strip()[:60]!r}")
                continue
            if event is not None:
                events.append(event)
    return events, problems


def unreproduced_warning(rec: ExperimentRecord, limit: int) -> str:
    """A kept experiment that crashed when run again after its decision (`limit`: the crashes after
    which a best is run no more)."""
    crashed = rec.crashed_reruns()
    text = (f"warning: kept experiment #{rec.n} crashed on {len(crashed)} of its {len(rec.runs_since_kept())} "
            f"runs since it was kept")
    if len(crashed) >= limit:
        text += (f"; it is run no more (a train.py can crash its later runs on purpose, to keep a lucky score "
                 f"standing), and results are held to its scored runs ({len(rec.scores())})")
    return text + f" (`autoresearch show {rec.n}`)"


def unreproduced_warnings(experiments: list[ExperimentRecord], limit: int) -> list[str]:
    """One warning per kept experiment that crashed when run again (status and the report)."""
    return [unreproduced_warning(e, limit) for e in experiments if e.crashed_reruns()]
