"""The keep rule: keep, discard or confirm a result, given the best's runs and the measured noise.

A fixed-budget run's score moves between repeats of the same commit (seeds, kernels, the machine),
so "lower than the best" alone keeps noise and builds on it all night. The rule here:

- discard when the candidate's mean is not better than the best's by more than `min_delta`;
- keep when the gain beyond `min_delta` clears `keep_z` standard errors of the difference of the
  two means. The noise `sigma` is pooled from every commit run more than once (the baseline's
  runs, every confirmed experiment, and the candidate's own runs), and while it rests on few
  degrees of freedom the bar is Student's t quantile at the confidence `keep_z` stands for, not
  `keep_z` itself: a sigma from two runs can be ten times too small, and a fixed z would then
  keep noise as readily as the greedy rule;
- in between (better, but not clearly), confirm: run the candidate again with a fresh seed, once,
  and decide on the mean of its runs; a result still in the grey zone after that is discarded.

The grey zone is one-sided on purpose. A result that looks worse is discarded at once: confirming
it would cost a run on about half of all changes that do nothing, and a change whose true gain is
large enough to matter seldom shows as a loss. The cost of that is a few real but small gains
missed; the cost of the opposite mistake (keeping noise) is every later experiment built on it.

One confirmation is the cap: two runs halve the variance of a single one, which settles most grey
results, and the rest are near-nulls whose further runs would buy little next to a new proposal.

`confirm="never"` is the greedy rule (keep whatever beats the best by more than `min_delta`),
`confirm="always"` confirms every apparent improvement once before keeping it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, fmean
from typing import Iterable, Literal

Verdict = Literal["keep", "discard", "confirm"]
MAX_CONFIRMATIONS = 1  # extra runs a candidate may get before the decision
LARGE_DEGREES = 1000  # beyond this many degrees of freedom Student's t is the normal distribution


@dataclass(frozen=True)
class Noise:
    """Run-to-run standard deviation pooled over groups of repeats of one commit."""

    sigma: float | None  # None until some commit has been run twice
    degrees: int  # degrees of freedom behind it

    @classmethod
    def pooled(cls, groups: Iterable[list[float]]) -> Noise:
        return cls(None, 0).plus(*groups)

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
class Policy:
    min_delta: float = 0.0
    keep_z: float = 2.0
    confirm: str = "auto"  # auto | never | always

    def decide(self, candidate: list[float], best: list[float], noise: Noise) -> Verdict:
        """Lower is better. `candidate` and `best` are the scores of each one's runs; `noise` is pooled
        over decided experiments (the candidate, not decided yet, is pooled in here)."""
        if not best:
            return "keep"  # the first result of a run is the best by definition
        gain = fmean(best) - fmean(candidate) - self.min_delta
        if gain <= 0:
            return "discard"
        if self.confirm == "never":
            return "keep"
        may_confirm = len(candidate) <= MAX_CONFIRMATIONS
        if self.confirm == "always" and may_confirm:
            return "confirm"
        noise = noise.plus(candidate)
        if noise.sigma is None:  # nothing has been run twice: a repeat gives the first estimate
            return "confirm" if may_confirm else "discard"
        error = noise.sigma * math.sqrt(1 / len(candidate) + 1 / len(best))
        if gain > self.bar(noise.degrees) * error:
            return "keep"  # a sigma of exactly 0 (a deterministic harness) keeps any gain
        return "confirm" if may_confirm else "discard"

    def bar(self, degrees: int) -> float:
        """Standard errors a gain must clear: `keep_z` as a one-sided confidence, at these degrees."""
        return t_quantile(NormalDist().cdf(self.keep_z), degrees)


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
