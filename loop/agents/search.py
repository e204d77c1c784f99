"""The offline agent: mutates train.py's uppercase hyperparameter constants.

Evolutionary in a small way: it always mutates the best kept train.py, prefers the constants
whose changes have paid off before (and the direction that paid), never proposes a configuration
it has already tried, keeps ints as ints and powers of two as powers of two. A change tried on
one best may be tried again on a later one: "DEPTH 4 -> 6" means another configuration once the
learning rate has moved, and a good change once lost to noise or to a bad neighbour gets its
second chance that way. It needs no network
and no key, so it is the default without ANTHROPIC_API_KEY, and the baseline an LLM must beat.
Safe to call from several threads: proposals are made one at a time (each takes milliseconds),
and one already handed out counts as tried, even before its result is in the history.
"""
from __future__ import annotations

import ast
import random
import re
import threading
from dataclasses import dataclass

from loop.agents.base import Context, HistoryItem, Proposal
from loop.errors import ProposalFailed

DESCRIPTION = re.compile(r"([A-Z][A-Z0-9_]*) (\S+) -> (\S+)")
FACTORS = (0.5, 0.7, 0.8, 1.25, 1.4, 2.0)
INERT = re.compile(r"SEED|^LOG_")  # constants that change nothing the metric sees
MAX_TRIES = 400


@dataclass(frozen=True)
class Constant:
    name: str
    value: int | float
    start: int  # character offsets of the literal in the source
    end: int


def find_constants(source: str) -> list[Constant]:
    """Module-level `NAME = <number>` and `NAME = <number> if ... else <number>` literals."""
    tree = ast.parse(source)
    offsets = _line_offsets(source)
    found = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not name.isupper():
            continue
        literals = [node.value.body, node.value.orelse] if isinstance(node.value, ast.IfExp) else [node.value]
        for i, lit in enumerate(literals):
            if isinstance(lit, ast.Constant) and isinstance(lit.value, (int, float)) and not isinstance(lit.value, bool):
                key = name if len(literals) == 1 else f"{name}[{'if' if i == 0 else 'else'}]"
                start = offsets[lit.lineno - 1] + lit.col_offset
                end = offsets[lit.end_lineno - 1] + lit.end_col_offset  # type: ignore[operator]
                found.append(Constant(key, lit.value, start, end))
    return found


def _line_offsets(source: str) -> list[int]:
    # ast offsets count UTF-8 bytes; the constants section is ASCII in practice, so count chars
    # of lines and accept that a non-ASCII comment before a constant shifts nothing on its line.
    offsets, total = [], 0
    for line in source.splitlines(keepends=True):
        offsets.append(total)
        total += len(line)
    return offsets


def configuration(source: str) -> tuple[tuple[str, int | float], ...]:
    """What a train.py sets: its constants, by name (comments and layout aside)."""
    return tuple((c.name, c.value) for c in find_constants(source))


def mutate_value(value: int | float, rng: random.Random) -> int | float:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value >= 8 and value & (value - 1) == 0:  # sizes that are powers of two stay so; small counts step
            return value * 2 if rng.random() < 0.5 else value // 2
        if value == 0:
            return 1
        step = max(1, round(abs(value) * rng.choice((0.25, 0.5))))
        return max(1, value + rng.choice((-step, step)))
    if value == 0.0:
        return rng.choice((1e-4, 1e-2, 0.1))
    return float(f"{value * rng.choice(FACTORS):.3g}")


class SearchAgent:
    name = "search"
    concurrent = True  # propose holds a lock; proposals in flight are remembered as tried

    def __init__(self, seed: int = 0, max_changes: int = 2, on_gpu: bool = False) -> None:
        self.rng = random.Random(seed)
        self.max_changes = max_changes
        # `X = gpu_value if ON_GPU else cpu_value`: only the branch this machine runs matters.
        self.skip_branch = "[else]" if on_gpu else "[if]"
        self.handed_out: set[tuple[tuple[str, int | float], ...]] = set()  # configurations proposed, in flight or done
        self.described: set[str] = set()  # the descriptions of those proposals
        self.lock = threading.Lock()

    def check(self) -> None:
        """Nothing to check: no network, no key, no program to find."""

    def propose(self, context: Context) -> Proposal:
        with self.lock:
            proposal = self._propose(context)
            self.handed_out.add(configuration(proposal.train_py))
            self.described.add(proposal.description)
            return proposal

    def _propose(self, context: Context) -> Proposal:
        constants = [c for c in find_constants(context.train_py)
                     if not INERT.search(c.name) and not c.name.endswith(self.skip_branch)]
        if not constants:
            raise ProposalFailed("search: train.py has no uppercase numeric constants to mutate")
        # Tried: what this agent handed out (by configuration), and, of what it did not hand out
        # (a resumed run's history), what was built on this same best: one description on one
        # parent is one configuration. (Without commits, the same best score stands for the best.)
        def on_this_best(item: HistoryItem) -> bool:
            if item.parent and context.best_commit:
                return item.parent == context.best_commit
            return item.best_before == context.best_val_bpb

        tried = {item.description for item in context.history
                 if on_this_best(item) and item.description not in self.described}
        weights = self._weights(context, [c.name for c in constants])
        for attempt in range(MAX_TRIES):
            # Near the best first; once the neighbourhood is used up, step further and change more.
            reach = 1 + attempt // 25
            k = 1 if self.rng.random() < 0.6 else self.max_changes + reach - 1
            chosen = self._sample(constants, weights, k)
            changes = [(c, self._mutate(c.value, reach)) for c in chosen]
            changes = [(c, v) for c, v in changes if v != c.value]
            if not changes:
                continue
            description = ", ".join(f"{c.name} {c.value!r} -> {v!r}" for c, v in changes)
            if description in tried:
                continue
            source = context.train_py
            for c, v in sorted(changes, key=lambda cv: -cv[0].start):  # rewrite from the end
                source = source[: c.start] + repr(v) + source[c.end :]
            if configuration(source) in self.handed_out:
                continue
            return Proposal(train_py=source, description=description,
                            hypothesis="a nearby setting of these hyperparameters trains better within the budget")
        raise ProposalFailed("search: every nearby configuration has been tried")

    def _mutate(self, value: int | float, reach: int) -> int | float:
        for _ in range(self.rng.randint(1, reach)):
            value = mutate_value(value, self.rng)
        return value

    def _weights(self, context: Context, names: list[str]) -> dict[str, float]:
        """1 + twice the number of kept changes per constant: what paid before is tried more."""
        weights = {n: 1.0 for n in names}
        for item in context.history:
            for name, _, _ in DESCRIPTION.findall(item.description):
                if name in weights and item.status == "keep":
                    weights[name] += 2.0
                elif name in weights and item.status == "crash":
                    weights[name] = max(0.3, weights[name] - 0.3)
        return weights

    def _sample(self, constants: list[Constant], weights: dict[str, float], k: int) -> list[Constant]:
        pool, chosen = list(constants), []
        for _ in range(min(k, len(pool))):
            pick = self.rng.choices(pool, weights=[weights[c.name] for c in pool])[0]
            pool.remove(pick)
            chosen.append(pick)
        return chosen
