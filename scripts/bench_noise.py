#!/usr/bin/env python3
"""The keep rules under noise: false keeps, the true score reached, and what confirmations cost.

    python scripts/bench_noise.py [--experiments 200] [--noise 0.01] [--repeats 1] [--baseline-runs 2]
                                  [--rules auto,always,never] [--keep-z 2] [--best-runs 2] [--first-repeat 0]

Runs the real daemon (the CLI, the search agent, one slot, --lookahead 0 so a proposal is asked
only when the slot is about to free, and the same tag with seeds of the tag alone, --seed-key '',
so every rule draws the same seeds for the same experiment and run) on the noisy fake harness of tests/noisy_kit.py, whose true score
is a known function of train.py's constants and whose evaluator adds Gaussian noise of size
--noise drawn from each run's seed. Rules, in turn: --confirm auto, always, then never (greedy).
Greedy gets as many experiments as auto spent runs, so the two are compared at equal runs (its
first --experiments are also shown, at equal experiments). Per rule it prints:

  keeps; false keeps, kept changes whose TRUE score is worse than their parent's ("worse"), and
  the stricter no-gain keeps (worse or equal: a change that does nothing, a seed change say, kept
  for its noise), the latter also as a share of keeps and of experiments (over all repeats, both as
  shares of keeps); the true score of the final best (and the mean that made it
  the best), the runs and process seconds spent on confirmations, the runs a best got after
  its decision (--best-runs, then more as results pile up against it; none under greedy),
  and the wins missed (discarded changes truly
  better than their parent by more than the noise).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from daemon_kit import folded, journal_events, run_cli  # noqa: E402
from noisy_kit import PUBLIC_SEEDS, make_noisy_repo, true_score_at  # noqa: E402


@dataclass
class Figures:
    rule: str
    experiments: int
    runs: int
    confirm_runs: int  # a candidate's runs before its decision, past the first
    confirm_seconds: float
    settle_runs: int  # a best's runs after its decision (--best-runs, then growth)
    run_seconds: float
    keeps: int
    worse_keeps: int  # kept with a true score worse than the parent's
    no_gain_keeps: int  # kept with a true score no better than the parent's (worse or equal)
    best_true: float
    best_measured: float
    wall: float
    missed: int = 0  # discarded changes truly better than their parent by more than the noise
    crashes: list[str] = field(default_factory=list)  # a crash changes what follows: the rules diverge


def run_rule(root: Path, tag: str, confirm: str, experiments: int, args: argparse.Namespace) -> tuple[Path, float]:
    """One daemon run in a fresh repo; returns the repo and its wall seconds."""
    (root / confirm).mkdir()
    repo, env = make_noisy_repo(root / confirm, noise=args.noise)
    t0 = time.monotonic()
    done = run_cli(repo, "start", "--tag", tag, *PUBLIC_SEEDS, "--agent", "search", "--budget", "1", "--lookahead", "0",
                   "--max-experiments", str(experiments), "--confirm", confirm,
                   "--baseline-runs", str(args.baseline_runs), "--keep-z", str(args.keep_z),
                   *(("--best-runs", str(args.best_runs)) if args.best_runs and confirm != "never" else ()),
                   env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"the {confirm} run failed:\n{done.stderr}{done.stdout[-2000:]}")
    return repo, time.monotonic() - t0


def figures(repo: Path, tag: str, rule: str, wall: float, noise: float, max_runs: int | None = None,
            max_experiments: int | None = None) -> Figures:
    """The figures of one run's journal, over its first experiments (by runs or by count)."""
    run = folded(journal_events(repo, tag))
    true_of: dict[str, float] = {}

    def true(commit: str) -> float:
        if commit not in true_of:
            true_of[commit] = true_score_at(repo, commit)
        return true_of[commit]

    f = Figures(rule, 0, 0, 0, 0.0, 0, 0.0, 0, 0, 0, 0.0, 0.0, wall)
    best = None
    for rec in run.decided:  # in the order decided
        runs = sorted(rec.runs.items())
        if max_runs is not None and f.runs + len(runs) > max_runs:
            break
        if max_experiments is not None and f.experiments >= max_experiments:
            break
        f.runs += len(runs)
        f.run_seconds += sum((r.get("train_seconds") or 0.0) + (r.get("eval_seconds") or 0.0) for _, r in runs)
        decided = max(rec.decided_runs, 1)
        f.settle_runs += len(runs) - decided
        if rec.n > 0:
            f.experiments += 1
            extra = [r for _, r in runs[1:decided]]
            f.confirm_runs += len(extra)
            f.confirm_seconds += sum((r.get("train_seconds") or 0.0) + (r.get("eval_seconds") or 0.0) for r in extra)
        if rec.status == "keep":
            if rec.n > 0:
                f.keeps += 1
                f.worse_keeps += true(rec.commit or "") > true(rec.parent or "")
                f.no_gain_keeps += true(rec.commit or "") >= true(rec.parent or "")
            best = rec
        elif rec.status == "discard":
            f.missed += true(rec.parent or "") - true(rec.commit or "") > noise
        elif rec.status == "crash":
            f.crashes.append(f"#{rec.n}: {rec.reason}")
    if best is not None:
        f.best_true, f.best_measured = true(best.commit or ""), best.val_bpb or 0.0
    return f


