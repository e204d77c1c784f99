"""train.py from a fresh copy: learns, keeps to its budget, prints the summary, stops on NaN."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from loop.guard import lint_train_py
from loop.summary import SUMMARY_KEYS, parse_summary

MAIN = Path(__file__).resolve().parents[1]
BUDGET = 6.0  # seconds; train.py stops within about one CPU step (~0.2 s), well inside 5%
# one thread per run: on a shared two-core machine, two threads per process fight the other
# processes and make steps several times slower and their length erratic
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def fresh_copy(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("prepare.py", "train.py", "val.txt"):
        shutil.copy(MAIN / name, work / name)
    if replace:
        text = (work / "train.py").read_text()
        assert replace[0] in text
        (work / "train.py").write_text(text.replace(*replace))
    return work


def test_trains_to_budget_and_evaluates(tmp_path: Path, prepared_cache: Path) -> None:
    work = fresh_copy(tmp_path)
    env = {**os.environ, **ONE_THREAD, "AUTORESEARCH_CACHE": str(prepared_cache),
           "AUTORESEARCH_TIME_BUDGET": f"{BUDGET:g}"}
    train = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr[-2000:]
    summary = parse_summary(train.stdout)
    assert set(SUMMARY_KEYS) <= set(summary)
    assert train.stdout.strip().splitlines()[-len(SUMMARY_KEYS) - 1] == "---"
    assert abs(summary["training_seconds"] - BUDGET) <= 0.05 * BUDGET, train.stdout[-1500:]
    assert summary["peak_vram_mb"] == 0.0 and summary["num_steps"] > 10
    ev = subprocess.run([sys.executable, "prepare.py", "eval", "--checkpoint", "out"], cwd=work, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    bpb = float(ev.stdout.split("val_bpb: ")[1].split()[0])
    assert bpb < 5.0  # a uniform byte model scores 8.0; six seconds on a CPU already learns a lot


def test_aborts_on_divergence(tmp_path: Path, prepared_cache: Path) -> None:
    work = fresh_copy(tmp_path, ("ADAM_LR = 0.004 if ON_GPU else 0.006", "ADAM_LR = 0.004 if ON_GPU else 1e9"))
    env = {**os.environ, **ONE_THREAD, "AUTORESEARCH_CACHE": str(prepared_cache), "AUTORESEARCH_TIME_BUDGET": "20"}
    train = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 1
    assert "abort: loss is" in train.stdout.strip().splitlines()[-1]


def test_train_py_passes_the_guard() -> None:
    assert lint_train_py((MAIN / "train.py").read_text()) == []
