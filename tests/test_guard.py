"""The guard on real commits: only train.py may change, protected files hash as at start, the
lint, and the secret index that refuses a train.py carrying validation text however encoded."""
from __future__ import annotations

import base64
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from daemon_kit import MAIN, git, make_repo, run_cli

from loop.agents.base import Context, HistoryItem
from loop.agents.search import SearchAgent
from loop.guard import (
    SecretIndex,
    check_commit,
    check_tree,
    lint_train_py,
    protected_hashes,
    secret_index,
    untracked_modules,
)

VAL = (MAIN / "val.txt").read_bytes()
PIECE = VAL[len(VAL) // 2:len(VAL) // 2 + 200]  # 200 bytes from the middle of the real val.txt
TRAIN = (MAIN / "train.py").read_text()


def test_commit_touching_the_harness_is_refused(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path)
    protected = protected_hashes(repo)
    parent = git(repo, "rev-parse", "HEAD")
    (repo / "prepare.py").write_text((repo / "prepare.py").read_text() + "\n# harmless?\n")
    (repo / "sitecustomize.py").write_text("import os\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "sneaky")
    found = check_commit(repo, "HEAD", parent, protected)
    assert "prepare.py changed: only train.py may change" in found
    assert "sitecustomize.py changed: only train.py may change" in found
    assert "protected file prepare.py changed" in found


def test_tree_check_catches_shadowing_modules_and_edits(tmp_path: Path) -> None:
    """A virtualenv the person keeps untracked in the checkout (`python -m venv venv`) is theirs, not
    a finding; a module added to it, or one of its files changed, during a run is."""
    repo, _ = make_repo(tmp_path)
    site = repo / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "foo.py").write_text("x = 1\n")
    (site / "distutils-precedence.pth").write_text("import os\n")
    protected, known = protected_hashes(repo), untracked_modules(repo)
    assert set(known) == {"venv/lib/python3.11/site-packages/foo.py",
                          "venv/lib/python3.11/site-packages/distutils-precedence.pth"}
    assert check_tree(repo, protected, known) == []
    (repo / "torch.py").write_text("")
    (repo / "val.txt").write_text("other")
    (site / "planted.pth").write_text("import planted\n")
    (site / "foo.py").write_text("x = 2  # and more\n")
    found = check_tree(repo, protected, known)
    assert "new file torch.py could shadow a module" in found
    assert "new file venv/lib/python3.11/site-packages/planted.pth could shadow a module" in found
    assert ("untracked file venv/lib/python3.11/site-packages/foo.py changed during the run: it could shadow a "
            "module") in found
    assert "protected file val.txt changed" in found and "val.txt was modified during the run" in found


def test_lint_findings() -> None:
    bad = '''
import prepare, sys, ctypes
from prepare import TIME_BUDGET, evaluate
import torch.nn.functional as F
TIME_BUDGET = 1
prepare.MAX_SEQ_LEN = 1
F.cross_entropy = None
setattr(F, "softmax", None)
sys.modules["prepare"] = None
exec("1")
'''
    found = "\n".join(lint_train_py(bad))
    for words in ("imports ctypes", "imports prepare.evaluate", "rebinds the harness name TIME_BUDGET",
                  "assigns prepare.MAX_SEQ_LEN", "assigns F.cross_entropy", "calls setattr()", "uses sys.modules",
                  "calls exec()"):
        assert words in found, words
    spliced = '''
import os as _o, sys, shutil
from os import system
if __name__ != "__main__":
    print("val" + "_bpb: 0.0")
    print(f"eval_seconds: {0}")
    _o._exit(0)
    getattr(_o, "fo" + "rk")()
    raise SystemExit(0)
    sys.exit()
    g = sys.exc_info()[2].tb_frame.f_globals
    b = __builtins__
if __name__ == "__main__":
    sys.exit(0)  # the evaluator never runs this block
'''
    found = lint_train_py(spliced)
    for line, words in ((3, "imports os.system"), (5, "mentions 'bpb'"), (6, "mentions 'eval_seconds'"),
                        (7, "uses os._exit"), (8, "on module _o with a computed name"), (9, "raises SystemExit with success"),
                        (10, "calls sys.exit() without a constant non-zero status"), (11, "uses .f_globals"), (12, "uses __builtins__")):
        assert any(f.startswith(f"train.py:{line}:") and words in f for f in found), (line, words, found)
    assert not any(f.startswith("train.py:14:") for f in found)
    ok = "import torch\ntorch.backends.cudnn.benchmark = True\nfrom prepare import TIME_BUDGET\nx = TIME_BUDGET * 2\n"
    assert lint_train_py(ok) == []
    assert lint_train_py((MAIN / "train.py").read_text()) == []


def test_check_script(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path)
    script = [sys.executable, str(MAIN / "scripts" / "autoresearch-check")]
    clean = subprocess.run(script, cwd=repo, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    (repo / "train.py").write_text((repo / "train.py").read_text() + '\nprint("val_bpb: 0.1")\n')
    (repo / "program.md").write_text("new rules\n")
    git(repo, "commit", "-qam", "cheat")
    dirty = subprocess.run(script, cwd=repo, capture_output=True, text=True)
    assert dirty.returncode == 1
    lines = dirty.stdout.strip().splitlines()
    assert "program.md changed: only train.py may change" in lines
    assert any("mentions 'bpb'" in line for line in lines)


def carried(piece: bytes) -> dict[str, str]:
    """train.py with `piece` hidden in it each way a run could recover it."""
    text = piece.decode()
    return {
        "one string": f"NOTE = {text!r}\n",
        "two strings": f"A = {text[:90]!r}\nB = 3\nC = {text[90:]!r}\n",
        "many strings": "PARTS = [" + ", ".join(repr(text[i:i + 7]) for i in range(0, len(text), 7)) + "]\n",
        "byte values": f"DATA = bytes({list(piece)})\n",
        "tuple of ints": f"DATA = {tuple(piece)}\n",
        "hex": f"DATA = bytes.fromhex({piece.hex()!r})\n",
        "split hex": f"DATA = bytes.fromhex({piece.hex()[:101]!r} + {piece.hex()[101:]!r})\n",
        "escaped": "DATA = '" + "".join(f"\\x{b:02x}" for b in piece) + "'\n",
        "escaped twice": "DATA = r'" + "".join(f"\\x{b:02x}" for b in piece) + "'\n",
        "base64": f"DATA = {base64.b64encode(piece).decode()!r}\n",
        "compressed": f"DATA = {zlib.compress(piece)!r}\n",
        "upper case": f"DATA = {text.upper()!r}\n",
        "reversed": f"DATA = {text[::-1]!r}\n",
        "comment": "# " + text.replace("\n", " ") + "\n",
        "decimal text": "DATA = '" + ",".join(str(b) for b in piece) + "'\n",
        "shifted by one": f"DATA = {bytes((b + 1) & 255 for b in piece)!r}\n",
        "XOR-ed, in hex": f"DATA = bytes.fromhex({bytes(b ^ 0x55 for b in piece).hex()!r})\n",
        "XOR-ed, as ints": f"DATA = {list(bytes(b ^ 0x3C for b in piece))}\n",
    }


def test_secret_index_finds_validation_text_however_hidden() -> None:
    index = SecretIndex.build([VAL])
    assert index.found_in(TRAIN) is None
    for way, addition in carried(PIECE).items():
        reason = index.found_in(TRAIN + "\n" + addition)
        assert reason and "carries validation text" in reason, way
        assert PIECE.decode()[:20] not in reason  # the reason never quotes the secret back
    other = SecretIndex.build([b"nothing like the validation split at all, " * 10])
    assert all(other.found_in(TRAIN + "\n" + a) is None for a in carried(PIECE).values())
    assert SecretIndex.build([]).found_in(TRAIN + carried(PIECE)["one string"]) is None


def test_secret_index_passes_todays_train_py_and_search_proposals() -> None:
    index = SecretIndex.build([VAL])
    agent = SearchAgent(seed=3)
    history: list[HistoryItem] = []
    for n in range(40):
        context = Context(repo=MAIN, program="", train_py=TRAIN, history=tuple(history), best_val_bpb=None,
                          notes_path=MAIN / "notes.md", run_dir=MAIN)
        proposal = agent.propose(context)
        assert index.found_in(proposal.train_py) is None, proposal.description
        history.append(HistoryItem(n, "abc1234", "discard", 1.0, 1.0, 0.0, proposal.description))


def test_banners_and_runs_of_one_character_are_no_shifted_text() -> None:
    """A shifted or XOR-ed form turns any run of one repeated byte into zeros: a banner comment is
    never taken for shifted validation text, and a log's text shifted by a constant is found."""
    index = SecretIndex.build([VAL])
    banners = "\n# " + "=" * 100 + "\nX = '" + "-" * 80 + "'\n" + "Y = " + str([7] * 64) + "\n"
    assert index.found_in(TRAIN + banners) is None
    log = "step 10 | loss 2.1\nValueError: " + bytes((b + 3) & 255 for b in PIECE).decode("latin-1")
    assert "shifted by a constant" in (index.found_in(log) or "")


def test_commit_carrying_validation_text_is_refused(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path)
    (repo / "holdout.txt").write_text("the holdout split says something else entirely, line by line\n" * 5)
    git(repo, "add", "holdout.txt")
    git(repo, "commit", "-qm", "holdout")
    protected, index = protected_hashes(repo), secret_index(repo)
    parent = git(repo, "rev-parse", "HEAD")
    val, holdout = (repo / "val.txt").read_text(), (repo / "holdout.txt").read_text()
    train = (repo / "train.py").read_text()
    for piece in (val[100:300], holdout[50:250]):
        (repo / "train.py").write_text(train + f"\nMEMO = {list(piece.encode())}\n")
        git(repo, "commit", "-qam", "memorise")
        found = check_commit(repo, "HEAD", parent, protected, secrets=index)
        assert any(line.startswith("train.py carries validation text") for line in found), found
        unchecked = check_commit(repo, "HEAD", parent, protected)  # no index, no check
        assert not any("carries" in line for line in unchecked)
    (repo / "train.py").write_text(train.replace("LR = 0.02", "LR = 0.01"))
    git(repo, "commit", "-qam", "honest")
    assert check_commit(repo, "HEAD", parent, protected, secrets=index) == []


BYPASSES = {  # each once passed the lint; the words its finding must contain
    "import multiprocessing\n": "imports multiprocessing",
    "from multiprocessing import Process\n": "imports multiprocessing",
    "import _thread\n": "imports _thread",
    "from concurrent.futures import ProcessPoolExecutor\n": "imports concurrent.futures",
    "import pty\n": "imports pty",
    "from asyncio import subprocess\n": "imports asyncio.subprocess",
    "import asyncio\nasyncio.create_subprocess_exec('sh')\n": "asyncio.create_subprocess_exec, which starts processes",
    "import os\ngetattr(os, 'system')('true')\n": "uses os.system",
    "import os\nos.posix_spawn('/bin/sh', ['sh'], {})\n": "uses os.posix_spawn",
    "from os import posix_spawnp\n": "imports os.posix_spawnp",
    "import os\nos.write(1, b'x')\n": "uses os.write",
    "import shutil\nshutil.os.kill(1, 9)\n": "reaches os through shutil",
    "import torch\ntorch.sys.modules.clear()\n": "reaches sys through torch",
    "import prepare as h\nh.generate()\n": "uses prepare.generate",
    "import prepare\ngetattr(prepare, 'evaluate')\n": "uses prepare.evaluate",
    "open('/proc/self/status')\n": "reaches other processes through /proc",
    "open('holdout' + '.txt')\n": "reads the holdout data",
}


@pytest.mark.parametrize("source", list(BYPASSES))
def test_lint_closes_known_bypasses(source: str) -> None:
    found = lint_train_py(source)
    assert any(BYPASSES[source] in line for line in found), found


def test_lint_keeps_allowing_the_harness_api_by_any_spelling() -> None:
    ok = ("import prepare as h\nimport os\nimport torch\nx = h.TIME_BUDGET + getattr(h, 'MAX_SEQ_LEN')\n"
          "p = os.path.join(os.environ.get('AUTORESEARCH_OUT', 'out'), 'model.pt')\ntorch.nn.functional.relu\n")
    assert lint_train_py(ok) == []


def test_check_of_a_revision_that_does_not_exist(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    for command in ([sys.executable, str(MAIN / "scripts" / "autoresearch-check"), "no-such-rev"],
                    [sys.executable, "-m", "loop.cli", "check", "no-such-rev"]):
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 2 and "no-such-rev is not a commit" in done.stderr, done.stdout + done.stderr
        assert done.stderr.startswith("autoresearch: ") and "clean" not in done.stdout
    outside = subprocess.run([sys.executable, "-m", "loop.cli", "check"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert outside.returncode == 3 and outside.stderr.startswith("autoresearch: "), outside.stderr  # as every command says it
    root = run_cli(repo, "check", "HEAD", env=env)  # a root commit: no parent, still checked
    assert root.returncode == 0 and root.stdout.startswith("clean"), root.stdout + root.stderr


def test_check_says_what_it_compared(tmp_path: Path) -> None:
    """A project's own commit (a test changed) is refused, and the verdict names the commit, its parent
    and the target, so the refusal is not mistaken for a broken repository."""
    repo, env = make_repo(tmp_path)
    base = git(repo, "rev-parse", "HEAD")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_daemon_e2e.py").write_text("def test_nothing() -> None:\n    pass\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a test")
    head = git(repo, "rev-parse", "HEAD")
    done = run_cli(repo, "check", env=env)
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines[0] == (f"refused: HEAD ({head[:7]}) against its parent ({base[:7]}), by the guard of the builtin "
                        "target: 1 problem:")
    assert lines[1] == "tests/test_daemon_e2e.py changed: only train.py may change"
    assert "autoresearch check autoresearch/TAG" in lines[2]
    root = run_cli(repo, "check", "HEAD~1", env=env)
    assert root.returncode == 0 and root.stdout == (f"clean: HEAD~1 ({base[:7]}), a root commit with no parent to "
                                                    "compare it with, by the guard of the builtin target: passes the "
                                                    "lint and carries no validation text\n"), root.stdout


def test_check_without_train_py_or_a_declaration_says_so(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    git(repo, "rm", "-q", "train.py")
    git(repo, "commit", "-qm", "no train.py")
    done = run_cli(repo, "check", env=env)
    assert done.returncode == 1 and "has no train.py" in done.stdout and "autoresearch.toml" in done.stdout, done.stdout
