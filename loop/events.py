"""The journal's events: one record type per event, shared by the daemon that writes them and the
fold that reads them back.

On disk an event is one JSON object: `event` (its NAME), `ts` (when it was written), `n` (the
experiment, for all but the run-level events), then its fields. Every field has a default, so a
journal written before a field existed still reads; a field the reader does not know is ignored,
and so is an event it does not know (a newer daemon's journal read by an older one).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from loop.agents.base import Usage


@dataclass(frozen=True, kw_only=True)
class Event:
    NAME: ClassVar[str]
    ts: float | None = None  # set by the journal when it is written

    def payload(self) -> dict[str, Any]:
        """The event's own fields (not ts, not n), as written."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in ("ts", "n")}

    def to_json(self) -> dict[str, Any]:
        head: dict[str, Any] = {"event": self.NAME, "ts": self.ts}
        if isinstance(self, ExperimentEvent):
            head["n"] = self.n
        return head | self.payload()


@dataclass(frozen=True, kw_only=True)
class ExperimentEvent(Event):
    """An event of one experiment (the baseline is experiment 0)."""

    n: int


@dataclass(frozen=True, kw_only=True)
class RunEvent(ExperimentEvent):
    """An event of one run (one training and evaluation) of an experiment."""

    run: int = 0


# --- the run as a whole -------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    NAME = "run_started"
    tag: str = ""
    branch: str = ""
    base_commit: str = ""
    protected: dict[str, str] = field(default_factory=dict)  # path -> sha256
    agent: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] | None = None  # a declared target's description (None: the builtin)
    hardware: dict[str, Any] = field(default_factory=dict)
    floor: float | None = None  # the corpus's entropy floor, where known
    slots: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class RunResumed(Event):
    NAME = "run_resumed"
    tag: str = ""
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RunStopped(Event):
    NAME = "run_stopped"
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class InternalFault(Event):
    """An exception inside the loop: the run stops with one line, the traceback is kept here."""

    NAME = "internal_error"
    error: str = ""
    traceback: str = ""


# --- one experiment, in the order it goes through them ------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Proposing(ExperimentEvent):
    """The agent was asked."""

    NAME = "proposing"
    parent: str | None = None
    attempt: int = 0


@dataclass(frozen=True, kw_only=True)
class AgentUnavailable(ExperimentEvent):
    """The agent is unavailable; backing off."""

    NAME = "agent_waiting"
    error: str = ""
    retry_in: float = 0.0


@dataclass(frozen=True, kw_only=True)
class ProposalFailed(ExperimentEvent):
    """The agent produced nothing usable (no experiment); `conflict`: its commit no longer merges
    onto the new best, and the experiment starts over."""

    NAME = "proposal_failed"
    error: str = ""
    usage: Usage = field(default_factory=Usage)
    conflict: bool = False


@dataclass(frozen=True, kw_only=True)
class Proposed(ExperimentEvent):
    NAME = "proposed"
    parent: str | None = None
    description: str = ""
    hypothesis: str = ""
    usage: Usage = field(default_factory=Usage)
    agent_seconds: float = 0.0
    fix_attempt: int = 0
    combine_of: int | None = None  # a combination of this experiment with the best


@dataclass(frozen=True, kw_only=True)
class Committed(ExperimentEvent):
    NAME = "committed"
    commit: str = ""
    parent: str | None = None
    ref: str = ""
    kind: str = ""  # baseline | agent | combine
    rebased_from: str | None = None  # the commit it was before a 3-way merge onto a new best


@dataclass(frozen=True, kw_only=True)
class Running(RunEvent):
    """A run was handed to the executor."""

    NAME = "running"
    commit: str = ""
    seed: int | None = None


@dataclass(frozen=True, kw_only=True)
class TrainingStarted(RunEvent):
    """The run has a slot: training starts now."""

    NAME = "started"
    slot: str | None = None
    device: str | None = None
    host: str | None = None


@dataclass(frozen=True, kw_only=True)
class Evaluating(RunEvent):
    """Training ended; the slot is free again."""

    NAME = "evaluating"
    train_seconds: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Evaluated(RunEvent):
    """One run's outcome (val_bpb None on a crash, with the reason)."""

    NAME = "evaluated"
    slot: str | None = None
    val_bpb: float | None = None
    scores: Mapping[str, float | None] = field(default_factory=dict)
    reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    peak_vram_mb: float = 0.0
    train_seconds: float | None = None
    eval_seconds: float | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RunLost(RunEvent):
    """The run's worker or node vanished: it runs again, no row."""

    NAME = "lost"
    slot: str | None = None
    why: str = ""


@dataclass(frozen=True, kw_only=True)
class Interrupted(ExperimentEvent):
    """`stop --now` or a kill: not a crash, no row. With `run`: that run only; without: the experiment."""

    NAME = "interrupted"
    run: int | None = None
    phase: str = ""


@dataclass(frozen=True, kw_only=True)
class Confirming(RunEvent):
    """The policy asked for one more run."""

    NAME = "confirming"
    scores: list[float] = field(default_factory=list)
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Settling(RunEvent):
    """A new best's run, up to --best-runs (results wait for its mean)."""

    NAME = "settling"


@dataclass(frozen=True, kw_only=True)
class Growing(RunEvent):
    """The best's run as results pile up against it."""

    NAME = "growing"
    compared: int = 0


@dataclass(frozen=True, kw_only=True)
class Remeasuring(RunEvent):
    """The best's run on hardware it never ran on, before `for_n` is compared there."""

    NAME = "remeasuring"
    hardware: str = ""
    for_n: int | None = None


@dataclass(frozen=True, kw_only=True)
class FixRequested(ExperimentEvent):
    """A simple crash goes back to the agent."""

    NAME = "fix_requested"
    attempt: int = 0
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Decided(ExperimentEvent):
    NAME = "decided"
    status: str = ""  # one of journal.STATUSES
    reason: str = ""
    best_before: float | None = None
    best_after: float | None = None
    tip: str | None = None  # the branch's tip after the decision
    val_bpb: float | None = None  # the mean that decided it
    runs: int = 0  # how many runs decided it
    through: int = 0  # runs numbered below this had finished when it was decided


@dataclass(frozen=True, kw_only=True)
class Recorded(ExperimentEvent):
    """The results.tsv row is written."""

    NAME = "recorded"


@dataclass(frozen=True, kw_only=True)
class HoldoutScored(RunEvent):
    """A kept commit's holdout score (or why it has none); it never decides anything."""

    NAME = "holdout"
    scores: Mapping[str, float | None] = field(default_factory=dict)
    reason: str = ""
    eval_seconds: float | None = None
    timings: dict[str, Any] = field(default_factory=dict)


EVENTS: dict[str, type[Event]] = {cls.NAME: cls for cls in (
    RunStarted, RunResumed, RunStopped, InternalFault, Proposing, AgentUnavailable, ProposalFailed, Proposed,
    Committed, Running, TrainingStarted, Evaluating, Evaluated, RunLost, Interrupted, Confirming, Settling, Growing,
    Remeasuring, FixRequested, Decided, Recorded, HoldoutScored)}


def parse(entry: dict[str, Any]) -> Event | None:
    """The event a journal line holds; None for an event this version does not know."""
    cls = EVENTS.get(entry.get("event", ""))
    if cls is None:
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in entry.items() if k in known}
    if "usage" in values:
        values["usage"] = Usage.from_dict(values["usage"])
    return cls(**values)


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, Usage) else value
