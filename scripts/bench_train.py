#!/usr/bin/env python3
"""Train at a given budget and evaluate, as the daemon would: tokens/s, MFU, val_bpb, and the noise.

    python scripts/bench_train.py [--budget S] [--seeds 1,2,3,1]

Runs `python prepare.py` (a no-op when the data is ready), then per seed `python train.py` with the
budget and AUTORESEARCH_SEED, and `python prepare.py eval`, each a subprocess in a scratch copy,
and prints the figures of each run. With several seeds it also prints the run-to-run noise the
keep rule works against: the standard deviation over distinct seeds, and how far apart the runs of
a seed given twice land (what the machine itself adds: kernels that are not deterministic).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from loop.summary import parse_summary  # noqa: E402


def train_once(budget: float, seed: int) -> tuple[dict[str, str], float, float | None]:
    """One run in a scratch copy: its summary, its wall seconds and its val_bpb (None if unscored)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("prepare.py", "train.py", "val.txt"):
            shutil.copy(ROOT / name, work / name)
        env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": f"{budget:g}", "AUTORESEARCH_OUT": str(work / "out"),
               "AUTORESEARCH_SEED": str(seed)}
        t0 = time.time()
        train = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        if train.returncode != 0:
            raise SystemExit(f"train.py failed (seed {seed}):\n{train.stdout[-3000:]}{train.stderr[-3000:]}")
        ev = subprocess.run([sys.executable, "prepare.py", "eval", "--checkpoint", str(work / "out")], cwd=work,
                            capture_output=True, text=True)
        print(ev.stdout.strip() or ev.stderr[-2000:])
        bpb = re.search(r"val_bpb: ([0-9.]+)", ev.stdout)
        return parse_summary(train.stdout), wall, float(bpb.group(1)) if bpb else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=None, help="training seconds (default 300 on CUDA, 30 on CPU)")
    ap.add_argument("--seeds", default="1337", help="comma-separated AUTORESEARCH_SEED values, one run each "
                    "(give one twice to see the machine's own non-determinism)")
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds takes whole numbers separated by commas, not {args.seeds!r}")
    gpu = shutil.which("nvidia-smi") is not None
    budget = args.budget or (300.0 if gpu else 30.0)
    subprocess.run([sys.executable, "prepare.py"], cwd=ROOT, check=True)
    import prepare

    floor = prepare.entropy_floor()
    scores: dict[int, list[float]] = {}
    for seed in seeds:
        summary, wall, bpb = train_once(budget, seed)
        tokens = float(summary.get("total_tokens_M", 0)) * 1e6
        seconds = float(summary.get("training_seconds", 0)) or 1.0
        print(f"seed {seed}")
        print(f"budget_seconds: {budget:g}")
        print(f"training_seconds: {summary.get('training_seconds')}")
        print(f"wall_seconds: {wall:.1f}")
        print(f"tokens_per_second: {tokens / seconds:,.0f}")
        print(f"mfu_percent: {summary.get('mfu_percent')}")
        print(f"num_params_M: {summary.get('num_params_M')}  depth: {summary.get('depth')}  "
              f"steps: {summary.get('num_steps')}")
        print(f"peak_vram_mb: {summary.get('peak_vram_mb')}")
        if bpb is None:
            return 1
        print(f"val_bpb: {bpb:.6f}  (entropy floor {floor:.4f}, distance {bpb - floor:+.4f})", flush=True)
        scores.setdefault(seed, []).append(bpb)
    firsts = [runs[0] for runs in scores.values()]
    if len(firsts) > 1:
        print(f"over {len(firsts)} seeds: val_bpb mean {statistics.fmean(firsts):.6f}, "
              f"standard deviation {statistics.stdev(firsts):.6f}")
    for seed, runs in scores.items():
        if len(runs) > 1:
            print(f"seed {seed} run {len(runs)} times: " + ", ".join(f"{r:.6f}" for r in runs)
                  + f" (spread {max(runs) - min(runs):.6f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
