#!/usr/bin/env python3
"""How busy the slots stay: 1 and 4 slots, an agent that answers at once or takes half a run.

    python scripts/bench_scheduler.py [--train 2.0] [--experiments 12]
    python scripts/bench_scheduler.py --harness real [--train 60] [--experiments 5]

`--harness real` runs this project's own prepare.py and train.py (its GPU default on a GPU) on
every slot the machine has, with real start-up, compilation and the sandboxed evaluator, which
overlaps the next run's training on the same GPU: the busy share of a real night, in minutes.

A real daemon in a scratch git repo with the test kit's fake harness, shaped like a GPU run:
start-up and evaluation each take 10% of the training time, on GPU slots named by
CUDA_VISIBLE_DEVICES (no GPU is needed: the fake harness never touches one), so a slot trains
beside its last run's evaluation as it does on a GPU. A scripted agent (below) waits a set
delay and then proposes a change (a worse learning rate, so the best never moves and the figures
measure scheduling alone). From the journal it prints, per case:

- busy: the share of wall-clock, from the first experiment's dispatch to the last run's (after it
  a slot idles because the work is done, not for want of it), that each slot had a training
  process running (start-up included), averaged over the slots;
- training: the same share counting only the seconds train.py reports as timed training;
- throughput: experiments per hour, and relative to one slot with the same agent delay.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from daemon_kit import git, journal_events, make_repo, run_cli  # noqa: E402

from loop.agents.base import Context, Proposal  # noqa: E402

DELAY_ENV = "BENCH_AGENT_DELAY_S"
KNOB_ENV = "BENCH_AGENT_KNOB"  # the learning-rate constant the agent moves: LR (fake), MATRIX_LR (real)


class ScriptedAgent:
    """Waits BENCH_AGENT_DELAY_S, then proposes a slightly higher (worse) learning rate."""

    name = "scripted"
    concurrent = True

    def __init__(self) -> None:
        self.delay = float(os.environ.get(DELAY_ENV, "0"))
        self.count = 0
        self.lock = threading.Lock()

    def propose(self, context: Context) -> Proposal:
        time.sleep(self.delay)
        with self.lock:
            self.count += 1
            k = self.count
        lr = 0.02 * (1 + k / 1000)
        knob = os.environ.get(KNOB_ENV, "LR")
        line = next(line for line in context.train_py.splitlines() if line.startswith(f"{knob} = "))
        return Proposal(context.train_py.replace(line, f"{knob} = {lr:.6f}  # learning rate"), f"{knob} {lr:.6f}")


def shaped_train(repo: Path, train: float) -> None:
    """Start-up before the timed training (10%), training itself, evaluation (10%)."""
    text = (repo / "train.py").read_text()
    text = text.replace("eval_sleep_s = 0.0", f"eval_sleep_s = {train / 10}")
    text = text.replace("\nsleep_s = 0.0", f"\nsleep_s = {train}")
    text = text.replace('if __name__ == "__main__":\n', f'if __name__ == "__main__":\n    time.sleep({train / 10})\n', 1)
    (repo / "train.py").write_text(text)
    git(repo, "commit", "-qam", "shape the fake run like a GPU run")


def measure(slots: int, delay: float, train: float, experiments: int, harness: str = "fake") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        repo, env = make_repo(Path(tmp), harness=harness)
        env[DELAY_ENV] = str(delay)
        env["PYTHONPATH"] = str(ROOT / "scripts") + os.pathsep + env["PYTHONPATH"]
        if harness == "real":  # the real training data, prepared once in the person's cache
            env["AUTORESEARCH_CACHE"] = os.environ.get("AUTORESEARCH_CACHE", str(Path.home() / ".cache" / "autoresearch"))
            env[KNOB_ENV] = "MATRIX_LR"
            subprocess.run([sys.executable, "prepare.py"], cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
            where = []  # every GPU the machine has (the default)
            budget = train
        else:
            shaped_train(repo, train)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(slots))
            where = ["--gpus", str(slots)]
            budget = train * 2
        # One run of the baseline, one per experiment and no later ones: the keep rule's repeats are
        # bench_noise's to measure.
        done = run_cli(repo, "start", "--tag", "b", "--agent", "bench_scheduler:ScriptedAgent", *where,
                       "--budget", str(budget), "--baseline-runs", "1", "--best-runs", "1", "--confirm", "never",
                       "--max-experiments", str(experiments), env=env, timeout=3600 * 12)
        if done.returncode != 0:
            raise SystemExit(f"the daemon failed: {done.stderr.strip() or done.stdout[-500:]}")
        events = journal_events(repo, "b")
    first = min(e["ts"] for e in events if e["event"] == "running" and e["n"] > 0)
    everything = [e for e in events if e["event"] == "evaluated" and e.get("timings")]
    runs = [e for e in everything if e["n"] > 0]
    # Up to the last dispatch: after it a slot idles because the night's work is done, not waiting.
    end = max(e["timings"]["started"] for e in everything)
    wall = end - first
    occupied: dict[str, float] = {}
    trained: dict[str, float] = {}
    for e in everything:  # every run, the baseline's too, clipped to the window
        t = e["timings"]
        inside = min(t["training_ended"], end) - max(t["started"], first)
        if inside > 0:
            whole = t["training_ended"] - t["started"]
            occupied[e["slot"]] = occupied.get(e["slot"], 0.0) + inside
            trained[e["slot"]] = (trained.get(e["slot"], 0.0)
                                  + float(e["summary"].get("training_seconds", 0.0)) * inside / whole)
    decided = [e for e in events if e["event"] == "decided" and e["n"] > 0]
    span = max(e["ts"] for e in decided) - first
    return {"busy": statistics.fmean(v / wall for v in occupied.values()),
            "training": statistics.fmean(v / wall for v in trained.values()),
            "per_hour": len(decided) / span * 3600, "slots": len(occupied),
            "eval": statistics.median(e["eval_seconds"] for e in runs),
            "startups": [e["train_seconds"] - float(e["summary"].get("training_seconds", 0.0))
                         for e in sorted(everything, key=lambda e: e["timings"]["started"])]}


def real(train: float, experiments: int) -> None:
    r = measure(0, 0.0, train, experiments, harness="real")
    print(f"this project's harness, budget {train:g}s, {experiments} experiments, agent instant, "
          f"{r['slots']} slot(s)")
    print(f"busy {r['busy']:.2f}, training {r['training']:.2f}, {r['per_hour']:.1f} experiments/h; per run: "
          f"start-up and compilation {statistics.median(r['startups'][1:]):.1f}s, evaluation {r['eval']:.1f}s (median)")
    print("start-up of each run in the order started (the baseline first, which compiles from nothing): "
          + ", ".join(f"{s:.1f}s" for s in r["startups"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=float, default=2.0, help="seconds of fake training per run")
    ap.add_argument("--experiments", type=int, default=12, help="experiments per slot")
    ap.add_argument("--harness", choices=("fake", "real"), default="fake",
                    help="the test kit's fake harness, or this project's own (use --train 60 on a GPU)")
    args = ap.parse_args()
    if args.experiments < 2:  # the window runs from the first dispatch to the last: one run spans none
        ap.error("--experiments: at least 2 per slot, so the measured window is not empty")
    if args.harness == "real":
        real(args.train, args.experiments)
        return 0
    run_seconds = args.train * 1.2
    print(f"fake run: start-up {args.train / 10:g}s, training {args.train:g}s, evaluation {args.train / 10:g}s; "
          f"{args.experiments} experiments per slot; default lookahead (one per slot)")
    print("slots  agent delay   busy  training  experiments/h  vs 1 slot")
    for delay in (0.0, 0.5 * run_seconds):
        one = None
        for slots in (1, 4):
            r = measure(slots, delay, args.train, args.experiments * slots)
            one = one or r["per_hour"]
            print(f"{slots:5d}  {delay:9.2f}s  {r['busy']:5.2f}  {r['training']:8.2f}  {r['per_hour']:13.0f}  "
                  f"{r['per_hour'] / one:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
