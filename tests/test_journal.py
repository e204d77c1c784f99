"""The journal folds into experiments and results.tsv exactly as DESIGN.md specifies."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from daemon_kit import folded

from loop.agents.base import Usage
from loop.events import (
    EVENTS,
    Committed,
    Decided,
    Evaluated,
    ExperimentEvent,
    Proposed,
    Proposing,
    Recorded,
    RunStarted,
)
from loop.journal import (
    RESULTS_HEADER,
    ExperimentRecord,
    Journal,
    fold,
    read_events,
    read_events_checked,
    rebuild_results,
    unreproduced_warning,
)


def test_fold_and_results(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.jsonl")
    j.append(RunStarted(tag="t", branch="autoresearch/t"))
    for n, (bpb, status) in enumerate([(1.5, "keep"), (1.6, "discard"), (None, "crash")]):
        j.append(Proposing(n=n, parent="p" * 40))
        j.append(Proposed(n=n, description=f"exp\t{n}\nmore", usage=Usage(input_tokens=10, cost_usd=0.5)))
        j.append(Committed(n=n, commit=f"{n}" * 40, parent="p" * 40))
        j.append(Evaluated(n=n, val_bpb=bpb, peak_vram_mb=2048.0, reason="" if bpb else "exit code 1"))
        j.append(Decided(n=n, status=status))
        j.append(Recorded(n=n))
    run = fold(j.events())
    assert [e.status for e in run.finished] == ["keep", "discard", "crash"]
    assert run.best is not None and run.best.n == 0
    assert run.total_usage.input_tokens == 30 and abs(run.total_usage.cost_usd - 1.5) < 1e-9
    rebuild_results(tmp_path / "results.tsv", run)
    lines = (tmp_path / "results.tsv").read_text().splitlines(keepends=True)
    assert lines[0] == RESULTS_HEADER
    assert lines[1] == "0000000\t1.500000\t2.0\tkeep\texp 0 more\n"
    assert lines[3] == "2222222\t0.000000\t0.0\tcrash\texp 2 more\n"


def test_torn_tail_is_dropped_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.append(Proposing(n=0))
    with open(path, "a") as f:
        f.write('{"event": "propo')  # killed mid-write
    assert [e.NAME for e in read_events(path)] == ["proposing"]
    Journal(path).append(Proposed(n=0))
    assert [e.NAME for e in read_events(path)] == ["proposing", "proposed"]


def test_the_best_is_the_last_keep_even_above_an_earlier_keeps_score() -> None:
    """A keep is compared with the best's later runs, not with the lucky run that made it the best,
    so a later keep can score above an earlier one: the best is still the later one (the branch's
    tip), or every next run would look like it moved the branch."""
    events: list[dict] = []
    for n, commit, kind, mean in ((0, "a", "baseline", 1.0), (1, "b", "agent", 0.90), (2, "c", "agent", 0.91)):
        events.append({"event": "committed", "n": n, "commit": commit * 40, "parent": "a" * 40, "kind": kind})
        events.append({"event": "decided", "n": n, "status": "keep", "val_bpb": mean, "runs": 1})
    assert folded(events).best.n == 2  # type: ignore[union-attr]
    events.append({"event": "decided", "n": 3, "status": "discard", "val_bpb": 0.5, "runs": 1})
    assert folded(events).best.n == 2  # type: ignore[union-attr]


def test_crashes_of_a_kept_commit_are_counted_after_its_decision_and_worded_as_they_are() -> None:
    """Only runs after the decision count (a crash before it would have crashed the experiment); one
    stray crash among scored runs is reported as such, and only at the limit is the best said to be
    run no more."""
    scored, crashed = {"phase": "evaluated", "reason": "", "scores": {"val": 1.0}}, {"phase": "evaluated",
                                                                                    "reason": "exit 1: boom"}
    rec = ExperimentRecord(n=3, status="keep", decided_through=1,
                           runs={0: scored, 1: scored, 2: crashed, 3: scored, 4: {"phase": "running"}})
    assert rec.crashed_reruns() == [2]
    one = unreproduced_warning(rec, 2)
    assert "kept experiment #3 crashed on 1 of its 3 runs since it was kept" in one and "run no more" not in one
    rec.runs[4] = crashed
    two = unreproduced_warning(rec, 2)
    assert "crashed on 2 of its 4 runs" in two and "it is run no more" in two and "scored runs (3)" in two
    assert ExperimentRecord(n=4, status="discard", decided_through=1, runs={1: crashed}).crashed_reruns() == []


def test_every_event_reads_back_as_written_and_old_or_newer_lines_still_read(tmp_path: Path) -> None:
    """One record type per event, shared by writer and reader: each is read back equal to what was
    written; a line from an older daemon (fields missing) reads with defaults, one from a newer daemon
    (unknown fields, unknown events) reads without them; an experiment's event without its number is
    named as skipped."""
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    written = []
    for cls in EVENTS.values():
        fields = {"n": 3} if issubclass(cls, ExperimentEvent) else {}
        if "usage" in {f.name for f in dataclasses.fields(cls)}:
            fields["usage"] = Usage(input_tokens=7, cost_usd=0.25)
        written.append(j.append(cls(**fields)))
    events, problems = read_events_checked(path)
    assert events == written and not problems
    assert {type(e) for e in events} == set(EVENTS.values())
    with open(path, "a") as f:
        f.write(json.dumps({"event": "decided", "ts": 1.0, "n": 4, "status": "keep", "from_the_future": [1]}) + "\n")
        f.write(json.dumps({"event": "teleported", "ts": 2.0, "n": 4}) + "\n")
        f.write(json.dumps({"event": "evaluated", "ts": 3.0, "val_bpb": 1.0}) + "\n")
    events, problems = read_events_checked(path)
    assert events[len(written):] == [Decided(ts=1.0, n=4, status="keep")]
    assert len(problems) == 1 and f"line {len(written) + 3}" in problems[0]


def test_a_rows_cells_hold_no_control_sequence_and_no_impossible_memory(tmp_path: Path) -> None:
    """results.tsv is read in a terminal (`tail`): an agent's description carries no control
    sequence there, and a run's own word for its peak memory past any GPU is no figure."""
    j = Journal(tmp_path / "journal.jsonl")
    j.append(RunStarted(tag="t", branch="autoresearch/t"))
    j.append(Proposing(n=0, parent="p" * 40))
    j.append(Proposed(n=0, description="wider \x1b[2J\x1b]0;title\x07\x9b31m mlp", usage=Usage()))
    j.append(Committed(n=0, commit="0" * 40, parent="p" * 40))
    j.append(Evaluated(n=0, val_bpb=1.5, peak_vram_mb=1e300))
    j.append(Decided(n=0, status="keep"))
    j.append(Recorded(n=0))
    rebuild_results(tmp_path / "results.tsv", fold(j.events()))
    row = (tmp_path / "results.tsv").read_text().splitlines()[1]
    assert row == "0000000\t1.500000\t0.0\tkeep\twider \\x1b[2J\\x1b]0;title\\x07\\x9b31m mlp"
