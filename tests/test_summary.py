"""The training summary is advisory: what a run prints there can fail the run, never the daemon."""
from __future__ import annotations

import json

from loop.runner import RunOutcome
from loop.summary import parse_summary


def test_numbers_that_measure_nothing_stay_strings() -> None:
    summary = parse_summary("noise\n---\ntraining_seconds: nan\npeak_vram_mb: -inf\nnum_steps: 12\nnote: hi\n")
    assert summary == {"training_seconds": "nan", "peak_vram_mb": "-inf", "num_steps": 12.0, "note": "hi"}
    assert RunOutcome(summary=summary).peak_vram_mb == 0.0
    json.dumps(summary, allow_nan=False)  # the journal stays plain JSON


def test_the_last_block_wins_and_lines_without_a_key_are_skipped() -> None:
    assert parse_summary("---\na: 1\n---\nb: 2\nnot a line\nc d: 3\n") == {"b": 2.0}
    assert parse_summary("no block here") == {}
