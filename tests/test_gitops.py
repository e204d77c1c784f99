"""Git without the working tree, on real repositories: commits from plumbing, merges, the branch tip."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from git import GitCommandError as git_error

from loop import gitops

TRAIN_LINES = [f"line {i}\n" for i in range(1, 21)]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def make_repo(tmp_path: Path, identity: bool = True) -> Path:
    """A repo on branch autoresearch/t with train.py, notes.md and an executable run.sh, committed."""
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "train.py").write_text("".join(TRAIN_LINES))
    (repo / "notes.md").write_text("notes\n")
    (repo / "sub" / "deep.txt").write_text("deep\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    git(repo, "init", "-q", "-b", "autoresearch/t")
    if identity:
        git(repo, "config", "user.email", "person@example.com")
        git(repo, "config", "user.name", "A Person")
    env_identity = ["-c", "user.name=seed", "-c", "user.email=seed@example.com"]
    git(repo, "add", "-A")
    git(repo, *env_identity, "commit", "-q", "-m", "experiment repo")
    return repo


def snapshot(repo: Path) -> tuple[str, bytes, str, dict[str, bytes]]:
    """HEAD, the raw index file, status, and every file's bytes in the working tree."""
    files = {str(p.relative_to(repo)): p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    return (git(repo, "rev-parse", "HEAD"), (repo / ".git" / "index").read_bytes(),
            git(repo, "status", "--porcelain", "--untracked-files=all"), files)


def test_commit_files_builds_the_tree_and_touches_nothing_checked_out(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (repo / "scratch.txt").write_text("a person's untracked file\n")
    g = gitops.Git(repo)
    parent = g.head()
    before = snapshot(repo)
    new_train = b"print('new')\n\n"  # a trailing blank line must survive byte for byte
    commit = g.commit_files(parent, {"train.py": new_train, "sub/new.py": b"x = 1\n"}, "try a thing")
    assert snapshot(repo) == before
    assert git(repo, "rev-parse", f"{commit}^") == parent
    assert git(repo, "log", "-1", "--format=%s", commit) == "try a thing"
    assert g.file_at(commit, "train.py") == new_train
    assert subprocess.run(["git", "show", f"{commit}:train.py"], cwd=repo, capture_output=True).stdout == new_train
    assert git(repo, "show", f"{commit}:sub/new.py") == "x = 1"
    assert sorted(git(repo, "diff", "--name-only", parent, commit).splitlines()) == ["sub/new.py", "train.py"]
    assert "100644 blob" in git(repo, "ls-tree", commit, "sub/new.py")
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", commit) == \
        "A Person <person@example.com>|A Person <person@example.com>"


def test_unchanged_files_are_nothing_to_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    g = gitops.Git(repo)
    with pytest.raises(gitops.NothingToCommit):
        g.commit_files(g.head(), {"train.py": (repo / "train.py").read_bytes()}, "no change")
    with pytest.raises(gitops.NothingToCommit):
        g.commit_files(g.head(), {}, "no files")


def test_an_executable_file_stays_executable(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    g = gitops.Git(repo)
    commit = g.commit_files(g.head(), {"run.sh": b"#!/bin/sh\necho changed\n"}, "change the script")
    assert git(repo, "ls-tree", commit, "run.sh").startswith("100755 blob")
    assert git(repo, "ls-tree", commit, "train.py").startswith("100644 blob")


def test_commits_need_no_configured_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path, identity=False)
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    monkeypatch.setenv("HOME", str(empty_home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for role in ("AUTHOR", "COMMITTER"):
        for part in ("NAME", "EMAIL"):
            monkeypatch.delenv(f"GIT_{role}_{part}", raising=False)
    assert subprocess.run(["git", "var", "GIT_AUTHOR_IDENT"], cwd=repo, capture_output=True).returncode != 0
    g = gitops.Git(repo)
    commit = g.commit_files(g.head(), {"train.py": b"print(1)\n"}, "on a fresh machine")
    fallback = f"{gitops.FALLBACK_NAME} <{gitops.FALLBACK_EMAIL}>"
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", commit) == f"{fallback}|{fallback}"


def test_merge_file_clean_conflicting_and_binary(tmp_path: Path) -> None:
    g = gitops.Git(make_repo(tmp_path))
    base = "".join(TRAIN_LINES).encode()
    ours = base.replace(b"line 2\n", b"line 2 (best)\n")
    theirs = base.replace(b"line 18\n", b"line 18 (proposal)\n")
    merged, clean = g.merge_file(base, ours, theirs)
    assert clean and b"line 2 (best)\n" in merged and b"line 18 (proposal)\n" in merged
    assert merged.count(b"\n") == len(TRAIN_LINES)
    clash = base.replace(b"line 2\n", b"line 2 (other)\n")
    merged, clean = g.merge_file(base, ours, clash, labels=("best", "parent", "proposal"))
    assert not clean
    assert b"<<<<<<< best\nline 2 (best)\n=======\nline 2 (other)\n>>>>>>> proposal\n" in merged
    merged, clean = g.merge_file(b"\0a", b"\0b", b"\0c")
    assert (merged, clean) == (b"\0c", False)
    assert g.merge_file(b"\0a", b"\0a", b"\0c") == (b"\0c", True)


def test_rebase_a_proposal_onto_a_newer_best(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    g = gitops.Git(repo)
    old_parent = g.head()
    original = "".join(TRAIN_LINES).encode()
    proposal = g.commit_files(old_parent, {"train.py": original.replace(b"line 17\n", b"line 17 lr=2e-3\n")},
                              "raise the learning rate")
    new_best = g.commit_files(old_parent, {"train.py": original.replace(b"line 3\n", b"line 3 depth=12\n")},
                              "deeper")
    merged, conflicts = g.rebase_files(old_parent, proposal, new_best, ["train.py"])
    assert conflicts == []
    assert b"line 3 depth=12\n" in merged["train.py"] and b"line 17 lr=2e-3\n" in merged["train.py"]
    rebased = g.commit_files(new_best, merged, "raise the learning rate")
    assert g.is_ancestor(new_best, rebased) and not g.is_ancestor(proposal, rebased)

    clashing = g.commit_files(old_parent, {"train.py": original.replace(b"line 3\n", b"line 3 depth=4\n")}, "shallower")
    merged, conflicts = g.rebase_files(old_parent, clashing, new_best, ["train.py"])
    assert conflicts == ["train.py"] and b"<<<<<<<" in merged["train.py"]


def test_set_branch_moves_the_tip_and_only_the_given_files_follow(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    g = gitops.Git(repo)
    start = g.head()
    (repo / "scratch.txt").write_text("untracked\n")
    best = g.commit_files(start, {"train.py": b"print('best')\n", "notes.md": b"changed in the commit\n"}, "best")
    g.set_branch("autoresearch/t", best, ["train.py", "absent_everywhere.py"])
    assert g.head() == best and g.current_branch() == "autoresearch/t"
    assert (repo / "train.py").read_bytes() == b"print('best')\n"
    assert git(repo, "diff", "--cached", "--name-only", "--", "train.py") == ""
    assert git(repo, "diff", "--name-only", "--", "train.py") == ""
    assert (repo / "scratch.txt").read_text() == "untracked\n"
    assert (repo / "notes.md").read_text() == "notes\n"  # not among the paths: left as it was
    assert (repo / "sub" / "deep.txt").read_text() == "deep\n"

    git(repo, "checkout", "-q", "-b", "elsewhere")
    later = g.commit_files(best, {"train.py": b"print('later')\n"}, "later")
    g.set_branch("autoresearch/t", later, ["train.py"])
    assert g.resolve("autoresearch/t") == later
    assert g.head() == best and (repo / "train.py").read_bytes() == b"print('best')\n"


def test_reading_revisions(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    g = gitops.Git(repo)
    first = g.head()
    second = g.commit_files(first, {"train.py": b"2\n"}, "second")
    assert g.resolve(first[:7]) == first and g.resolve("autoresearch/t") == first
    assert g.resolve("no-such-rev") is None and g.resolve("--all") is None
    assert g.is_ancestor(first, second) and not g.is_ancestor(second, first)
    assert g.file_at(first, "missing.py") is None and g.file_at(first, "sub") is None
    with pytest.raises(FileNotFoundError):
        g.show(first, "missing.py")
    with pytest.raises(git_error):
        g.file_at("no-such-rev", "train.py")
    with pytest.raises(git_error):
        g.is_ancestor("no-such-rev", first)
    g.pin("refs/autoresearch/t/0001", second)
    assert g.refs("refs/autoresearch/t/") == {"refs/autoresearch/t/0001": second}


def test_reads_from_another_thread_never_see_the_private_index(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    g = gitops.Git(repo)
    parent = g.head()
    seen: list[list[str]] = []
    done = threading.Event()

    def read_status() -> None:
        while not done.is_set():
            seen.append(g.dirty())

    reader = threading.Thread(target=read_status)
    reader.start()
    try:
        for i in range(15):
            g.commit_files(parent, {"train.py": f"print({i})\n".encode()}, f"attempt {i}")
    finally:
        done.set()
        reader.join()
    assert seen and all(found == [] for found in seen)


def test_many_commits_leave_no_process_behind(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    g = gitops.Git(repo)
    me = psutil.Process()
    before = len(me.children(recursive=True))
    parent = g.head()
    for i in range(20):
        parent = g.commit_files(parent, {"train.py": f"print({i})\n".encode()}, f"step {i}")
        g.merge_file(b"a\n", b"b\n", b"c\n")
    assert len(me.children(recursive=True)) == before
    assert len(git(repo, "rev-list", parent).splitlines()) == 21


def test_a_snapshot_of_the_working_tree_leaves_the_state_folder_out_and_touches_nothing(tmp_path: Path) -> None:
    """`run` on a declared target runs the tree as `git add -A` sees it: edits and new files in, the
    daemon's state folder out (journals hold the night's seed key), ignored or not."""
    repo = make_repo(tmp_path)
    (repo / "notes.md").write_text("edited\n")
    (repo / "new.txt").write_text("new\n")
    (repo / ".autoresearch" / "runs" / "n1").mkdir(parents=True)
    (repo / ".autoresearch" / "runs" / "n1" / "journal.jsonl").write_text('{"seed_key": "secret"}\n')
    before = snapshot(repo)
    tree = gitops.Git(repo).working_tree(".autoresearch")
    assert snapshot(repo) == before
    names = git(repo, "ls-tree", "-r", "--name-only", tree).splitlines()
    assert "new.txt" in names and not [n for n in names if n.startswith(".autoresearch")]
    assert git(repo, "show", f"{tree}:notes.md") == "edited"


def test_paths_come_back_as_spelled_and_a_commit_exports_with_fresh_mtimes(tmp_path: Path) -> None:
    """Names git would quote (non-ASCII, spaces) come back as they are: a target's editable glob or
    the guard compares them with the names on disk."""
    repo = make_repo(tmp_path)
    g = gitops.Git(repo)
    parent = g.head()
    odd = "sub/café model.py"
    commit = g.commit_files(parent, {odd: b"x = 1\n"}, "an oddly named file")
    assert odd in g.files_at(commit) and odd not in g.files_at(parent)
    assert g.changed_paths(parent, commit) == [odd]
    (repo / "new ü.py").write_text("y = 2\n")
    (repo / "notes.md").write_text("edited\n")
    assert sorted(g.status_entries()) == [(" M", "notes.md"), ("??", "new ü.py")]
    assert "new ü.py" not in g.ls_files() and "notes.md" in g.ls_files()
    old = subprocess.run(["git", "commit-tree", f"{commit}^{{tree}}", "-m", "dated 2001"], cwd=repo, check=True,
                         capture_output=True, text=True, env={**os.environ, "GIT_COMMITTER_DATE": "2001-01-01T00:00:00"})
    dest = tmp_path / "export"
    dest.mkdir()
    g.export(old.stdout.strip(), dest)  # git archive dates every file at the commit's time; tar -m does not keep it
    assert (dest / odd).read_bytes() == b"x = 1\n" and (dest / "run.sh").stat().st_mode & 0o111
    assert (dest / "train.py").stat().st_mtime > time.time() - 3600
    with pytest.raises(RuntimeError, match="cannot export commit"):
        g.export("0" * 40, dest)
