"""The keep rule: keep, discard or confirm a result, given the best's runs and the measured noise.

A fixed-budget run's score moves between repeats of the same commit (seeds, kernels, the machine),
so "lower than the best" alone keeps noise and builds on it all night. The rule here:

- keep when the improvement over the best is beyond `min_delta` and beyond `keep_z` standard
  errors of the difference of the two means (the noise `sigma` is pooled from every commit run
  more than once: the baseline's runs first, then every confirmation);
- discard when the candidate is not better by more than `min_delta`;
- in between (better, but not clearly), confirm: run the candidate again with a fresh seed, once,
  and decide on the mean of its runs; a result still in the grey zone after that is discarded.

`confirm="never"` is the greedy rule (keep whatever beats the best by more than `min_delta`),
`confirm="always"` confirms every apparent improvement once before keeping it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean
from typing import Iterable, Literal

Verdict = Literal["keep", "discard", "confirm"]
MAX_CONFIRMATIONS = 1  # extra runs a candidate may get before the decision


@dataclass(frozen=True)
class Noise:
    """Run-to-run standard deviation pooled over groups of repeats of one commit."""

    sigma: float | None  # None until some commit has been run twice
    degrees: int  # degrees of freedom behind it

    @classmethod
    def pooled(cls, groups: Iterable[list[float]]) -> Noise:
        squares, degrees = 0.0, 0
        for runs in groups:
            if len(runs) > 1:
                mean = fmean(runs)
                squares += sum((x - mean) ** 2 for x in runs)
                degrees += len(runs) - 1
        return cls(math.sqrt(squares / degrees) if degrees else None, degrees)


@dataclass(frozen=True)
class Policy:
    min_delta: float = 0.0
    keep_z: float = 2.0
    confirm: str = "auto"  # auto | never | always

    def decide(self, candidate: list[float], best: list[float], noise: Noise) -> Verdict:
        """Lower is better. `candidate` and `best` are the scores of each one's runs."""
        if not best:
            return "keep"  # the first result of a run is the best by definition
        gain = fmean(best) - fmean(candidate)
        if gain <= self.min_delta:
            return "discard"
        may_confirm = len(candidate) <= MAX_CONFIRMATIONS
        if self.confirm == "never":
            return "keep"
        if self.confirm == "always" and may_confirm:
            return "confirm"
        if noise.sigma is None:
            return "confirm" if may_confirm else "keep"  # no noise estimate yet: a repeat gives one
        error = noise.sigma * math.sqrt(1 / len(candidate) + 1 / len(best))
        if gain > self.keep_z * error:
            return "keep"
        return "confirm" if may_confirm else "discard"
