"""The git operations the daemon needs, through GitPython's command interface, without the working tree.

Only `repo.git.<command>()` is used: each call is one short `git` process. GitPython's object
database helpers keep `git cat-file` processes alive per Repo, which a 200-experiment night would
pile up; the command interface leaves nothing behind.

Many experiments are in flight at once, so experiments are made with plumbing (blobs, a private
index file, trees, commits and refs) and never by checking anything out: HEAD, the index and the
working tree belong to the person watching, and follow only the best kept commit (`set_branch`).

Environment for one call travels as that call's `env=` (GitPython copies os.environ and adds it
for that process alone). `Git.custom_environment` is never used: it changes the shared command
object, so a read running in another thread at the same moment would pick up a private index.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import git

from loop.errors import SetupError
from loop.patience import patiently

BRANCH_PREFIX = "autoresearch/"
REF_PREFIX = "refs/autoresearch/"

NEW_FILE_MODE = "100644"
# Used only when neither the repository nor the user configures an identity (a fresh machine), so a
# night of experiments never stops on "Please tell me who you are".
FALLBACK_NAME = "autoresearch"
FALLBACK_EMAIL = "autoresearch@localhost"
# merge-file exits with the number of conflicts, capped at 127; above that it could not merge at all.
MERGE_FILE_MAX_CONFLICTS = 127
# Pathspecs of git commands that take them are file names here, never globs or magic.
LITERAL_PATHSPECS = {"GIT_LITERAL_PATHSPECS": "1"}


class NothingToCommit(Exception):
    """The files given are those of the parent already: a commit would change nothing."""


class _PatientGit(git.Git):
    """git.Git whose commands wait out a moment in which the host cannot start a process (see
    patience): one of the controller's git calls failing there would end the night."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return patiently(lambda: super(_PatientGit, self).execute(*args, **kwargs))


