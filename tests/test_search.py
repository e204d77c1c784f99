"""The search agent: valid mutations of the constants, no repeats, and it learns from history."""
from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

from loop.agents.base import Context, HistoryItem
from loop.agents.search import SearchAgent, configuration, find_constants, mutate_value

MAIN = Path(__file__).resolve().parents[1]


def context(train_py: str, history: tuple[HistoryItem, ...] = (), best: float | None = None) -> Context:
    return Context(repo=MAIN, program="", train_py=train_py, history=history, best_val_bpb=best,
                   notes_path=MAIN / "notes.md", run_dir=MAIN)


def test_mutations_stay_valid_and_never_repeat() -> None:
    source = (MAIN / "train.py").read_text()
    agent = SearchAgent(seed=1)
    history: list[HistoryItem] = []
    made = []
    for n in range(60):
        proposal = agent.propose(context(source, tuple(history)))
        made.append(configuration(proposal.train_py))
        ast.parse(proposal.train_py)
        assert proposal.train_py != source
        before = {c.name: c.value for c in find_constants(source)}
        after = {c.name: c.value for c in find_constants(proposal.train_py)}
        changed = {k for k in before if before[k] != after[k]}
        assert changed and all(k.endswith("[else]") or "[" not in k for k in changed)  # the CPU branch
        assert all(type(before[k]) is type(after[k]) for k in changed)
        assert all(after[k] & (after[k] - 1) == 0 for k in changed if isinstance(before[k], int)
                   and before[k] >= 8 and before[k] & (before[k] - 1) == 0)  # sizes stay powers of two
        history.append(HistoryItem(n, "abc1234", "discard", 1.0, 1.0, 0.0, proposal.description))
    assert len(set(made)) == len(made) and len({h.description for h in history}) == len(history)


def test_small_counts_step_by_one_and_sizes_by_powers_of_two() -> None:
    """DEPTH = 2 may become 3 (a count, not a size); WIDTH = 64 only halves or doubles."""
    import random

    rng = random.Random(0)
    assert {mutate_value(2, rng) for _ in range(200)} == {1, 3}
    assert {mutate_value(4, rng) for _ in range(200)} == {2, 3, 5, 6}
    assert {mutate_value(64, rng) for _ in range(200)} == {32, 128}


def test_a_change_tried_on_one_best_is_tried_again_on_another() -> None:
    """"DEPTH 3 -> 4" discarded under one learning rate is another configuration under the next;
    under the same best (a resumed run: known by its score) it counts as tried."""
    agent = SearchAgent(seed=0)
    old_best = "LR = 0.02\nDEPTH = 3\n"
    tried = tuple(HistoryItem(n, "x", "discard", 1.0, 0.9, 0.0, f"DEPTH 3 -> {v}") for n, v in enumerate((2, 4)))
    tried += tuple(HistoryItem(n + 2, "x", "discard", 1.0, 0.9, 0.0, f"LR 0.02 -> {v}") for n, v in
                   enumerate((0.01, 0.014, 0.016, 0.025, 0.028, 0.04)))
    same_best = {agent.propose(context(old_best, tried, best=0.9)).description for _ in range(40)}
    assert not same_best & {h.description for h in tried}
    fresh = SearchAgent(seed=0)
    new_best = "LR = 0.01\nDEPTH = 3\n"  # the learning rate moved: DEPTH 3 -> 4 is new again
    again = {fresh.propose(context(new_best, tried, best=0.8)).description for _ in range(40)}
    assert "DEPTH 3 -> 4" in again


def test_a_resumed_run_does_not_repeat_what_was_tried_on_its_best() -> None:
    """After a resume the agent is new: what was built on the same best commit counts as tried,
    however the best's mean has moved since (it gets more runs as results meet it)."""
    best = "LR = 0.02\nDEPTH = 3\n"
    tried = tuple(HistoryItem(n, "x", "discard", 1.0, 0.95, 0.0, d, parent="b0b0b0b")
                  for n, d in enumerate(("DEPTH 3 -> 2", "DEPTH 3 -> 4", "LR 0.02 -> 0.01", "LR 0.02 -> 0.028")))
    on_other = HistoryItem(9, "x", "discard", 1.0, 0.95, 0.0, "LR 0.02 -> 0.014", parent="c1c1c1c")
    agent = SearchAgent(seed=0)
    resumed = replace(context(best, (*tried, on_other), best=0.9), best_commit="b0b0b0b")  # the mean moved on
    made = {agent.propose(resumed).description for _ in range(30)}
    assert not made & {h.description for h in tried}
    assert "LR 0.02 -> 0.014" in {SearchAgent(seed=s).propose(resumed).description for s in range(60)}


def test_prefers_constants_that_paid_off() -> None:
    source = "A = 1.0\nB = 1.0\nC = 1.0\nD = 1.0\n"
    wins = tuple(HistoryItem(i, "x", "keep", 1.0, 1.1, 0.0, f"A 1.0 -> {1 + i / 10}") for i in range(10))
    agent = SearchAgent(seed=0)
    picks = [agent.propose(context(source, wins)).description for _ in range(200)]
    share_a = sum(p.startswith("A ") or ", A " in p for p in picks) / len(picks)
    assert share_a > 0.5  # A has won ten times; B, C and D never


def test_a_small_space_is_not_exhausted_quickly() -> None:
    source = "LR = 0.02\nWIDTH = 8\nDEPTH = 2\n"
    agent = SearchAgent(seed=0)
    history: list[HistoryItem] = []
    for n in range(300):
        history.append(HistoryItem(n, "x", "discard", 1.0, 1.0, 0.0, agent.propose(context(source, tuple(history))).description))


def test_concurrent_proposals_never_repeat() -> None:
    """Threads asking at once, with no results in yet: every proposal differs."""
    from concurrent.futures import ThreadPoolExecutor

    assert SearchAgent.concurrent is True
    source = (MAIN / "train.py").read_text()
    agent = SearchAgent(seed=2)
    agent.check()
    with ThreadPoolExecutor(8) as pool:
        proposals = list(pool.map(lambda _: agent.propose(context(source)), range(64)))
    descriptions = [p.description for p in proposals]
    assert len(set(descriptions)) == len(descriptions)
