"""Folders a run wrote, walked and removed whatever shape the run left them in.

A run can nest folders thousands deep (past Python's recursion limit and PATH_MAX), take the
permissions off a folder, or plant links to files outside it. Nothing here recurses, builds a
long path, or follows a link: it holds one folder open at a time and moves by names relative to
it, climbing back through "..". So no folder a run can make ends the daemon, and no link in one
makes the daemon touch a file elsewhere.
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Generator, Iterator

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path) -> bool:
    """Remove `path` (a folder, a file or a link: the link itself) and all under it, as far as it
    can; whether it is gone. Never raises."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return True
        os.chmod(path, 0o700)  # a real folder (lstat): its own permissions may have been taken off
        for kind, parent, name in _walk(path, open_up=True):
            with contextlib.suppress(OSError):
                if kind == "dir":
                    os.rmdir(name, dir_fd=parent)
                else:
                    os.unlink(name, dir_fd=parent)
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return not os.path.lexists(path)
    return True


def regular_files(path: Path) -> Iterator[tuple[int, str]]:
    """(folder fd, name) of the entries under `path` that are not folders, links included (open them
    with O_NOFOLLOW); folders the walk cannot enter are passed over. The fd is valid until the next
    item is asked for."""
    try:
        for kind, parent, name in _walk(path, open_up=False):
            if kind == "file":
                yield parent, name
    except OSError:
        return


def strip_setid(path: Path) -> int:
    """Take the set-user-id and set-group-id bits off every file under `path`; how many had them.
    A run's files are the daemon user's (root's, for a root daemon): a copy of a shell made set-id
    there would hand that user to whoever could run it. Called once nothing of the run is alive,
    so no entry can change between the look and the change. Never raises."""
    stripped = 0
    for parent, name in regular_files(path):
        with contextlib.suppress(OSError):
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(name, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID), dir_fd=parent)
                stripped += 1
    return stripped


def _walk(root: Path, open_up: bool) -> Generator[tuple[str, int, str], None, None]:
    """("file", fd, name) for each entry that is not a folder, ("dir", fd, name) for each folder once
    everything in it has been given; `fd` is the folder holding it. With open_up, each folder is
    made readable and writable by its owner before it is entered."""
    fd = os.open(root, _DIR)
    stack: list[tuple[str, list[str]]] = []  # (the folder we are in, its siblings still to visit)
    try:
        pending = yield from _entries(fd, open_up)
        while True:
            if pending:
                name = pending.pop()
                try:
                    child = os.open(name, _DIR, dir_fd=fd)
                except OSError:
                    continue  # not enterable: a remove then fails on it, and says so by its result
                stack.append((name, pending))
                os.close(fd)
                fd = child
                pending = yield from _entries(fd, open_up)
                continue
            if not stack:
                return
            name, pending = stack.pop()
            parent = os.open("..", _DIR, dir_fd=fd)
            os.close(fd)
            fd = parent
            yield "dir", fd, name
    finally:
        os.close(fd)


def _entries(fd: int, open_up: bool) -> Generator[tuple[str, int, str], None, list[str]]:
    """Yields the folder's non-folders; returns the names of its folders (entered next)."""
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    folders = []
    for name, is_dir in entries:
        if not is_dir:
            yield "file", fd, name
            continue
        if open_up:
            with contextlib.suppress(OSError):
                # A folder, as the listing says: nothing of the run is alive to swap it for a link.
                os.chmod(name, 0o700, dir_fd=fd)
        folders.append(name)
    return folders
