"""The queue agent on real files and a real `git apply`: whole files, diffs of train.py (with and
without the a/ b/ prefixes), and a diff that does not apply, which fails that proposal alone."""
from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from loop.agents.base import Context
from loop.agents.queue import QueueAgent
from loop.errors import ProposalFailed

TRAIN = "LR = 0.02\n\nDEPTH = 2\n\nprint(LR, DEPTH)\n"


def context(tmp_path: Path) -> Context:
    return Context(repo=tmp_path, program="", train_py=TRAIN, history=(), best_val_bpb=None,
                   notes_path=tmp_path / "notes.md", run_dir=tmp_path)


def diff(new: str, prefixes: tuple[str, str] = ("a/", "b/")) -> str:
    return "".join(difflib.unified_diff(TRAIN.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"{prefixes[0]}train.py", f"{prefixes[1]}train.py"))


@pytest.mark.parametrize("prefixes", [("a/", "b/"), ("", "")])
def test_a_diff_of_train_py_is_applied(tmp_path: Path, prefixes: tuple[str, str]) -> None:
    queue = tmp_path / "queue"
    agent = QueueAgent(queue)
    new = TRAIN.replace("DEPTH = 2", "DEPTH = 4")
    (queue / "deeper.diff").write_text(diff(new, prefixes))
    (queue / "deeper.txt").write_text("four layers\nwhy: more capacity\n")
    proposal = agent.propose(context(tmp_path))
    assert proposal.train_py == new and proposal.description == "four layers"
    assert sorted(p.name for p in (queue / "done").iterdir()) == ["deeper.diff", "deeper.txt"]


def test_a_diff_that_does_not_apply_fails_that_proposal_only(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    agent = QueueAgent(queue)
    (queue / "a.diff").write_text(diff(TRAIN.replace("LR = 0.02", "LR = 0.01")).replace("LR = 0.02", "LR = 0.05"))
    (queue / "b.py").write_text("LR = 0.03\n")
    with pytest.raises(ProposalFailed, match="diff does not apply to train.py"):
        agent.propose(context(tmp_path))
    assert agent.propose(context(tmp_path)).train_py == "LR = 0.03\n"
