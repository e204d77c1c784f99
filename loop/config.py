"""The run's settings and their defaults, in one place.

`Config` is what `start` records in the journal and `resume` reads back, so a resumed run needs no
flags. The command line builds it (cli.py takes its defaults from here), and nothing else in the
daemon writes a default of its own.
"""
from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from loop.errors import UsageError

KEEP_CHECKPOINTS = ("all", "kept", "none")
CONFIRM_MODES = ("auto", "never", "always")
BEST_RUNS = 2  # runs a new best gets before results meet it (--best-runs; more follow: Policy.best_runs_wanted)
BEST_CRASHES = 2  # the best's later runs that may crash before it is run no more (and flagged)
RATE_AFTER_S = 600.0  # experiments per hour is shown (status, report) once the run has this much history ...
RATE_AFTER_EXPERIMENTS = 5  # ... or this many decided experiments after the baseline


@dataclass(frozen=True)
class Config:
    tag: str
    agent: str
    budget: float = 300.0  # training seconds per run
    timeout: float = 600.0  # hard wall-clock limit on a training process
    min_delta: float = 0.0  # keep only improvements larger than this
    max_experiments: int | None = None  # the baseline not counted
    max_hours: float | None = None
    max_cost: float | None = None  # USD of agent spend
    fix_attempts: int = 2  # chances the agent gets to fix a simple crash (no row)
    queue: str | None = None  # the queue agent's folder
    model: str | None = None  # the LLM agents' model
    gpus: str = "all"  # all | N | 0,2,5: which GPUs get a slot
    slots: int | None = None  # CPU slots (machines without GPUs, tests); None: one
    lookahead: int | None = None  # proposals asked ahead of free slots; None: one per slot
    keep_checkpoints: str = "kept"  # all | kept | none: checkpoints left on disk after a decision
    keep_z: float = 2.0  # standard errors of the difference a keep must clear
    confirm: str = "auto"  # auto | never | always: rerun grey-zone results with a fresh seed
    baseline_runs: int | None = None  # None: 3 with spare slots at start, else 2
    best_runs: int | None = None  # runs a new best gets before it is compared with; None: BEST_RUNS, 1 with confirm never
    ray: str | None = None  # a Ray cluster's address ("auto": the one this machine is in); None: local slots
    screen_on: str | None = None  # with Ray: hardware label first runs go to
    confirm_on: str | None = None  # with Ray: hardware label confirmation runs go to
    fetch_checkpoints: bool = False  # with Ray: bring every checkpoint back (default: it stays on its node)
    target: str | None = None  # the target's TOML file, relative to the repository; None: autoresearch.toml or builtin
    # The secret the runs' seeds are derived from: a new one for every night, kept in the journal
    # (which no run can read); "" derives them from the tag alone, the same draws every time.
    seed_key: str = field(default_factory=lambda: secrets.token_hex(16))

    def __post_init__(self) -> None:
        """Bad numbers are found at start, not after a baseline has spent its budget."""
        positive = {"budget": self.budget, "timeout": self.timeout}
        for name, value in positive.items():
            if not 0 < value < math.inf:
                raise UsageError(f"--{name} {value:g}: must be a positive, finite number of seconds")
        if self.timeout < self.budget:
            raise UsageError(f"--timeout {self.timeout:g} is shorter than --budget {self.budget:g}: "
                             "the hard limit must leave room for the whole budget")
        for name in ("max_hours", "max_cost", "min_delta", "keep_z"):
            if (value := getattr(self, name)) is not None and math.isnan(value):
                raise UsageError(f"--{name.replace('_', '-')} nan: give a number")
        for name in ("max_experiments", "max_hours", "max_cost", "slots", "baseline_runs", "best_runs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"--{name.replace('_', '-')} {value}: must be positive")
        for name in ("min_delta", "fix_attempts", "keep_z"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must not be negative")
        if self.queue is not None and not Path(self.queue).is_dir():
            raise UsageError(f"--queue {self.queue}: no such folder: make it and put proposals there (NAME.py, a "
                             "whole train.py, or NAME.diff; taken in name order)")
        if self.lookahead is not None and self.lookahead < 0:
            raise UsageError(f"--lookahead {self.lookahead}: must not be negative")
        if self.keep_checkpoints not in KEEP_CHECKPOINTS:
            raise UsageError(f"--keep-checkpoints {self.keep_checkpoints}: choose one of {', '.join(KEEP_CHECKPOINTS)}")
        if self.confirm not in CONFIRM_MODES:
            raise UsageError(f"--confirm {self.confirm}: choose one of {', '.join(CONFIRM_MODES)}")
        if self.gpus != "all" and not re.fullmatch(r"\d+(,\d+)*", self.gpus.replace(" ", "")):
            raise UsageError(f"--gpus {self.gpus}: give all, a count N, or GPU indices such as 0,2,5")
        if self.ray is not None and (local := [f for f, v in (("--slots", self.slots), ("--gpus", self.gpus != "all")) if v]):
            raise UsageError(f"{' and '.join(local)} choose this machine's slots; on a Ray cluster a slot is a GPU, or "
                             "on a cluster without GPUs a node's CPUs: leave them out with --ray")
        if self.ray is None:
            ray_only = {"screen-on": self.screen_on, "confirm-on": self.confirm_on,
                        "fetch-checkpoints": self.fetch_checkpoints}
            if given := [f"--{name}" for name, value in ray_only.items() if value]:
                raise UsageError(f"{' and '.join(given)} only apply to runs on a Ray cluster: add --ray ADDRESS, or "
                                 "leave them out")

    @classmethod
    def from_saved(cls, saved: dict[str, Any], overrides: dict[str, Any]) -> Config:
        """The config a run was started with, fields it did not know at its default, plus overrides."""
        known = {f.name for f in fields(cls)}
        merged = {k: v for k, v in saved.items() if k in known}
        merged.update({k: v for k, v in overrides.items() if v is not None and k in known})
        return cls(**merged)


def default(name: str) -> Any:
    """The default of one Config field, for the command line's help and arguments."""
    return next(f.default for f in fields(Config) if f.name == name)
