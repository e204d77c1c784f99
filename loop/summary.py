"""Parse the block a training run prints last: a line `---`, then `key: value` lines.

The block is advisory (the metric comes from the trusted evaluator, not from here), so parsing is
forgiving: the last `---` wins, unknown keys are kept, values that are not numbers stay strings,
and so do nan and inf: they measure nothing, pass every comparison or none, and are not JSON.
"""
from __future__ import annotations

import math

SUMMARY_KEYS = (
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "slowest_step_seconds",
    "num_params_M",
    "depth",
)


def parse_summary(text: str) -> dict[str, float | str]:
    """Return the key/value pairs after the last `---` line of `text` (empty if there is none)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    out: dict[str, float | str] = {}
    for line in lines[starts[-1] + 1 :]:
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or " " in key:
            continue
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        out[key] = number if math.isfinite(number) else value
    return out


def summary_text(value: float | str) -> str:
    """A summary value for people: a whole number without a trailing `.0` (num_steps: 120, not 120.0)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
