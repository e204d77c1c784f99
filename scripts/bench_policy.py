#!/usr/bin/env python3
"""The keep rule alone, offline: many nights of the one-slot loop in minutes, greedy against auto.

    python scripts/bench_policy.py [--runs 240] [--repeats 300] [--noise 0.01] [--keep-z 2]

bench_noise.py runs the real daemon, which takes about a minute a night, so ten nights cannot tell
apart final scores a few thousandths apart. This models the same night with no processes: the
search agent (loop/agents/search.py) proposes on the best train.py, each run's score is the
noisy harness's true score (tests/noisy_kit.py) plus Gaussian noise of size --noise, and loop/
policy.py decides, with the best's mean and its extra runs as the daemon takes them (--best-runs,
then Policy.best_runs_wanted; the runs that made a best are left out of its mean). One run at a
time, as on one slot: a night is --runs runs in all, confirmations and the best's runs included,
so the rules compare at equal GPU time. Per rule it prints the mean true score of the final best
(with its standard error over the nights), false keeps (kept changes whose true score is worse than
their parent's) and the stricter no-gain keeps (worse or equal: a change that does nothing kept for
its noise) as shares of keeps, and experiments, confirmations and best runs per night.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from noisy_kit import NOISY_TRAIN, constants_of, true_score  # noqa: E402

from loop.agents.base import Context, HistoryItem  # noqa: E402
from loop.agents.search import SearchAgent  # noqa: E402
from loop.config import BEST_RUNS  # noqa: E402
from loop.errors import ProposalFailed  # noqa: E402
from loop.policy import Noise, Policy  # noqa: E402

BASELINE_RUNS = 2  # the daemon's default on one slot


@dataclass
class Night:
    best_true: float
    keeps: int
    worse_keeps: int  # true score above the parent's
    no_gain_keeps: int  # true score not below the parent's (worse or equal)
    experiments: int
    confirmations: int
    best_runs: int


def night(args: tuple[str, float, int, float, int]) -> Night:
    """One night of one rule; `seed` fixes the agent's choices and the noise of every run."""
    confirm, keep_z, runs_budget, sigma, seed = args
    policy = Policy(keep_z=keep_z, confirm=confirm)
    minimum = BEST_RUNS if confirm != "never" else 1
    rng, agent = random.Random(seed * 7919 + 1), SearchAgent(seed=seed)

    def run_once(text: str) -> float:
        return true_score(constants_of(text)) + sigma * rng.gauss(0.0, 1.0)

    best_text = NOISY_TRAIN.format(sleep=0.0)
    best = {run: run_once(best_text) for run in range(BASELINE_RUNS)}
    best_kind, decisive, compared = "baseline", 0, 0
    groups: list[list[float]] = []  # runs of decided experiments, for the pooled noise
    history: list[HistoryItem] = []
    f = Night(0.0, 0, 0, 0, 0, 0, 0)
    runs = BASELINE_RUNS
    while runs < runs_budget:
        while len(best) < policy.best_runs_wanted(minimum, compared) and runs < runs_budget:
            best[len(best)] = run_once(best_text)
            runs, f.best_runs = runs + 1, f.best_runs + 1
        best_scores = Policy.comparable(best, decisive, best_kind)
        context = Context(Path("."), "", best_text, tuple(history), statistics.fmean(best_scores), Path("."), Path("."))
        try:
            proposal = agent.propose(context)
        except ProposalFailed:
            break
        candidate, runs = [run_once(proposal.train_py)], runs + 1
        f.experiments += 1
        noise = Noise.pooled([*groups, list(best.values())])
        verdict = policy.decide(candidate, best_scores, noise)
        while verdict == "confirm" and runs < runs_budget:
            candidate.append(run_once(proposal.train_py))
            runs, f.confirmations = runs + 1, f.confirmations + 1
            verdict = policy.decide(candidate, best_scores, noise)
        history.append(HistoryItem(f.experiments, "", "keep" if verdict == "keep" else "discard",
                                   statistics.fmean(candidate), context.best_val_bpb, 0.0, proposal.description))
        if verdict == "keep":
            f.keeps += 1
            new, old = true_score(constants_of(proposal.train_py)), true_score(constants_of(best_text))
            f.worse_keeps += new > old
            f.no_gain_keeps += new >= old
            groups.append(list(best.values()))
            best_text, best_kind, decisive, compared = proposal.train_py, "agent", len(candidate), 0
            best = dict(enumerate(candidate))
        else:
            groups.append(candidate)
            compared += 1
    f.best_true = true_score(constants_of(best_text))
    return f


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=240, help="runs in a night, every kind counted")
    ap.add_argument("--repeats", type=int, default=300, help="nights per rule, each with its own seed")
    ap.add_argument("--noise", type=float, default=0.01, help="standard deviation of a run's score")
    ap.add_argument("--keep-z", type=float, default=2.0)
    ap.add_argument("--rules", default="never,auto", help="--confirm rules, in this order")
    args = ap.parse_args()
    if args.runs < BASELINE_RUNS + 1 or args.repeats < 2:
        ap.error("--runs must leave room for an experiment and --repeats must be at least 2")
    print(f"{args.repeats} nights of {args.runs} runs, noise {args.noise:g}, keep-z {args.keep_z:g}; "
          f"true optimum 1.000000")
    print(f"{'rule':<8}{'best true':>11}{'(se)':>10}{'false keeps':>13}{'no gain':>9}{'keeps':>8}{'exps':>7}{'confirms':>10}"
          f"{'best runs':>11}")
    with Pool() as pool:
        for rule in args.rules.split(","):
            nights = pool.map(night, [(rule, args.keep_z, args.runs, args.noise, s) for s in range(args.repeats)])
            trues = [n.best_true for n in nights]
            keeps, no_gain = sum(n.keeps for n in nights), sum(n.no_gain_keeps for n in nights)
            worse = sum(n.worse_keeps for n in nights)
            per = len(nights)
            print(f"{rule:<8}{statistics.fmean(trues):>11.5f}{statistics.stdev(trues) / math.sqrt(per):>10.5f}"
                  f"{worse / max(keeps, 1):>13.1%}{no_gain / max(keeps, 1):>9.1%}{keeps / per:>8.1f}{sum(n.experiments for n in nights) / per:>7.0f}"
                  f"{sum(n.confirmations for n in nights) / per:>10.1f}{sum(n.best_runs for n in nights) / per:>11.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
