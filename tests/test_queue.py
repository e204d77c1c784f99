"""The queue agent on real files and a real `git apply`: whole files and diffs (with and without the
a/ b/ prefixes) taken byte for byte, and odd or hostile entries (a diff that does not apply, one
that reaches past train.py or out of the repository, a folder for a note) failing that proposal
alone."""
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
    agent.accepted(proposal.receipt)  # the daemon journaled it
    assert sorted(p.name for p in (queue / "done").iterdir()) == ["deeper.diff", "deeper.txt"]


def test_a_proposal_taken_but_never_journaled_goes_back_in_the_queue(tmp_path: Path) -> None:
    """A daemon killed between the agent taking a file and journaling it: the next start finds the
    file in the queue again, not filed as done with no experiment to show for it."""
    queue = tmp_path / "queue"
    (queue / "a.py").parent.mkdir()
    (queue / "a.py").write_text("LR = 0.03\n")
    (queue / "a.txt").write_text("higher LR\n")
    assert QueueAgent(queue).propose(context(tmp_path)).description == "higher LR"
    assert not (queue / "a.py").exists()  # taken: no other proposal gets it
    again = QueueAgent(queue)  # the daemon was killed; resume makes a new agent
    proposal = again.propose(context(tmp_path))
    assert (proposal.train_py, proposal.description) == ("LR = 0.03\n", "higher LR")


def test_a_diff_that_does_not_apply_fails_that_proposal_only(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    agent = QueueAgent(queue)
    (queue / "a.diff").write_text(diff(TRAIN.replace("LR = 0.02", "LR = 0.01")).replace("LR = 0.02", "LR = 0.05"))
    (queue / "b.py").write_text("LR = 0.03\n")
    with pytest.raises(ProposalFailed, match="diff does not apply to train.py"):
        agent.propose(context(tmp_path))
    assert agent.propose(context(tmp_path)).train_py == "LR = 0.03\n"


def test_line_endings_and_bytes_are_kept(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    agent = QueueAgent(queue)
    crlf = TRAIN.replace("\n", "\r\n")
    (queue / "a.py").write_bytes(crlf.encode())
    assert agent.propose(context(tmp_path)).train_py == crlf
    (queue / "b.diff").write_text(diff(TRAIN.replace("DEPTH = 2", "DEPTH = 3")))
    ctx = Context(**{**context(tmp_path).__dict__, "train_py": TRAIN + "\n\n\n\nX = 'a\rb'\n"})  # a lone CR
    assert agent.propose(ctx).train_py == ctx.train_py.replace("DEPTH = 2", "DEPTH = 3")


def test_odd_queue_entries_fail_one_proposal_not_the_run(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    agent = QueueAgent(queue)
    (queue / "a.py").write_text("LR = 0.03\n")
    (queue / "a.txt").mkdir()  # a folder where the description would be: the name stands in
    assert agent.propose(context(tmp_path)).description == "a"
    other = QueueAgent(tmp_path / "other")
    (tmp_path / "other" / "taken").write_text("a file where the folder of taken proposals goes\n")
    (tmp_path / "other" / "b.py").write_text("LR = 0.04\n")
    with pytest.raises(ProposalFailed, match="cannot take b.py"):
        other.propose(context(tmp_path))


def test_a_diff_must_stay_in_train_py(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    agent = QueueAgent(queue)
    extra = "diff --git a/evil.py b/evil.py\nnew file mode 100644\n--- /dev/null\n+++ b/evil.py\n@@ -0,0 +1 @@\n+import os\n"
    (queue / "a.diff").write_text(diff(TRAIN.replace("DEPTH = 2", "DEPTH = 3")) + extra)
    with pytest.raises(ProposalFailed, match=r"changes more than train.py \(evil.py\)"):
        agent.propose(context(tmp_path))
    (queue / "b.diff").write_text(diff(TRAIN.replace("LR = 0.02", "LR = 0.01")).replace("LR = 0.02", "LR = 0.05"))
    with pytest.raises(ProposalFailed, match="patch failed: train.py"):  # the -p1 reason, not -p0's
        agent.propose(context(tmp_path))


def test_a_target_diff_cannot_reach_outside_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src" / "pkg").mkdir(parents=True)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"binary\xff\xfe")
    queue = tmp_path / "queue"
    agent = QueueAgent(queue)
    ctx = Context(**{**context(repo).__dict__, "editable": {"src/model.py": "X = 1\n"}})
    for name, path in (("a", str(outside)), ("b", "../outside.bin"), ("c", "src/pkg")):
        (queue / f"{name}.diff").write_text(f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-x\n+y\n")
        with pytest.raises(ProposalFailed, match="outside the repository|not a file"):
            agent.propose(ctx)
    assert outside.read_bytes() == b"binary\xff\xfe"
    (queue / "d.diff").write_text("--- a/src/model.py\r\n+++ b/src/model.py\r\n@@ -1 +1 @@\r\n-X = 1\r\n+X = 2\r\n")
    crlf = Context(**{**ctx.__dict__, "editable": {"src/model.py": "X = 1\r\n"}})
    assert agent.propose(crlf).files == {"src/model.py": "X = 2\r\n"}
