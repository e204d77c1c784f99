"""The first message of each proposal's conversation, built from the Context.

Every proposal starts a fresh conversation, so the context never overflows however long the
night: the history is a bounded table (the best and the most recent experiments, a summary line
for the rest) plus the diffs of the last few. The stable parts come first so that prompt caching
pays for them once per conversation.
"""
from __future__ import annotations

import json

from loop.agents.base import Context, HistoryItem

BEST_ROWS, RECENT_ROWS = 30, 50
DIFFS, DIFF_CHARS, FAILURE_CHARS = 5, 3000, 4000


def history_table(history: tuple[HistoryItem, ...], metric: str = "val_bpb") -> str:
    if not history:
        return "No experiments yet."
    scored = sorted((h for h in history if h.val_bpb is not None), key=lambda h: h.val_bpb)  # type: ignore[arg-type,return-value]
    keep = {h.number for h in scored[:BEST_ROWS]} | {h.number for h in history[-RECENT_ROWS:]}
    rows = [f"| # | status | {metric} | delta vs best before | memory GB | description |", "|---|---|---|---|---|---|"]
    for h in history:
        if h.number not in keep:
            continue
        bpb = f"{h.val_bpb:.6f}" if h.val_bpb is not None else "-"
        delta = f"{h.val_bpb - h.best_before:+.6f}" if h.val_bpb is not None and h.best_before is not None else ""
        note = f" ({h.reason})" if h.status == "crash" and h.reason else ""
        rows.append(f"| {h.number} | {h.status} | {bpb} | {delta} | {h.memory_gb:.1f} | {h.description}{note} |")
    left = len(history) - len(keep & {h.number for h in history})
    if left:
        counts = {s: sum(h.status == s for h in history if h.number not in keep) for s in ("keep", "discard", "crash")}
        rows.append(f"({left} more experiments not shown: {counts['keep']} kept, {counts['discard']} discarded, {counts['crash']} crashed)")
    return "\n".join(rows)


def recent_diffs(history: tuple[HistoryItem, ...]) -> str:
    parts = []
    for h in [h for h in history if h.diff][-DIFFS:]:
        diff = h.diff if len(h.diff) <= DIFF_CHARS else h.diff[:DIFF_CHARS] + "\n[diff cut]"
        parts.append(f"### #{h.number} {h.status}: {h.description}\n```diff\n{diff}\n```")
    return "\n\n".join(parts) or "(none)"


def in_flight_list(context: Context) -> str:
    if not context.in_flight:
        return ""
    rows = [f"- #{f.number} ({f.state}): {f.description or 'being proposed'}" + (f" - {f.hypothesis}" if f.hypothesis else "")
            for f in context.in_flight]
    return ("## Experiments under way now (their results are not in yet: propose something different)\n\n"
            + "\n".join(rows) + "\n\n")


def first_message(context: Context, notes: str) -> list[dict]:
    best = f"{context.best_val_bpb:.6f}" if context.best_val_bpb is not None else "none yet"
    if context.editable:
        return _target_message(context, notes, best)
    stable = (f"## History of this run (best val_bpb so far: {best})\n\n{history_table(context.history)}\n\n"
              f"## Diffs of the most recent experiments\n\n{recent_diffs(context.history)}\n\n"
              f"## Your research notes\n\n{notes or '(empty: keep notes with write_notes)'}")
    now = f"## Current train.py (the best kept version)\n\n```python\n{context.train_py}\n```\n\n"
    now += in_flight_list(context)
    if context.conflict:
        now += ("## Your last proposal no longer applies\n\nThe best train.py changed while it waited, and your change "
                "conflicts with it. Make your change again on the current train.py above.\n```\n"
                + context.conflict[-FAILURE_CHARS:] + "\n```\n\n")
    if context.last_failure:
        now += ("## The last attempt crashed; fix it\n\nIts train.py:\n```python\n" + context.fix_of +
                "\n```\nThe end of its log:\n```\n" + context.last_failure[-FAILURE_CHARS:] + "\n```\n\n")
    now += (f"Training budget: {context.budget_seconds:g} seconds. Propose one experiment: edit train.py with "
            "str_replace_based_edit_tool, then call submit_experiment with a one-line description and your hypothesis.")
    return [{"type": "text", "text": stable, "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": now}]


def _target_message(context: Context, notes: str, best: str) -> list[dict]:
    """The same message for a declared target: its editable files, its metric (lower is better)."""
    names = ", ".join(context.editable)
    stable = (f"## History of this run (best {context.metric} so far: {best}; lower is better)\n\n"
              f"{history_table(context.history, context.metric)}\n\n"
              f"## Diffs of the most recent experiments\n\n{recent_diffs(context.history)}\n\n"
              f"## Your research notes\n\n{notes or '(empty: keep notes with write_notes)'}")
    now = _files("Current {path} (the best kept version)", context.editable) + in_flight_list(context)
    if context.conflict:
        now += ("## Your last proposal no longer applies\n\nThe best version changed while it waited, and your change "
                "conflicts with it. Make your change again on the current files above.\n```\n"
                + context.conflict[-FAILURE_CHARS:] + "\n```\n\n")
    if context.last_failure:
        try:
            crashed = json.loads(context.fix_of)
        except ValueError:
            crashed = {}
        crashed = crashed if isinstance(crashed, dict) else {}
        now += ("## The last attempt crashed; fix it\n\n" + _files("Its {path}", crashed)
                + "The end of its log:\n```\n" + context.last_failure[-FAILURE_CHARS:] + "\n```\n\n")
    now += (f"Budget: {context.budget_seconds:g} seconds per run. Propose one experiment: edit {names} with "
            "str_replace_based_edit_tool, then call submit_experiment with a one-line description and your hypothesis.")
    return [{"type": "text", "text": stable, "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": now}]


def _files(title: str, files: dict[str, str]) -> str:
    return "".join(f"## {title.format(path=path)}\n\n```\n{text}\n```\n\n" for path, text in files.items())
