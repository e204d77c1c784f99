#!/usr/bin/env python3
"""The daemon's own overhead per experiment: the controller's work, not the agent's or the runs'.

    python scripts/bench_loop.py [--experiments N]

Runs a real daemon (search agent, one slot, the test kit's fast fake harness) in a scratch git repo,
then reads the journal. Proposals are asked ahead while runs train, so the controller's own time
per experiment is what lies on its thread: from `proposed` to `committed` (commit, guard)
and from the run's `evaluated` to `recorded` (decide, record). Prints the median and quartiles,
and for reference the wall-clock of the training and evaluation processes.
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
        proposed: dict[int, float] = {}
        evaluated: dict[int, float] = {}
        overhead, processes = [], []
        for ev in journal_events(repo, "bench"):
            n = ev.get("n")
            if n is None or n == 0:
                continue
            if ev["event"] == "proposed":
                proposed[n] = ev["ts"]
            elif ev["event"] == "committed" and n in proposed:
                proposed[n] = ev["ts"] - proposed[n]
            elif ev["event"] == "evaluated":
                evaluated[n] = ev["ts"]
                processes.append(ev["train_seconds"] + ev["eval_seconds"])
            elif ev["event"] == "recorded" and n in evaluated:
                overhead.append(proposed[n] + ev["ts"] - evaluated[n])
    q = statistics.quantiles(overhead, n=4)
    print(f"experiments: {len(overhead)}")
    print(f"daemon overhead per experiment: median {statistics.median(overhead) * 1000:.0f} ms "
          f"(quartiles {q[0] * 1000:.0f} / {q[2] * 1000:.0f} ms); goal < 500 ms")
    print(f"training + evaluation processes (fake harness, incl. sandbox start): median {statistics.median(processes) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