def show(rows: list[Figures], noise: float) -> None:
    print(f"noise sigma {noise:g}; true optimum 1.000000; worse: kept with a true score > its parent's; "
          f"no gain: >=")
    print(f"{'rule':<26}{'exps':>5}{'runs':>6}{'keeps':>6}{'worse':>6}{'no gain':>8}{'of keeps':>9}{'of exps':>8}"
          f"{'best true':>11}{'best measured':>14}{'confirm runs':>13}{'confirm s':>10}{'settle runs':>12}{'missed':>7}"
          f"{'wall s':>8}")
    for f in rows:
        share = f.no_gain_keeps / f.keeps if f.keeps else 0.0
        per_exp = f.no_gain_keeps / f.experiments if f.experiments else 0.0
        confirm_share = f.confirm_seconds / f.run_seconds if f.run_seconds else 0.0
        print(f"{f.rule:<26}{f.experiments:>5}{f.runs:>6}{f.keeps:>6}{f.worse_keeps:>6}{f.no_gain_keeps:>8}{share:>9.1%}"
              f"{per_exp:>8.1%}"
              f"{f.best_true:>11.6f}{f.best_measured:>14.6f}{f.confirm_runs:>13}"
              f"{f'{f.confirm_seconds:.0f} ({confirm_share:.0%})':>10}{f.settle_runs:>12}{f.missed:>7}{f.wall:>8.0f}")
        for crash in f.crashes:
            print(f"    crash {crash}")


def greedy(root: Path, tag: str, args: argparse.Namespace, runs_to_match: int) -> list[Figures]:
    """The greedy rule for as many runs as the first rule spent, and for as many experiments."""
    experiments = max(args.experiments, runs_to_match - args.baseline_runs)
    repo, wall = run_rule(root, tag, "never", experiments, args)
    rows = [figures(repo, tag, "never, equal experiments", wall, args.noise, max_experiments=args.experiments)]
    if runs_to_match:
        rows.insert(0, figures(repo, tag, "never, equal runs", wall, args.noise, max_runs=runs_to_match))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--noise", type=float, default=0.01, help="standard deviation of the evaluator's noise")
    ap.add_argument("--repeats", type=int, default=1, help="runs of the whole comparison, each with its own seeds")
    ap.add_argument("--first-repeat", type=int, default=0,
                    help="number of the first repeat (its tag and seeds): more repeats, without redoing earlier ones")
    ap.add_argument("--baseline-runs", type=int, default=2, help="runs of the baseline (the default on one slot)")
    ap.add_argument("--keep-z", type=float, default=2.0, help="--keep-z for the rules that confirm (the default 2)")
    ap.add_argument("--best-runs", type=int, help="--best-runs for the rules that confirm (the daemon's default)")
    ap.add_argument("--rules", default="auto,always,never", help="which --confirm rules to run, in this order")
    args = ap.parse_args()
    totals: dict[str, list[Figures]] = {}
    for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
        tag = f"noise{repeat}"
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for confirm in [r for r in args.rules.split(",") if r != "never"]:
                repo, wall = run_rule(Path(tmp), tag, confirm, args.experiments, args)
                rows.append(figures(repo, tag, confirm, wall, args.noise))
            if "never" in args.rules.split(","):
                rows += greedy(Path(tmp), tag, args, rows[0].runs if rows else 0)
        print(f"\nrepeat {repeat + 1} (tag {tag}, the daemon's seeds follow the tag)")
        show(rows, args.noise)
        for f in rows:
            totals.setdefault(f.rule, []).append(f)
    if args.repeats > 1:
        print(f"\nover {args.repeats} repeats: false (worse) keeps and no-gain keeps as shares of keeps, the mean "
              f"true score of the final best (its standard error over the repeats)")
        for rule, fs in totals.items():
            keeps, worse, no_gain = (sum(f.keeps for f in fs), sum(f.worse_keeps for f in fs),
                                     sum(f.no_gain_keeps for f in fs))
            trues = [f.best_true for f in fs]
            print(f"{rule:<26}worse {worse:>3} / {keeps:<4} = {worse / max(keeps, 1):5.1%}   "
                  f"no gain {no_gain:>3} = {no_gain / max(keeps, 1):5.1%}   best true {statistics.fmean(trues):.6f} "
                  f"({statistics.stdev(trues) / math.sqrt(len(trues)):.6f})   runs {sum(f.runs for f in fs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
