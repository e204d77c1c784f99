"""The morning report from a journal of a known run: every figure of the summary, the files."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loop.journal import JOURNAL_NAME, fold, read_events, run_dir
from loop.report import crash_kind, summarize

T0 = 1_700_000_000.0


def write_journal(repo: Path, tag: str, experiments: list[tuple], stopped: bool = True) -> Path:
    """experiments: (status, val_bpb, description, reason, cost_usd, input_tokens, train_seconds)."""
    path = run_dir(repo, tag) / JOURNAL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    events = [{"event": "run_started", "ts": T0, "tag": tag}]
    for n, (status, bpb, desc, reason, cost, tokens, train_s) in enumerate(experiments):
        start = T0 + n * 600  # one experiment every ten minutes
        usage = {"input_tokens": tokens, "output_tokens": tokens // 10, "cache_read_tokens": 5 * tokens, "cost_usd": cost}
        events += [
            {"event": "proposing", "ts": start, "n": n},
            {"event": "proposed", "ts": start + 30, "n": n, "description": desc, "usage": usage},
            {"event": "committed", "ts": start + 31, "n": n, "commit": f"{n:07d}" + "a" * 33},
            {"event": "evaluated", "ts": start + 500, "n": n, "val_bpb": bpb, "reason": reason,
             "train_seconds": train_s, "peak_vram_mb": 40960.0},
        ]
        if status is not None:
            events += [{"event": "decided", "ts": start + 501, "n": n, "status": status, "reason": reason},
                       {"event": "recorded", "ts": start + 502, "n": n}]
    if stopped:
        events.append({"event": "run_stopped", "ts": T0 + len(experiments) * 600, "reason": "stop requested"})
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


KNOWN = [
    ("keep", 1.0, "baseline", "", 0.0, 0, 300.0),
    ("discard", 1.1, "wider MLP", "", 0.5, 1000, 300.0),
    ("keep", 0.95, "higher LR", "", 0.25, 2000, 300.0),
    ("crash", None, "deeper", "exit 1: torch.OutOfMemoryError: CUDA out of memory", 0.25, 1000, 120.0),
    ("crash", None, "peek", "guard: train.py:12: mentions 'val.txt': reads the validation data", 0.0, 0, 0.0),
    ("keep", 0.9, "muon for embeddings", "", 1.0, 3000, 300.0),
    ("crash", None, "fp8", "exit 1: torch.OutOfMemoryError: out of memory again", 0.0, 0, 60.0),
    ("discard", 0.92, "bigger batch", "", 0.0, 0, 300.0),
]


def test_summary_figures(tmp_path: Path) -> None:
    write_journal(tmp_path, "known", KNOWN)
    s = summarize(fold(read_events(run_dir(tmp_path, "known") / JOURNAL_NAME)))
    assert s.experiments == 8 and s.counts == {"keep": 3, "discard": 2, "crash": 3}
    assert s.rates["keep"] == pytest.approx(3 / 8) and s.rates["crash"] == pytest.approx(3 / 8)
    assert s.hours == pytest.approx(8 * 600 / 3600)  # run_started to run_stopped
    assert s.per_hour == pytest.approx(8 / (8 * 600 / 3600))
    assert s.training_share == pytest.approx((300 * 5 + 120 + 60) / (8 * 600))
    assert s.baseline == 1.0 and s.best == 0.9 and s.best_commit == "0000005"
    assert s.improvement == pytest.approx(0.1) and s.improvement_pct == pytest.approx(10.0)
    assert s.cost_usd == pytest.approx(2.0)
    assert s.tokens == {"input": 7000, "output": 700, "cache_write_5m": 0, "cache_write_1h": 0, "cache_read": 35000}
    assert [(k[0], k[2]) for k in s.kept] == [(0, "baseline"), (2, "higher LR"), (5, "muon for embeddings")]
    assert s.kept[0][4] is None and s.kept[1][4] == pytest.approx(-0.05) and s.kept[2][4] == pytest.approx(-0.05)
    assert s.crashes == {"torch.OutOfMemoryError": [3, 6], "guard: mentions 'val.txt'": [4]}
    assert not s.running


def test_crash_kinds() -> None:
    assert crash_kind("timeout after 600s") == "timeout"
    assert crash_kind("over budget: reported 331.2s > 315.0s") == "over budget"
    assert crash_kind("eval: model is not causal: logits changed") == "eval"
    assert crash_kind("exit 1: SyntaxError: invalid syntax") == "SyntaxError"


def test_report_command_writes_files(tmp_path: Path) -> None:
    write_journal(tmp_path, "known", KNOWN)
    done = subprocess.run([sys.executable, "-m", "loop.cli", "report"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "experiments: 8 (keep 3 38%, discard 2 25%, crash 3 38%)" in done.stdout
    assert "improvement 0.100000 (10.00%)" in done.stdout and "spend: $2.00" in done.stdout
    out = run_dir(tmp_path, "known") / "report"
    assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| 5 | 0000005 | muon for embeddings | 0.900000 | -0.050000 |" in md
    assert "| torch.OutOfMemoryError | 2 | 3, 6 |" in md
    rows = list(csv.DictReader(open(out / "experiments.csv")))
    assert len(rows) == 8 and rows[3]["reason"].startswith("exit 1") and rows[2]["usage_input_tokens"] == "2000"


def test_growing_torn_and_crashed_runs(tmp_path: Path) -> None:
    path = write_journal(tmp_path, "live", KNOWN[:3] + [(None, 0.97, "running one", "", 0.1, 10, 300.0)], stopped=False)
    with open(path, "a") as f:
        f.write('{"event": "decided", "n": 3, "sta')  # the daemon is mid-write
    s = summarize(fold(read_events(path)), now=T0 + 3 * 600 + 100)
    assert s.running and s.experiments == 3 and s.hours == pytest.approx((3 * 600 + 100) / 3600)  # up to now
    done = subprocess.run([sys.executable, "-m", "loop.cli", "report", "--tag", "live"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "running (or killed)" in done.stdout


def test_compare_and_no_run(tmp_path: Path) -> None:
    write_journal(tmp_path, "a", KNOWN)
    write_journal(tmp_path, "b", KNOWN[:4])
    done = subprocess.run([sys.executable, "-m", "loop.cli", "report", "--compare", "a", "b", "--out", str(tmp_path / "cmp")],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cmp" / "compare.png").exists() and "a\t8\t0.9" in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    none = subprocess.run([sys.executable, "-m", "loop.cli", "report"], cwd=empty, capture_output=True, text=True)
    assert none.returncode == 3 and "no run found" in none.stderr
