"""The keep rule: keep, discard or confirm a result, given the best's runs and the measured noise.

A fixed-budget run's score moves between repeats of the same commit (seeds, kernels, the machine),
so "lower than the best" alone keeps noise and builds on it all night. The rule here:

- discard when the candidate's mean is not better than the best's by more than `min_delta`;
- keep at once when a single run's gain beyond `min_delta` clears CLEAR_Z standard errors of the
  difference of the two means: a win that large is no draw of the noise;
- otherwise (better, but not that clearly), confirm: run the candidate again with a fresh seed,
  once, and keep when the gain of the mean of its runs clears `keep_z` standard errors, else
  discard.

The noise `sigma` is pooled from every commit run more than once (the baseline's runs, every
confirmed experiment, the best's later runs, and the candidate's own runs), and while it rests on
few degrees of freedom each bar is Student's t quantile at the confidence it stands for: a sigma
from two runs can be ten times too small, and a fixed z would then keep noise as readily as the
greedy rule.

Why two bars. Every look at a result is a chance for noise to pass: a rule that keeps at
`keep_z` on the first run and again at `keep_z` on the mean of two lets about twice as much noise
through as either look alone. With the first look's bar far out, the decision of all but the
clearest wins is one test, on two runs, at `keep_z`; a clear win costs no second run.

The grey zone is one-sided on purpose. A result that looks worse is discarded at once: confirming
it would cost a run on about half of all changes that do nothing, and a change whose true gain is
large enough to matter seldom shows as a loss. The cost of that is a few real but small gains
missed; the cost of the opposite mistake (keeping noise) is every later experiment built on it.

One confirmation is the cap: two runs halve the variance of a single one, which settles most grey
results, and the rest are near-nulls whose further runs would buy little next to a new proposal.

What a result is compared with is the best's mean, and two things keep that mean honest:

- the runs that made the best the best are left out of it once it has others. They were kept for
  being low (a winner's curse): counted in, they hold every later result to a score the best
  never had, and real gains are lost to it;
- the best is run again as results are compared with it, to about GROWTH times the square root
  of their number (MAX_BEST_RUNS at most). Many results are judged against one best, so a run of
  the best serves them all; the square root is the classical allocation of runs between one
  control and many treatments. Late in a night, when gains are small and a best stands for long,
  its mean gets tight enough to tell half a noise width from nothing.

`confirm="never"` is the greedy rule (keep whatever beats the best by more than `min_delta`),
`confirm="always"` confirms every apparent improvement once before keeping it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, fmean
from typing import Callable, Iterable, Literal

Verdict = Literal["keep", "discard", "confirm"]
MAX_CONFIRMATIONS = 1  # extra runs a candidate may get before the decision
CLEAR_Z = 4.0  # standard errors a single run's gain must clear to be kept without a confirmation
GROWTH = 2.0  # the best runs about GROWTH * sqrt(results compared with it) times
MAX_BEST_RUNS = 16
LARGE_DEGREES = 1000  # beyond this many degrees of freedom Student's t is the normal distribution


@dataclass(frozen=True)
class Noise:
    """Run-to-run standard deviation pooled over groups of repeats of one commit."""

    sigma: float | None  # None until some commit has been run twice
    degrees: int  # degrees of freedom behind it

    @classmethod
    def pooled(cls, groups: Iterable[list[float]]) -> Noise:
        return cls(None, 0).plus(*groups)

    def __str__(self) -> str:
        return f"{self.sigma or 0.0:.6f} over {self.degrees} degree{'s' if self.degrees != 1 else ''} of freedom"

    def plus(self, *groups: list[float]) -> Noise:
        """This estimate with more groups of repeats pooled in (groups of one run add nothing)."""
        squares = (self.sigma or 0.0) ** 2 * self.degrees
        degrees = self.degrees
        for runs in groups:
            if len(runs) > 1:
                mean = fmean(runs)
                squares += sum((x - mean) ** 2 for x in runs)
                degrees += len(runs) - 1
        return Noise(math.sqrt(squares / degrees) if degrees else None, degrees)


@dataclass(frozen=True)
class Judgement:
    """A verdict and why, in words a person reads (`show`, the journal's reason for a decision)."""

    verdict: Verdict
    template: str  # {runs} and {gain} are filled in by `why`
    mean: float | None = None
    best_mean: float | None = None
    best_runs: int = 0

    def why(self, shown: Callable[[float], str] = lambda x: f"{x:.6f}") -> str:
        """The reason, with scores as `shown` writes them (a higher-is-better metric is negated in here)."""
        runs = f" {shown(self.best_mean)} ({self.best_runs} run{'s' if self.best_runs != 1 else ''})" \
            if self.best_mean is not None else ""
        gain = f"{abs(self.best_mean - self.mean):.6f}" if self.best_mean is not None and self.mean is not None else ""
        return self.template.replace("{runs}", runs).replace("{gain}", gain)


@dataclass(frozen=True)
class Policy:
    min_delta: float = 0.0
    keep_z: float = 2.0
    confirm: str = "auto"  # auto | never | always

    def decide(self, candidate: list[float], best: list[float], noise: Noise, may_confirm: bool = True) -> Verdict:
        """Lower is better. `candidate` and `best` are the scores of each one's runs; `noise` is pooled
        over decided experiments (the candidate, not decided yet, is pooled in here). Without
        `may_confirm` (the run is stopping) the candidate is decided on the runs it has: one run
        is kept only beyond CLEAR_Z, as ever, and a grey one is discarded."""
        return self.judge(candidate, best, noise, may_confirm).verdict

    def judge(self, candidate: list[float], best: list[float], noise: Noise, may_confirm: bool = True) -> Judgement:
        """The verdict of `decide`, with the figures it rests on."""
        if not best:
            return Judgement("keep", "the first result of a run is the best")
        mean, best_mean = fmean(candidate), fmean(best)
        gain = best_mean - mean - self.min_delta
        if gain <= 0:
            beyond = f" by more than --min-delta {self.min_delta:g}" if self.min_delta else ""
            return Judgement("discard", "no better than the best's mean{runs}" + beyond, mean, best_mean, len(best))
        if self.confirm == "never":
            return Judgement("keep", "better than the best's mean{runs} (--confirm never keeps any gain)", mean,
                             best_mean, len(best))
        first_look = len(candidate) <= MAX_CONFIRMATIONS
        may_confirm = may_confirm and first_look
        if self.confirm == "always" and may_confirm:
            return Judgement("confirm", "better: confirmed before it is kept (--confirm always)")
        noise = noise.plus(candidate)
        if noise.sigma is None:  # nothing has been run twice: a repeat gives the first estimate
            return Judgement("confirm" if may_confirm else "discard", "better, but no noise is measured yet")
        error = noise.sigma * math.sqrt(1 / len(candidate) + 1 / len(best))
        if error == 0:
            return Judgement("keep", "better, on a harness whose repeats are identical", mean, best_mean, len(best))
        z = max(CLEAR_Z, self.keep_z) if first_look else self.keep_z  # see "Why two bars" above
        bar = self.bar(noise.degrees, z)
        needed = bar * error
        # The bar is z's confidence on a normal curve, widened by Student's t for a noise measured
        # on few degrees of freedom: say both, or "4 standard errors" reads as a slip for 32.
        within = (f", {'beyond' if gain > needed else 'inside'} the noise: a gain must pass {needed:.6f} "
                  f"({bar:.1f} standard errors of {error:.6f}: the confidence of {z:g} on a normal curve, "
                  f"for noise {noise})")
        verdict: Verdict = "keep" if gain > needed else "confirm" if may_confirm else "discard"
        return Judgement(verdict, "better than the best's mean{runs} by {gain}" + within, mean, best_mean, len(best))

    def best_runs_wanted(self, minimum: int, compared: int) -> int:
        """Runs the best should have once `compared` results were judged against it (`minimum` is
        --best-runs). The greedy rule never reruns anything."""
        if self.confirm == "never":
            return minimum
        return max(minimum, min(MAX_BEST_RUNS, math.ceil(GROWTH * math.sqrt(compared))))

    @staticmethod
    def comparable(best: dict[int, float], decided_through: int, kind: str) -> list[float]:
        """The best's scores a result is compared with, from its runs by index: those numbered from
        `decided_through` on (the runs before had made it the best), once there are any (every run
        before that). The baseline was not chosen for being low: all of its runs count."""
        decisive = 0 if kind == "baseline" else decided_through
        later = [score for run, score in sorted(best.items()) if run >= decisive]
        return later or [score for _, score in sorted(best.items())]

    def bar(self, degrees: int, z: float | None = None) -> float:
        """Standard errors a gain must clear: `z` (`keep_z` by default) as a one-sided confidence, at
        these degrees of freedom."""
        return t_quantile(NormalDist().cdf(self.keep_z if z is None else z), degrees)


def draws(runs: list[float], harness_varies: bool) -> list[float]:
    """A commit's runs as independent draws of the noise. Runs given different seeds that all scored
    the very same, on a harness whose repeats differ (the untouched baseline's did), are one draw:
    train.py ignored the seed it was given, so a repeat measures nothing new, and counted as more it
    would halve the noise a lucky seed is judged against and shrink the pooled noise towards zero."""
    if harness_varies and len(runs) > 1 and len(set(runs)) == 1:
        return runs[:1]
    return runs


def repeats_differ(baseline: list[float], learned_nothing: bool = False) -> bool:
    """Whether repeats of one commit differ on this harness: the untouched baseline's runs did. A
    baseline that learned nothing scores chance whatever its seed, which says nothing of the
    harness: its repeats are then taken to differ, as they will once the model learns."""
    return len(set(baseline)) > 1 or learned_nothing


def measured_noise(decided: Iterable[list[float]], harness_varies: bool) -> Noise:
    """The run-to-run noise, pooled over the runs of decided commits, each commit's as draws."""
    return Noise.pooled(draws(runs, harness_varies) for runs in decided)


def t_cdf(t: float, degrees: int) -> float:
    """Student's t distribution function for a whole number of degrees of freedom (exact series)."""
    if degrees >= LARGE_DEGREES:
        return NormalDist().cdf(t)
    theta = math.atan2(t, math.sqrt(degrees))
    cos2, sin = math.cos(theta) ** 2, math.sin(theta)
    if degrees % 2:  # odd: 2/pi * (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if degrees > 1 else 0.0
        for k in range(1, (degrees - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + sin * math.cos(theta) * total)
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, total = 1.0, 1.0
        for k in range(1, degrees // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        inside = sin * total
    return 0.5 + inside / 2  # `inside` is P(-t < T < t) with its sign


def t_quantile(p: float, degrees: int) -> float:
    """The t with t_cdf(t, degrees) == p, for 0.5 <= p < 1, by bisection (the cdf is monotone)."""
    if degrees >= LARGE_DEGREES:
        return NormalDist().inv_cdf(p)
    low, high = 0.0, 1.0
    while t_cdf(high, degrees) < p:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, degrees) < p else (low, mid)
    return (low + high) / 2
