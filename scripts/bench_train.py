#!/usr/bin/env python3
"""Train at a given budget and evaluate, as the daemon would: tokens/s, MFU, val_bpb.

    python scripts/bench_train.py [--budget S]

Runs `python prepare.py` (a no-op when the data is ready), `python train.py` with the budget,
then `python prepare.py eval`, each a subprocess in a scratch copy, and prints the figures.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from loop.summary import parse_summary  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=None, help="training seconds (default 300 on CUDA, 30 on CPU)")
    args = ap.parse_args()
    gpu = shutil.which("nvidia-smi") is not None
    budget = args.budget or (300.0 if gpu else 30.0)
    subprocess.run([sys.executable, "prepare.py"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("prepare.py", "train.py", "val.txt"):
            shutil.copy(ROOT / name, work / name)
        env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": f"{budget:g}", "AUTORESEARCH_OUT": str(work / "out")}
        t0 = time.time()
        train = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        if train.returncode != 0:
            print(train.stdout[-3000:], train.stderr[-3000:])
            return 1
        summary = parse_summary(train.stdout)
        ev = subprocess.run([sys.executable, "prepare.py", "eval", "--checkpoint", str(work / "out")], cwd=work,
                            capture_output=True, text=True)
        print(ev.stdout.strip() or ev.stderr[-2000:])
        bpb = re.search(r"val_bpb: ([0-9.]+)", ev.stdout)
    sys.path.insert(0, str(ROOT))
    import prepare

    floor = prepare.entropy_floor()
    tokens = float(summary.get("total_tokens_M", 0)) * 1e6
    seconds = float(summary.get("training_seconds", 0)) or 1.0
    print(f"budget_seconds: {budget:g}")
    print(f"training_seconds: {summary.get('training_seconds')}")
    print(f"wall_seconds: {wall:.1f}")
    print(f"tokens_per_second: {tokens / seconds:,.0f}")
    print(f"mfu_percent: {summary.get('mfu_percent')}")
    print(f"num_params_M: {summary.get('num_params_M')}  depth: {summary.get('depth')}  steps: {summary.get('num_steps')}")
    print(f"peak_vram_mb: {summary.get('peak_vram_mb')}")
    if bpb:
        print(f"val_bpb: {float(bpb.group(1)):.6f}  (entropy floor {floor:.4f}, distance {float(bpb.group(1)) - floor:+.4f})")
    return 0 if bpb else 1


if __name__ == "__main__":
    sys.exit(main())
