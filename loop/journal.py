"""The append-only journal of a run, and results.tsv as a view of it.

The journal (`.autoresearch/runs/TAG/journal.jsonl`) is the source of truth: one JSON object per
line, one line per state change, fsync'd before the daemon moves on, so that a kill -9 anywhere
leaves a prefix of the truth on disk. A torn last line (killed mid-write) is ignored on read.

Event names, in the order one experiment goes through them (every event but the run-level ones
carries `n`, the experiment number; the baseline is experiment 0):

  run_started   tag, branch, base_commit, protected {path: sha256}, agent, config, hardware
  run_resumed   (same fields as run_started may be refreshed)
  proposing     n, parent                         the agent was asked
  agent_waiting n, error, retry_in                the agent is unavailable; backing off
  proposal_failed n, error, usage                 the agent produced nothing usable (no experiment)
  proposed      n, description, hypothesis, usage, agent_seconds, fix_attempt
  committed     n, commit, parent, ref, kind (baseline|agent|combine), rebased_from (when rebased)
  running       n, run, commit, seed                a run was handed to the executor
  started       n, run, slot, device, host          it has a slot (training starts now)
  evaluating    n, run, train_seconds, summary      training ended; the slot is free again
  evaluated     n, run, val_bpb, scores, reason, summary, peak_vram_mb, train_seconds, eval_seconds,
                timings, hardware, slot             one run's outcome (val_bpb None on crash)
  confirming    n, run, reason                      the policy asked for one more run
  settling      n, run                              a new best's run up to --best-runs (results wait)
  growing       n, run, compared                    the best's run as results pile up against it
  remeasuring   n, run, hardware, for_n             the best's run on hardware it never ran on
  fix_requested n, attempt, reason                  a simple crash goes back to the agent
  decided       n, status (keep|discard|crash), reason, best_before, best_after, tip, val_bpb
                (the mean that decided), runs (how many decided it), through (runs numbered below it
                had finished)
  recorded      n                                 results.tsv row written
  holdout       n, run, scores, reason, eval_seconds, timings   a kept commit's holdout (never decides)
  lost          n, run, slot, why                 the run's worker or node vanished: it runs again, no row
  interrupted   n, phase                          `stop --now` or a kill: not a crash, no row
  run_stopped   reason

results.tsv is rebuilt from the folded records whenever there is doubt (resume), and appended to
one fsync'd row at a time otherwise, so `tail -f results.tsv` shows each row as it lands.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from loop.agents.base import Usage

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

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"event": event, "ts": round(time.time(), 3), **fields}
        fsync_append(self.path, json.dumps(entry, default=_jsonable) + "\n")
        return entry

    def events(self) -> list[dict[str, Any]]:
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
    if isinstance(value, Usage):
        return value.to_dict()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_events(path: Path) -> list[dict[str, Any]]:
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


def fold(events: list[dict[str, Any]]) -> RunRecord:
    """Fold a journal's events into one record per experiment number."""
    run = RunRecord()
    for ev in events:
        apply_event(run, ev)
    return run


def apply_event(run: RunRecord, ev: dict[str, Any]) -> None:
    """Fold one more event into `run`, in place (the daemon keeps its record current this way)."""
    name = ev.get("event", "")
    ts = ev.get("ts")
    if name in ("run_started", "run_resumed"):
        run.meta.update({k: v for k, v in ev.items() if k not in ("event", "ts")})
        run.tag = ev.get("tag", run.tag)
        if run.started_at is None:
            run.started_at = ts
        run.stopped_at = None  # a resumed run is running again
        return
    if name == "run_stopped":
        run.stopped_at, run.stop_reason = ts, ev.get("reason", "")
        return
    if "n" not in ev:
        return
    rec = run.by_n.get(ev["n"])
    if rec is None:
        rec = run.by_n[ev["n"]] = ExperimentRecord(n=ev["n"])
        run.experiments.append(rec)
        if run.experiments[-2:-1] and run.experiments[-2].n > rec.n:
            run.experiments.sort(key=lambda e: e.n)
    _apply(rec, name, ev)
    if name == "decided":
        rec.decided_order, run.decisions = run.decisions, run.decisions + 1


