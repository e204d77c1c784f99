"""The tools the LLM agent works with, on an in-memory copy of train.py.

The text editor tool (view, str_replace, create, insert) may edit train.py only (or a declared
target's editable files, `Workspace.files`) and view the
repository's tracked files, never a secret path (val.txt, holdout.txt, the prepared data) nor
anything a symlink or `..` leads to outside the repository; every misuse comes back as an error
message that helps the model fix its call, never as an exception. Nothing here touches the
working tree: the daemon commits. Proposals may run in several threads at once: the notes file
is replaced atomically, under a lock.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from loop import gitops

EDITABLE = "train.py"
SECRET_REFUSAL = ("{path} is held-out validation data or prepared data: not readable by agents "
                  "(train.py is what to study)")
NOT_VIEWABLE = ("val.txt", "holdout.txt")
NOTES_CAP = 8000
_NOTES_LOCK = threading.Lock()  # one writer at a time across concurrent proposals


class ToolError(Exception):
    """A tool call the model should correct; its message goes back as an is_error result."""


@dataclass
class Workspace:
    repo: Path
    train_py: str
    notes_path: Path
    secret_paths: tuple[Path, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # a declared target's editable files; {}: train.py

    def __post_init__(self) -> None:
        self._start = (self.train_py, dict(self.files))

    def editable(self) -> dict[str, str]:
        return self.files if self.files else {EDITABLE: self.train_py}

    def names(self) -> str:
        return ", ".join(self.editable())

    def unchanged(self) -> bool:
        return (self.train_py, self.files) == self._start

    def changed_files(self) -> dict[str, str]:
        """A declared target's files the agent changed: what its proposal carries."""
        return {p: t for p, t in self.files.items() if t != self._start[1].get(p)}

    def _set(self, path: str, text: str) -> None:
        if self.files:
            self.files[path] = text
        else:
            self.train_py = text

    def tracked(self) -> set[str]:
        return set(gitops.Git(self.repo).ls_files())

    def resolve(self, path: str) -> str:
        p = path.strip()
        for prefix in (str(self.repo) + "/", "/repo/", "./", "/"):
            if p.startswith(prefix):
                p = p[len(prefix):]
        return os.path.normpath(p) if p else p

    def is_secret(self, path: str) -> bool:
        """A secret by name, by where it is, or by where a symlink or `..` leads."""
        if path in NOT_VIEWABLE or path.startswith("..") or os.path.isabs(path):
            return True
        real_repo = self.repo.resolve()
        target = (self.repo / path).resolve()
        if not target.is_relative_to(real_repo) or target.relative_to(real_repo).as_posix() in NOT_VIEWABLE:
            return True
        for secret in self.secret_paths:
            for form in {Path(os.path.abspath(secret)), secret.resolve()}:
                if target == form or target.is_relative_to(form) or (self.repo / path) == form:
                    return True
        return False

    def editor(self, args: dict) -> str:
        command, path = args.get("command"), self.resolve(str(args.get("path", "")))
        if command == "view":
            return self.view(path, args.get("view_range"))
        editable = self.editable()
        if path not in editable:
            names = self.names()
            raise ToolError(f"only {names} may be edited; {path or 'no path'} is read-only (edit {names})")
        current = editable[path]
        if command == "str_replace":
            old, new = args.get("old_str"), args.get("new_str", "")
            if not isinstance(old, str) or not old:
                raise ToolError("str_replace needs old_str: the exact text to replace")
            count = current.count(old)
            if count != 1:
                raise ToolError(f"old_str matches {count} times in {path}; it must match exactly once "
                                "(copy it exactly from a view, with more surrounding lines to make it unique)")
            self._set(path, current.replace(old, str(new)))
            return f"replaced 1 occurrence in {path}"
        if command == "create":
            text = args.get("file_text")
            if not isinstance(text, str):
                raise ToolError(f"create needs file_text: the whole new {path}")
            self._set(path, text)
            return f"{path} rewritten"
        if command == "insert":
            text = args.get("insert_text", args.get("new_str"))
            line = args.get("insert_line")
            lines = current.splitlines(keepends=True)
            if not isinstance(text, str) or not isinstance(line, int) or not 0 <= line <= len(lines):
                raise ToolError(f"insert needs insert_text and insert_line between 0 and {len(lines)}")
            self._set(path, "".join(lines[:line]) + text + ("" if text.endswith("\n") else "\n") + "".join(lines[line:]))
            return f"inserted after line {line}"
        raise ToolError(f"unknown command {command!r}: use view, str_replace, create or insert")

    def view(self, path: str, view_range: object) -> str:
        editable = self.editable()
        if path not in editable and self.is_secret(path):
            raise ToolError(SECRET_REFUSAL.format(path=path or "that path"))
        if path in editable:
            text = editable[path]
        elif path in self.tracked():
            text = (self.repo / path).read_text(encoding="utf-8", errors="replace")
        else:
            one = "is the one" if len(editable) == 1 else "are the ones"
            raise ToolError(f"{path or 'no path'} is not a tracked file of the repository; {self.names()} {one} to edit")
        lines = text.splitlines()
        start, end = 1, len(lines)
        if view_range is not None:
            if (not isinstance(view_range, list) or len(view_range) != 2 or not all(isinstance(v, int) for v in view_range)
                    or not 1 <= view_range[0] <= max(len(lines), 1) or (view_range[1] != -1 and view_range[1] < view_range[0])):
                raise ToolError(f"view_range must be [first, last] with 1 <= first <= {len(lines)} and last >= first or -1")
            start, end = view_range[0], len(lines) if view_range[1] == -1 else min(view_range[1], len(lines))
        return "\n".join(f"{i:6d}\t{lines[i - 1]}" for i in range(start, end + 1))

    def write_notes(self, args: dict) -> str:
        text = args.get("notes")
        if not isinstance(text, str):
            raise ToolError("write_notes needs notes: the full text of your notes")
        if len(text) > NOTES_CAP:
            raise ToolError(f"notes are {len(text)} characters; the cap is {NOTES_CAP}: condense them")
        self.notes_path.parent.mkdir(parents=True, exist_ok=True)
        with _NOTES_LOCK:  # a whole file or the previous one, never half of each
            partial = self.notes_path.with_name(f".{self.notes_path.name}.{threading.get_ident()}.tmp")
            partial.write_text(text, encoding="utf-8")
            partial.replace(self.notes_path)
        return "notes saved"
