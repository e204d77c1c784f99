"""The agent protocol: what the daemon gives an agent (Context) and what it gets back (Proposal).

An agent implements one method, `propose(context) -> Proposal`. It never runs git or training;
it returns the full text of a new train.py (the builtin experiment), or of the target's editable
files it changed (`Proposal.files`, for a target declared in autoresearch.toml). It may raise:
  - errors.AgentUnavailable: cannot answer now (rate limit, outage); the daemon backs off, retries.
  - errors.AgentFatal: cannot work at all (bad key, unknown model); the daemon stops the run.
  - errors.ProposalFailed: tried and produced nothing usable; costs no experiment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Usage:
    """Tokens and dollars one proposal spent. Zero for agents that do not call a model."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_write_5m_tokens + other.cache_write_5m_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cost_usd + other.cost_usd,
            self.calls + other.calls,
        )

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict | None) -> Usage:
        if not data:
            return cls()
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class HistoryItem:
    """One finished experiment as the agent sees it."""

    number: int
    commit: str  # 7-char hash
    status: str  # keep | discard | crash
    val_bpb: float | None  # None for a crash
    best_before: float | None  # best kept val_bpb when this experiment started
    memory_gb: float
    description: str
    hypothesis: str = ""
    reason: str = ""  # crash reason, e.g. "guard: prepare.py changed" or "over budget"
    diff: str = ""  # unified diff of train.py against its parent (may be empty for old items)
    parent: str = ""  # 7-char hash of the commit it was built on


@dataclass(frozen=True)
class InFlight:
    """An experiment proposed, queued or running while this one is proposed: do not duplicate it."""

    number: int
    state: str  # proposing | queued | running | evaluating
    description: str = ""
    hypothesis: str = ""


@dataclass(frozen=True)
class Context:
    """Everything an agent may know when it proposes the next experiment."""

    repo: Path  # the repository root (read-only to the agent)
    program: str  # program.md: the human's instructions
    train_py: str  # train.py at the current best kept commit
    history: tuple[HistoryItem, ...]  # every experiment of this run, oldest first
    best_val_bpb: float | None
    notes_path: Path  # .autoresearch/runs/TAG/notes.md: the agent's notes across experiments
    run_dir: Path  # .autoresearch/runs/TAG/NNNN/: where the agent may save its transcript
    last_failure: str = ""  # log tail of the previous attempt when it crashed simply (fix attempt)
    fix_of: str = ""  # train.py text that crashed, when this is a fix attempt
    budget_seconds: float = 300.0
    remaining_cost_usd: float | None = None  # None: no cost cap
    in_flight: tuple[InFlight, ...] = ()  # other experiments under way right now
    conflict: str = ""  # set when the agent's last proposal no longer merges onto a new best
    editable: dict[str, str] = field(default_factory=dict)  # a declared target's files, path -> text; {}: train.py
    metric: str = "val_bpb"  # what the history's scores are; lower is better ("-accuracy" for a higher-is-better one)
    best_commit: str = ""  # 7-char hash of the best kept commit, which train_py is


@dataclass(frozen=True)
class Proposal:
    """A complete new train.py (or a custom target's changed files) and why."""

    train_py: str
    description: str  # one line; becomes the commit message and the results.tsv description
    hypothesis: str = ""
    usage: Usage = field(default_factory=Usage)
    files: dict[str, str] = field(default_factory=dict)  # a custom target's changed files: path -> whole new text
    # Handed back to the agent's `accepted(receipt)` once the proposal is journaled (the queue: the
    # file it came from, filed as done only then, so a kill in between loses nothing).
    receipt: str = ""


class Agent(Protocol):
    name: str

    def propose(self, context: Context) -> Proposal: ...
