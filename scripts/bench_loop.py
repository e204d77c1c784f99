#!/usr/bin/env python3
"""The daemon's own overhead per experiment: everything but the agent, training and evaluation.

    python scripts/bench_loop.py [--experiments N]

Runs a real daemon (search agent, the test kit's fast fake harness) in a scratch git repo, then
reads the journal: per experiment, the wall time from `proposing` to `recorded` minus the agent's
time and the training and evaluation processes' wall time. Prints the median and quartiles.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from daemon_kit import journal_events, make_repo, run_cli  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo, env = make_repo(Path(tmp))
        done = run_cli(repo, "start", "--tag", "bench", "--budget", "1", "--max-experiments", str(args.experiments), env=env, timeout=3600)
        if done.returncode != 0:
            print(done.stderr)
            return 1
        first: dict[int, float] = {}
        overhead, processes = [], []
        for ev in journal_events(repo, "bench"):
            n = ev.get("n")
            if n is None or n == 0:
                continue
            if ev["event"] == "proposing":
                first.setdefault(n, ev["ts"])
            elif ev["event"] == "proposed":
                agent = ev["agent_seconds"]
            elif ev["event"] == "evaluated":
                child = ev["train_seconds"] + ev["eval_seconds"]
            elif ev["event"] == "recorded":
                total = ev["ts"] - first[n]
                overhead.append(total - agent - child)
                processes.append(child)
    q = statistics.quantiles(overhead, n=4)
    print(f"experiments: {len(overhead)}")
    print(f"daemon overhead per experiment: median {statistics.median(overhead) * 1000:.0f} ms "
          f"(quartiles {q[0] * 1000:.0f} / {q[2] * 1000:.0f} ms); goal < 500 ms")
    print(f"training + evaluation processes (fake harness, incl. sandbox start): median {statistics.median(processes) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
