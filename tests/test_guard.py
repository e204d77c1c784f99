"""The guard on real commits: only train.py may change, protected files hash as at start, lint."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon_kit import MAIN, git, make_repo
from loop.guard import check_commit, check_tree, lint_train_py, protected_hashes


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
    repo, _ = make_repo(tmp_path)
    protected = protected_hashes(repo)
    assert check_tree(repo, protected) == []
    (repo / "torch.py").write_text("")
    (repo / "val.txt").write_text("other")
    found = check_tree(repo, protected)
    assert "new file torch.py could shadow a module" in found
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
                        (7, "calls os._exit"), (8, "on module _o with a computed name"), (9, "raises SystemExit with success"),
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