class Git:
    def __init__(self, path: Path) -> None:
        try:
            repo = git.Repo(path, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise SetupError(
                f"{path} is not a git repository: run autoresearch inside a clone of your experiment repo") from None
        if repo.working_tree_dir is None:
            raise SetupError(f"{path} is a bare repository: run autoresearch in a checkout")
        self.root = Path(repo.working_tree_dir)
        self.cmd = _PatientGit(repo.working_tree_dir)
        repo.close()

    # -- reading ------------------------------------------------------------------------------

    def head(self) -> str:
        return self.cmd.rev_parse("HEAD")

    def current_branch(self) -> str:
        return self.cmd.rev_parse("--abbrev-ref", "HEAD")

    def ref_sha(self, ref: str) -> str | None:
        return self.resolve(ref)

    def resolve(self, rev: str) -> str | None:
        """The full sha of the commit `rev` names (sha, short sha, ref), or None when it names none."""
        if not rev or rev.startswith("-"):  # would be read as an option
            return None
        try:
            return self.cmd.rev_parse("--verify", "--quiet", rev + "^{commit}")
        except git.GitCommandError:
            return None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether `ancestor` is `descendant` or one of its ancestors."""
        status, _, err = self.cmd.merge_base("--is-ancestor", ancestor, descendant,
                                             with_extended_output=True, with_exceptions=False)
        if status not in (0, 1):
            raise git.GitCommandError(["git", "merge-base", "--is-ancestor", ancestor, descendant], status, err)
        return status == 0

    def file_at(self, rev: str, relpath: str) -> bytes | None:
        """A file's exact bytes at a revision, or None when the revision has no such file."""
        status, out, err = self.cmd.cat_file("blob", f"{rev}:{relpath}", with_extended_output=True,
                                             with_exceptions=False, stdout_as_string=False,
                                             strip_newline_in_stdout=False)
        if status == 0:
            return out
        if self.resolve(rev) is None:
            raise git.GitCommandError(["git", "cat-file", "blob", f"{rev}:{relpath}"], status, err)
        return None

    def show(self, rev: str, relpath: str) -> bytes:
        """A file's exact bytes at a revision (bytes: train.py may hold anything); it must exist there."""
        content = self.file_at(rev, relpath)
        if content is None:
            raise FileNotFoundError(f"{relpath} does not exist at {rev}")
        return content

    def dirty(self) -> list[str]:
        """Tracked files with uncommitted changes (untracked files do not count)."""
        out = self.cmd.status("--porcelain", "--untracked-files=no")
        return [line[3:] for line in out.splitlines() if line.strip()]

    def changed_paths(self, parent: str, commit: str) -> list[str]:
        """Paths that differ between two revisions (a rename is a deletion and an addition)."""
        return _paths(self.cmd.diff("--name-only", "--no-renames", "-z", parent, commit))

    def status_entries(self) -> list[tuple[str, str]]:
        """(XY, path) of each tracked file with changes and each untracked file ("??") in the working
        tree, every file of an untracked folder named; ignored files aside."""
        out = self.cmd.status("--porcelain", "-z", "--untracked-files=all", "--no-renames")
        return [(entry[:2], entry[3:]) for entry in _paths(out)]

    def diff(self, parent: str, commit: str, relpath: str = "train.py") -> bytes:
        """The patch between two revisions, its bytes as git wrote them (files need not be UTF-8)."""
        return self.cmd.diff(parent, commit, "--", relpath, stdout_as_string=False, strip_newline_in_stdout=False)

    def refs(self, prefix: str) -> dict[str, str]:
        """Every ref under `prefix` (e.g. the pins of one tag), as full ref name -> sha."""
        out = self.cmd.for_each_ref("--format=%(refname) %(objectname)", prefix)
        return dict(line.split(" ", 1) for line in out.splitlines() if line)  # type: ignore[misc]

    def files_at(self, rev: str) -> list[str]:
        """Every file path in a revision's tree."""
        return _paths(self.cmd.ls_tree("-r", "-z", "--name-only", rev))

    def ls_files(self) -> list[str]:
        """Tracked paths, spelled as they are (no quoting of unusual names)."""
        return _paths(self.cmd.ls_files("-z"))

    def export(self, commit: str, dest: Path) -> None:
        """The commit's tracked files, written under `dest` with fresh mtimes (tar -m), so no build
        cache trusts old ones. Raises RuntimeError with git's or tar's reason when it cannot."""
        archive = self.cmd.archive("--format=tar", commit, as_process=True)
        extract = subprocess.run(["tar", "-x", "-m", "-f", "-", "-C", str(dest)], stdin=archive.proc.stdout,
                                 capture_output=True)
        archive.proc.stdout.close()
        try:
            archive.wait()
        except git.GitCommandError as e:
            raise RuntimeError(f"cannot export commit {commit[:7]}: {str(e.stderr).strip()}") from None
        if extract.returncode != 0:
            raise RuntimeError(f"cannot export commit {commit[:7]}: {extract.stderr.decode(errors='replace')}")

    def working_tree(self, leave_out: str) -> str:
        """A tree object of the working tree's files as `git add -A` sees them (tracked, and untracked
        ones not ignored, edits included), less the folder `leave_out` (the daemon's state, ignored or
        not), made through a private copy of the index: the person's index, refs and files stay as
        they are (the only trace is loose objects git gc collects)."""
        index = Path(self.cmd.rev_parse("--git-path", "index"))
        index = index if index.is_absolute() else self.root / index
        with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as tmp:
            private = Path(tmp) / "index"
            if index.is_file():
                # a copy with its mtime kept: git re-hashes a file as new as its index ("racily
                # clean"); a fresh mtime on the copy would let an edit made in that second go unseen
                shutil.copy2(index, private)
            env = {"GIT_INDEX_FILE": str(private)}
            try:
                self.cmd.add("-A", env=env)
                self.cmd.rm("-r", "--cached", "-q", "--ignore-unmatch", "--", leave_out, env=env)
                return self.cmd.write_tree(env=env)
            except git.GitCommandError as e:
                raise SetupError(f"cannot snapshot the working tree: {' '.join(str(e.stderr).split())[:200]}") from None

    # -- making experiments without the working tree ------------------------------------------

    def commit_files(self, parent: str, files: dict[str, bytes], message: str) -> str:
        """A new commit on `parent` whose tree is parent's with `files` (relative path -> bytes) replaced.

        HEAD, the index, the working tree and every ref stay as they are: the commit exists only as
        an object until a ref is pointed at it (`pin`, `set_branch`). Raises NothingToCommit when
        the files are those of parent already.
        """
        modes = self._modes(parent, list(files))
        with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as private:
            index_env = {"GIT_INDEX_FILE": str(Path(private) / "index")}
            self.cmd.read_tree(parent, env=index_env)
            entries: list[str] = []
            for relpath, content in files.items():
                blob = self._write_blob(content, Path(private) / "blob")
                entries += ["--cacheinfo", f"{modes.get(relpath, NEW_FILE_MODE)},{blob},{relpath}"]
            if entries:
                self.cmd.update_index("--add", *entries, env=index_env)
            tree = self.cmd.write_tree(env=index_env)
        if tree == self.cmd.rev_parse(parent + "^{tree}"):
            raise NothingToCommit(f"the files given are those of {parent[:7]} already")
        # --no-gpg-sign: a commit.gpgSign setting would otherwise wait on a passphrase all night.
        return self.cmd.commit_tree(tree, "-p", parent, "-m", message, "--no-gpg-sign", env=self._identity_env())

    def _modes(self, rev: str, relpaths: list[str]) -> dict[str, str]:
        """The file mode of each of `relpaths` that exists at `rev` (an executable stays executable)."""
        if not relpaths:
            return {}
        out = self.cmd.ls_tree("-r", "-z", "--full-tree", rev, "--", *relpaths, env=LITERAL_PATHSPECS)
        modes: dict[str, str] = {}
        for entry in out.split("\0"):
            if not entry:
                continue
            info, name = entry.split("\t", 1)
            mode, kind, _ = info.split(" ", 2)
            if kind == "blob" and name in relpaths:
                modes[name] = mode
        return modes

    def _write_blob(self, content: bytes, scratch: Path) -> str:
        """Stores `content` as a blob; its sha. Exact bytes (--no-filters): the commit is what was run."""
        scratch.write_bytes(content)
        with scratch.open("rb") as stdin:
            return self.cmd.hash_object("-w", "--no-filters", "--stdin", istream=stdin)

    def _identity_env(self) -> dict[str, str]:
        """The configured author and committer, or the fixed fallback for whichever is not configured."""
        env: dict[str, str] = {}
        for role in ("AUTHOR", "COMMITTER"):
            status, _, _ = self.cmd.var(f"GIT_{role}_IDENT", with_extended_output=True, with_exceptions=False)
            if status != 0:
                env[f"GIT_{role}_NAME"] = FALLBACK_NAME
                env[f"GIT_{role}_EMAIL"] = FALLBACK_EMAIL
        return env

    def merge_file(self, base: bytes, ours: bytes, theirs: bytes,
                   labels: tuple[str, str, str] = ("ours", "base", "theirs")) -> tuple[bytes, bool]:
        """Three-way merge of one file's contents: (merged bytes, clean).

        On conflict the merged text carries conflict markers named by `labels` (ours, base, theirs).
        Contents git cannot merge (binary) come back as `theirs`, not clean.
        """
        if ours == theirs or base == theirs:
            return ours, True
        if base == ours:
            return theirs, True
        with tempfile.TemporaryDirectory(prefix="autoresearch-merge-") as private:
            paths = []
            for name, content in (("ours", ours), ("base", base), ("theirs", theirs)):
                path = Path(private) / name
                path.write_bytes(content)
                paths.append(str(path))
            flags = [arg for label in labels for arg in ("-L", label)]
            status, merged, _ = self.cmd.merge_file("-p", *flags, *paths, with_extended_output=True,
                                                    with_exceptions=False, stdout_as_string=False,
                                                    strip_newline_in_stdout=False)
        if status > MERGE_FILE_MAX_CONFLICTS:
            return theirs, False
        return merged, status == 0

    def rebase_text(self, old_parent: str, new_parent: str, path: str, text: bytes) -> tuple[bytes, bool]:
        """Move a change of one file, made on old_parent, onto new_parent: (merged, conflicted)."""
        base = self.file_at(old_parent, path) or b""
        ours = self.file_at(new_parent, path) or b""
        merged, clean = self.merge_file(base, ours, text)
        return merged, not clean

    def rebase_files(self, old_parent: str, commit: str, new_parent: str,
                     relpaths: list[str]) -> tuple[dict[str, bytes], list[str]]:
        """`commit`'s version of each path, made on `old_parent`, merged onto `new_parent`'s.

        Returns the merged contents of every path and the paths that conflicted. A file absent
        from a revision counts as empty.
        """
        merged: dict[str, bytes] = {}
        conflicts: list[str] = []
        for relpath in relpaths:
            base, ours, theirs = (self.file_at(rev, relpath) or b"" for rev in (old_parent, new_parent, commit))
            merged[relpath], clean = self.merge_file(base, ours, theirs,
                                                     labels=(new_parent[:7], old_parent[:7], commit[:7]))
            if not clean:
                conflicts.append(relpath)
        return merged, conflicts

    # -- refs and the branch tip ----------------------------------------------------------------

    def pin(self, ref: str, sha: str) -> None:
        self.cmd.update_ref(ref, sha)

    def set_branch(self, branch: str, sha: str, relpaths: list[str]) -> None:
        """Moves branch `branch` to `sha`; when it is checked out, `relpaths` in the index and working tree follow.

        Nothing else in the working tree or index is touched: untracked files and other tracked
        files stay as they are, whatever `sha` holds for them.
        """
        self.cmd.update_ref("-m", f"autoresearch: best is {sha[:7]}", f"refs/heads/{branch}", sha)
        status, head_ref, _ = self.cmd.symbolic_ref("-q", "HEAD", with_extended_output=True, with_exceptions=False)
        if status == 0 and head_ref == f"refs/heads/{branch}":
            self.sync_paths(sha, relpaths)

    def sync_paths(self, sha: str, relpaths: list[str]) -> None:
        """Makes `relpaths` in the index and the working tree what they are at `sha`.

        A path absent at `sha` leaves the index and stays on disk, untracked: a person's file is
        never deleted.
        """
        if not relpaths:
            return
        self.cmd.reset("-q", sha, "--", *relpaths, env=LITERAL_PATHSPECS)
        present = list(self._modes(sha, relpaths))
        if present:  # checkout-index fails on a path the index lacks
            self.cmd.checkout_index("-f", "-q", "--", *present)

    # -- the working tree (the single-experiment loop) --------------------------------------------

    def delete_branch(self, name: str) -> None:
        self.cmd.branch("-q", "-D", name)

    def delete_ref(self, ref: str) -> None:
        self.cmd.update_ref("-d", ref)

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


def _paths(nul_separated: str) -> list[str]:
    return [p for p in nul_separated.split("\0") if p]


def apply_patch(folder: Path, patch: Path, *options: str) -> str:
    """Apply a patch file to the files in `folder` (which need not be a repository) with `git apply`:
    "" when it applied, else git's first line saying why not."""
    status, _, err = git.Git(str(folder)).apply(*options, str(patch), with_extended_output=True, with_exceptions=False)
    return "" if status == 0 else (err.strip().splitlines() or ["does not apply"])[0]
