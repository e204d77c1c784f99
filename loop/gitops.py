"""The few git operations the daemon needs, through GitPython's command interface.

Only `repo.git.<command>()` is used: each call is one short `git` process. GitPython's object
database helpers keep `git cat-file` processes alive per Repo, which a 200-experiment night would
pile up; the command interface leaves nothing behind.
"""
from __future__ import annotations

from pathlib import Path

import git

from loop.errors import SetupError

BRANCH_PREFIX = "autoresearch/"
REF_PREFIX = "refs/autoresearch/"


class Git:
    def __init__(self, path: Path) -> None:
        try:
            repo = git.Repo(path, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise SetupError(f"{path} is not a git repository: run autoresearch inside a clone of your experiment repo") from None
        if repo.working_tree_dir is None:
            raise SetupError(f"{path} is a bare repository: run autoresearch in a checkout")
        self.root = Path(repo.working_tree_dir)
        self.cmd = repo.git
        repo.close()

    def head(self) -> str:
        return self.cmd.rev_parse("HEAD")

    def current_branch(self) -> str:
        return self.cmd.rev_parse("--abbrev-ref", "HEAD")

    def ref_sha(self, ref: str) -> str | None:
        try:
            return self.cmd.rev_parse("--verify", "--quiet", ref + "^{commit}")
        except git.GitCommandError:
            return None

    def dirty(self) -> list[str]:
        """Tracked files with uncommitted changes (untracked files do not count)."""
        out = self.cmd.status("--porcelain", "--untracked-files=no")
        return [line[3:] for line in out.splitlines() if line.strip()]

    def checkout_new_branch(self, name: str) -> None:
        self.cmd.checkout("-q", "-b", name)

    def checkout(self, name: str) -> None:
        self.cmd.checkout("-q", name)

    def commit_file(self, relpath: str, message: str) -> str:
        self.cmd.add("--", relpath)
        self.cmd.commit("-q", "--no-verify", "-m", message, "--", relpath)
        return self.head()

    def reset_hard(self, sha: str) -> None:
        self.cmd.reset("-q", "--hard", sha)

    def pin(self, ref: str, sha: str) -> None:
        self.cmd.update_ref(ref, sha)

    def show(self, rev: str, relpath: str) -> bytes:
        """A file's bytes at a revision (bytes: train.py may hold anything)."""
        return self.cmd.show(f"{rev}:{relpath}", stdout_as_string=False)

    def changed_paths(self, parent: str, commit: str) -> list[str]:
        out = self.cmd.diff("--name-only", "--no-renames", parent, commit)
        return [p for p in out.splitlines() if p]

    def diff(self, parent: str, commit: str, relpath: str = "train.py") -> str:
        return self.cmd.diff(parent, commit, "--", relpath)

    def refs(self, prefix: str) -> dict[str, str]:
        out = self.cmd.for_each_ref("--format=%(refname) %(objectname)", prefix)
        return dict(line.split(" ", 1) for line in out.splitlines() if line)  # type: ignore[misc]

    def ls_files(self) -> list[str]:
        return self.cmd.ls_files().splitlines()
