"""The search agent: valid mutations of the constants, no repeats, and it learns from history."""
from __future__ import annotations

import ast
from pathlib import Path

from loop.agents.base import Context, HistoryItem
from loop.agents.search import SearchAgent, find_constants

MAIN = Path(__file__).resolve().parents[1]


def context(train_py: str, history: tuple[HistoryItem, ...] = ()) -> Context:
    return Context(repo=MAIN, program="", train_py=train_py, history=history, best_val_bpb=None,
                   notes_path=MAIN / "notes.md", run_dir=MAIN)


def test_mutations_stay_valid_and_never_repeat() -> None:
    source = (MAIN / "train.py").read_text()
    agent = SearchAgent(seed=1)
    history: list[HistoryItem] = []
    for n in range(60):
        proposal = agent.propose(context(source, tuple(history)))
        ast.parse(proposal.train_py)
        assert proposal.train_py != source
        before = {c.name: c.value for c in find_constants(source)}
        after = {c.name: c.value for c in find_constants(proposal.train_py)}
        changed = {k for k in before if before[k] != after[k]}
        assert changed and all(k.endswith("[else]") or "[" not in k for k in changed)  # the CPU branch
        assert all(type(before[k]) is type(after[k]) for k in changed)
        assert all(after[k] & (after[k] - 1) == 0 for k in changed if isinstance(before[k], int)
                   and before[k] > 1 and before[k] & (before[k] - 1) == 0)
        history.append(HistoryItem(n, "abc1234", "discard", 1.0, 1.0, 0.0, proposal.description))
    assert len({h.description for h in history}) == len(history)


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