def _apply(rec: ExperimentRecord, name: str, ev: dict[str, Any]) -> None:
    rec.phase = name
    ts = ev.get("ts")
    if rec.started_at is None:
        rec.started_at = ts
    if "usage" in ev:
        rec.usage = rec.usage + Usage.from_dict(ev["usage"])
    if "run" in ev and name in ("running", "started", "evaluating", "evaluated", "interrupted"):
        fields = {k: v for k, v in ev.items() if k not in ("event", "n", "run")}
        rec.runs.setdefault(int(ev["run"]), {}).update(fields, phase=name, **{f"{name}_at": ts})
        if rec.status in STATUSES:
            return  # a decided experiment run again elsewhere (the best, remeasured): its decision stands
    if name == "proposal_failed":
        rec.failed_proposals += 1
        if ev.get("conflict"):  # its commit no longer merges onto the best: the experiment starts over
            rec.commit, rec.runs = None, {}
    elif name == "proposed":
        rec.description = ev.get("description", rec.description)
        rec.hypothesis = ev.get("hypothesis", rec.hypothesis)
        rec.agent_seconds += float(ev.get("agent_seconds", 0.0))
        rec.fix_attempts = max(rec.fix_attempts, int(ev.get("fix_attempt", 0)))
    elif name == "committed":
        rec.commit, rec.parent = ev.get("commit"), ev.get("parent", rec.parent)
        rec.kind = ev.get("kind", rec.kind or ("baseline" if rec.n == 0 else "agent"))
        rec.runs = {}  # a fix attempt is a new commit: its runs start afresh
    elif name == "proposing":
        rec.parent = ev.get("parent", rec.parent)
    elif name == "evaluating":
        rec.summary = ev.get("summary") or rec.summary
        rec.train_seconds = ev.get("train_seconds", rec.train_seconds)
    elif name == "evaluated":
        rec.val_bpb = ev.get("val_bpb")
        rec.reason = ev.get("reason", "") or rec.reason
        rec.summary = ev.get("summary") or rec.summary
        rec.peak_vram_mb = float(ev.get("peak_vram_mb") or 0.0)
        rec.train_seconds = ev.get("train_seconds", rec.train_seconds)
        rec.eval_seconds = ev.get("eval_seconds", rec.eval_seconds)
    elif name == "decided":
        rec.status = ev.get("status")
        rec.reason = ev.get("reason", "") or rec.reason
        rec.best_before, rec.best_after = ev.get("best_before"), ev.get("best_after")
        if "val_bpb" in ev:
            rec.val_bpb = ev["val_bpb"]
        rec.decided_runs = int(ev.get("runs") or 0)
        rec.decided_through = int(ev.get("through") or rec.decided_runs)
        if rec.status == "crash":
            rec.val_bpb = None
    elif name == "recorded":
        rec.recorded, rec.finished_at = True, ts
    elif name == "holdout":
        rec.holdout_scored = True
    elif name == "interrupted" and "run" not in ev:
        rec.status, rec.finished_at = "interrupted", ts


def load_run(repo: Path, tag: str) -> RunRecord:
    events, problems = read_events_checked(run_dir(repo, tag) / JOURNAL_NAME)
    run = fold(events)
    run.tag, run.problems = run.tag or tag, problems
    return run


def one_line(text: str) -> str:
    """A description fit for one TSV cell: no tabs, no newlines, no leading/trailing space."""
    return " ".join(text.replace("\t", " ").split())


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


def read_events_checked(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The complete events of a journal, and one line per line that had to be skipped.

    A torn last line (no newline: the daemon was killed mid-write) is normal and not reported.
    Any other line that is not a JSON object with an `event` name (and an integer `n` when it has
    one) is skipped and named by its line number, so a damaged journal never goes unnoticed.
    """
    if not path.exists():
        return [], []
    events: list[dict[str, Any]] = []
    problems: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith("\n"):
                break
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            n = event.get("n", 0) if isinstance(event, dict) else None
            if not isinstance(event, dict) or not isinstance(event.get("event"), str) \
                    or not isinstance(n, int) or isinstance(n, bool):
                problems.append(f"{path.name} line {number}: garbled, skipped: {line.strip()[:60]!r}")
                continue
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
