"""The guard: what an experiment may not touch, checked after every proposal and every run.

Four checks, each returning one line per violation (empty when clean):
  check_commit  the commit changes train.py only, train.py passes the lint, and it carries no
                validation or holdout text (SecretIndex);
  check_tree    the protected files still hash as at the run's start, and nothing new that could
                shadow a module sits in the repository;
  SecretIndex   hashed 32-byte windows of val.txt and holdout.txt, looked for in train.py's text,
                its string and bytes literals joined in order, its integers read as bytes, and the
                hex, base64, escaped and compressed forms found in them;
  lint_train_py static rules against the known ways to game the metric from inside train.py.

A custom target (loop/target.py) brings its own lists: check_target_commit and
target_protected_hashes take the editable and protected globs and the frozen regions from it.

The lint is advisory: an early, friendly warning that names the line, so that an honest agent
learns at once and a careless one wastes no run. It cannot be the boundary, because Python is too
dynamic to check statically (names built at run time, reflection, other modules' attributes).
The boundary is elsewhere and does not trust train.py: the run's sandbox (no network, the
repository, the home directory and val.txt hidden, private /proc and PID namespace, resource
caps), the evaluator that scores in a separate process that never runs edited code, the hashes
of the protected files, and the agents' own confinement (they never see val.txt, holdout.txt or
the prepared data; SecretIndex refuses a train.py that carries the validation text anyway).
"""
from __future__ import annotations

import ast
import base64
import binascii
import bz2
import hashlib
import lzma
import re
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
from git import GitCommandError

from loop import gitops
from loop.errors import SetupError, UsageError

if TYPE_CHECKING:
    from loop.target import Target

SECRET_FILES = ("val.txt", "holdout.txt")  # the splits that score: no agent or train.py may carry them
PROTECTED_FILES = ("prepare.py", *SECRET_FILES, "program.md", "pyproject.toml", ".gitignore")
PROTECTED_DIRS = ("loop/", "scripts/")
EDITABLE = "train.py"
HARNESS_API = {"TIME_BUDGET", "MAX_SEQ_LEN", "VOCAB_SIZE", "train_batches", "data_dir"}
FORBIDDEN_MODULES = {
    "subprocess": "starts processes", "multiprocessing": "starts processes",
    "_thread": "runs code behind the evaluator's back",
    "concurrent": "starts processes or threads", "pty": "starts processes", "_posixsubprocess": "starts processes",
    "asyncio.subprocess": "starts processes", "socket": "opens network connections", "ctypes": "pokes at memory",
    "importlib": "rewires imports", "inspect": "reaches into the evaluator's frames",
    "gc": "reaches other objects through the collector", "builtins": "rebinds builtins",
    "__main__": "reaches the evaluator's module", "atexit": "runs code after the evaluator reports",
    "signal": "interferes with the run's control", "threading": "runs code behind the evaluator's back",
    "urllib": "uses the network", "http": "uses the network", "requests": "uses the network", "git": "drives git",
}
FORBIDDEN_CALLS = {"exec", "eval", "compile", "__import__", "globals", "setattr", "delattr", "breakpoint"}
FORBIDDEN_OS = {"system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "remove", "unlink", "rename",
                "replace", "_exit", "abort", "posix_spawn", "posix_spawnp", "write", "dup2", "pidfd_open"}
# Module attributes that are another module's handle on processes or the interpreter: a chain
# through them (`shutil.os.kill`, `torch.sys.modules`) reaches what a direct import may not.
REACH_THROUGH = {"os", "posix", "sys", "builtins", "subprocess", "importlib"}
ASYNC_SPAWN = {"create_subprocess_exec", "create_subprocess_shell", "subprocess_exec", "subprocess_shell"}
FORBIDDEN_STRINGS = {"val.txt": "reads the validation data", "bpb": "prints a metric line",
                     "eval_seconds": "prints a metric line", "AUTORESEARCH_VAL": "reads the validation data",
                     "AUTORESEARCH_RUN_TOKEN": "reaches the run's process token", ".git": "touches git",
                     "holdout": "reads the holdout data", "/proc/": "reaches other processes through /proc",
                     "/dev/fd": "writes to the evaluator's streams", "/dev/stdout": "writes to the evaluator's streams"}
# Dunder routes around the import and attribute rules: builtins, globals, frames, code objects.
ESCAPE_NAMES = {"__builtins__", "__loader__", "__spec__", "vars"}
ESCAPE_ATTRS = {"__dict__", "__globals__", "__code__", "__closure__", "__subclasses__", "__builtins__",
                "f_back", "f_globals", "f_locals", "gi_frame", "tb_frame", "__loader__", "__setattr__",
                "__delattr__", "__getattribute__"}
# Ending the process with success from inside the evaluator (build_model runs there) would leave
# forged metric lines last; exits with a constant non-zero status are a plain crash and allowed.
EXIT_CALLS = {"exit", "quit", "sys.exit"}
# Library settings a training script legitimately flips.
ALLOWED_ATTR_PREFIXES = ("torch.backends.", "torch._dynamo.config.", "torch._inductor.config.")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tracked(repo: Path) -> list[str]:
    return gitops.Git(repo).ls_files()


def is_protected(path: str) -> bool:
    return path in PROTECTED_FILES or path.startswith(PROTECTED_DIRS)


def protected_hashes(repo: Path) -> dict[str, str]:
    """sha256 of every tracked protected file as it is in the working tree now."""
    return {p: sha256_file(repo / p) for p in _tracked(repo) if is_protected(p) and (repo / p).is_file()}


def check_commit(repo: Path, commit: str, parent: str, protected: dict[str, str],
                 secrets: SecretIndex | None = None) -> list[str]:
    """The commit changes train.py only; train.py passes the lint and carries no secret text."""
    found = [f"{p} changed: only train.py may change" for p in gitops.Git(repo).changed_paths(parent, commit)
             if p != EDITABLE]
    source = _text_at(repo, commit, EDITABLE)
    found += lint_train_py(source)
    carried = secrets.found_in(source) if secrets is not None else None
    if carried:
        found.append(f"{EDITABLE} {carried}")
    return found + _hash_changes(repo, protected)


def untracked_modules(repo: Path) -> dict[str, tuple[int, int]]:
    """The untracked .py and .pth files of the working tree, each with its size and mtime: what the
    person keeps there (a virtualenv inside the checkout holds thousands) before any run."""
    return _working_tree(repo)[0]


def check_tree(repo: Path, protected: dict[str, str], known: dict[str, tuple[int, int]]) -> list[str]:
    """After a run: protected files intact, and no module that could shadow an import made or
    changed since `known` (untracked_modules when the daemon started) was taken."""
    modules, changed = _working_tree(repo)
    found = [f"new file {path} could shadow a module" if path not in known else
             f"untracked file {path} changed during the run: it could shadow a module"
             for path, signature in modules.items() if known.get(path) != signature]
    found += [f"{path} was modified during the run" for path in changed if path != EDITABLE]
    return found + _hash_changes(repo, protected)


def _working_tree(repo: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """The untracked .py and .pth files with their size and mtime, and the tracked files changed."""
    modules, changed = {}, []
    for status, path in gitops.Git(repo).status_entries():
        if status != "??":
            changed.append(path)
        elif path.endswith((".py", ".pth")):
            try:
                st = (repo / path).lstat()
            except OSError:
                continue
            modules[path] = (st.st_size, st.st_mtime_ns)
    return modules, changed


def target_protected_hashes(repo: Path, target: Target) -> dict[str, str]:
    """sha256 of every tracked file a custom target protects, as it is in the working tree now."""
    return {p: sha256_file(repo / p) for p in _tracked(repo) if target.is_protected(p) and (repo / p).is_file()}


def check_target_commit(repo: Path, commit: str, parent: str, protected: dict[str, str], target: Target) -> list[str]:
    """The commit changes the target's editable files only, keeps its frozen regions, and the
    protected files hash as at the start."""
    allowed = ", ".join(target.editable)
    found = [f"{p} changed: only {allowed} may change" for p in gitops.Git(repo).changed_paths(parent, commit)
             if not target.is_editable(p)]
    for region in target.frozen:
        before, after = (_text_at(repo, rev, region.path) for rev in (parent, commit))
        if region.text(before) is not None and region.text(before) != region.text(after):
            found.append(f"{region.path}: the frozen region from {region.begin!r} to {region.end!r} changed "
                         "(it must stay byte for byte as it is)")
    return found + _hash_changes(repo, protected)


def check_protected(repo: Path, protected: dict[str, str]) -> list[str]:
    """After a custom target's run: the protected files still hash as at the start."""
    return _hash_changes(repo, protected)


def _text_at(repo: Path, rev: str, path: str) -> str:
    """A file's text at a revision; "" when the revision has no such file."""
    return (gitops.Git(repo).file_at(rev, path) or b"").decode("utf-8", errors="replace")


def _hash_changes(repo: Path, protected: dict[str, str]) -> list[str]:
    found = []
    for path, digest in protected.items():
        f = repo / path
        if not f.is_file():
            found.append(f"protected file {path} was deleted")
        elif sha256_file(f) != digest:
            found.append(f"protected file {path} changed")
    return found


WINDOW = 32  # bytes: any run this long of a secret text, found anywhere in train.py, refuses it
MAX_WINDOWS = 2_000_000  # hashes kept per index; longer secrets keep every k-th window (runs >= WINDOW + k - 1)
MAX_DECODED = 1 << 20  # bytes taken from one decompressed literal: enough to see text, not a bomb
_SPACES = re.compile(rb"\s+")
_HEX_RUN = re.compile(rb"(?:[0-9a-f]{2}[\s,:]?){%d,}" % WINDOW)
_B64_RUN = re.compile(rb"[a-z0-9+/_-]{%d,}={0,2}" % (WINDOW * 4 // 3), re.IGNORECASE)
_DECIMALS = re.compile(rb"\d{1,3}")


def _normalised(data: bytes) -> bytes:
    """Case and whitespace do not hide text: `.upper()` or rewrapped lines still match."""
    return _SPACES.sub(b" ", data.lower())


def _steps(data: bytes) -> bytes:
    """Each byte's difference from the one before, mod 256: the same for the text with every byte
    shifted by one constant."""
    array = np.frombuffer(data, dtype=np.uint8)
    return np.diff(array).astype(np.uint8).tobytes()


def _flips(data: bytes) -> bytes:
    """Each byte XOR the one before: the same for the text with every byte XOR-ed with one constant."""
    array = np.frombuffer(data, dtype=np.uint8)
    return (array[1:] ^ array[:-1]).tobytes()


# The forms text is looked for in: as written (case and spacing aside), and two that undo a whole
# text shifted or XOR-ed by one constant byte (a one-line cipher a model can write and undo).
FORMS: dict[str, Callable[[bytes], bytes]] = {"": _normalised, ", shifted by a constant": _steps,
                                              ", XOR-ed with a constant": _flips}
MIN_DISTINCT = 8  # distinct bytes a window of a shifted or XOR-ed form needs to be indexed (text has more)
PLAIN_ONLY = ("the file", "its string literals reversed")  # their text is in the literals' views already


@dataclass(frozen=True)
class _Windows:
    """Hashed windows of the secret texts in one form.

    CRC-32 is the window hash: fast, the same in every process (the index may be pickled), and
    each hit is confirmed against the text itself, so its collisions cost time, never a verdict.
    """

    hashes: frozenset[int]
    texts: tuple[bytes, ...]  # in this form, to confirm a hash hit is the real text
    step: int

    @classmethod
    def build(cls, texts: Iterable[bytes], min_distinct: int = 0) -> _Windows:
        """`min_distinct`: windows with fewer distinct bytes are not indexed (in a shifted or XOR-ed
        form a banner of one repeated character is a run of zeros, which text may hold too)."""
        kept = tuple(t for t in texts if len(t) >= WINDOW)
        total = sum(len(t) - WINDOW + 1 for t in kept)
        step = max(1, -(-total // MAX_WINDOWS))
        crc = zlib.crc32
        hashes = frozenset(crc(w) for t in kept for i in range(0, len(t) - WINDOW + 1, step)
                           if len(set(w := t[i:i + WINDOW])) >= min_distinct)
        return cls(hashes, kept, step)

    def longest_run(self, view: bytes) -> int:
        """Length in bytes of the longest stretch of consecutive windows that are secret text."""
        longest, start, last = 0, 0, -len(view)
        crc, hashes = zlib.crc32, self.hashes
        for i in range(len(view) - WINDOW + 1):
            window = view[i:i + WINDOW]
            if crc(window) in hashes and any(window in t for t in self.texts):
                start = i if i - last > self.step else start  # a sampled index hits every step bytes
                last = i
                longest = max(longest, i - start + WINDOW)
        return longest


@dataclass(frozen=True)
class SecretIndex:
    """The texts no editable file or run's words may carry (val.txt, holdout.txt), indexed in each
    of FORMS. Built once per run (0.43 s measured for the builtin 256 KB val.txt, quiet); `found_in` hashes
    every window of a few views of a text, so its cost grows with the text, not the secrets."""

    forms: tuple[tuple[str, _Windows], ...]

    @classmethod
    def build(cls, texts: Iterable[bytes]) -> SecretIndex:
        raw = list(texts)
        return cls(tuple((name, _Windows.build((form(t) for t in raw), MIN_DISTINCT if name else 0))
                         for name, form in FORMS.items()))

    @property
    def size(self) -> int:
        return sum(len(windows.hashes) for _, windows in self.forms)

    def found_in(self, text: str) -> str | None:
        """Why `text` carries secret text (never quoting it), or None."""
        if not self.size:
            return None
        views = _views(text)
        best: tuple[int, str] = (0, "")
        for where, view in views:
            for name, windows in self.forms:
                if name and where in PLAIN_ONLY and len(views) > 1:
                    continue
                run = windows.longest_run(FORMS[name](view))
                if run > best[0]:
                    best = (run, where + name)
        if not best[0]:
            return None
        return f"carries validation text: a run of {best[0]} bytes of it in {best[1]}"


def secret_index(repo: Path, names: Iterable[str] = SECRET_FILES) -> SecretIndex:
    """The index of the repository's secret splits that exist (val.txt, holdout.txt)."""
    return SecretIndex.build((repo / name).read_bytes() for name in names if (repo / name).is_file())


def _views(text: str) -> list[tuple[str, bytes]]:
    """train.py as the text a run could recover: the file itself, its literals joined in source
    order, its integers as bytes, and the hex, base64, escaped, decimal and compressed forms."""
    raw = text.encode("utf-8", errors="replace")
    views = [("the file", raw)]
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return views
    literals: list[tuple[int, int, bytes]] = []
    small, big_be, big_le = bytearray(), bytearray(), bytearray()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
            continue
        value = node.value
        if isinstance(value, (str, bytes)):
            data = value.encode("utf-8", errors="replace") if isinstance(value, str) else value
            literals.append((node.lineno, node.col_offset, data))
        elif isinstance(value, int) and 0 <= value <= 255:
            small.append(value)
        elif isinstance(value, int) and value > 255:
            length = (value.bit_length() + 7) // 8
            big_be += value.to_bytes(length, "big")
            big_le += value.to_bytes(length, "little")
    # ast.walk is breadth first: sort the literals back into source order (ints come close
    # enough in walk order for lists and tuples, whose elements are siblings).
    joined = b"".join(data for _, _, data in sorted(literals, key=lambda item: item[:2]))
    views += [("its string literals", joined), ("its string literals reversed", joined[::-1]),
              ("its integers read as bytes", bytes(small)),
              ("its large integers read as bytes", bytes(big_be)), ("its large integers read as bytes", bytes(big_le))]
    views += [(f"its string literals decoded ({kind})", data) for kind, data in _decoded(joined)]
    return views


def _decoded(joined: bytes) -> list[tuple[str, bytes]]:
    """The forms a literal can hide text in, each decoded back to bytes."""
    lower = joined.lower()
    out = [("hex", b"".join(_unhex(m.group()) for m in _HEX_RUN.finditer(lower)))]
    with warnings.catch_warnings():  # a literal's stray backslash is its own business, not a warning of ours
        warnings.simplefilter("ignore", DeprecationWarning)
        escaped = joined.decode("unicode_escape", errors="ignore")
    out.append(("escapes", escaped.encode("utf-8", errors="replace")))
    out.append(("decimal numbers", bytes(int(d) for d in _DECIMALS.findall(joined) if int(d) <= 255)))
    for m in _B64_RUN.finditer(joined):
        data = _unbase64(m.group())
        if data:
            out.append(("base64", data))
    for kind, data in [("bytes", joined)] + list(out):
        unpacked = _decompressed(data)
        if unpacked:
            out.append((f"{kind}, decompressed", unpacked))
    return [(kind, data) for kind, data in out if len(data) >= WINDOW]


def _unhex(run: bytes) -> bytes:
    digits = re.sub(rb"[^0-9a-f]", b"", run)
    return binascii.unhexlify(digits[: len(digits) // 2 * 2])


def _unbase64(run: bytes) -> bytes:
    run = run.rstrip(b"=")
    try:
        return base64.b64decode(run + b"=" * (-len(run) % 4), altchars=b"-_" if b"-" in run or b"_" in run else None)
    except (binascii.Error, ValueError):
        return b""


def _decompressed(data: bytes) -> bytes:
    """zlib, gzip, bz2 or xz data inside `data`, inflated up to MAX_DECODED bytes."""
    starts = {b"\x78": "zlib", b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ": "xz"}
    for magic in starts:
        at = data.find(magic)
        while at != -1:
            out = _inflate(data[at:], magic)
            if len(out) >= WINDOW:
                return out
            at = data.find(magic, at + 1)
    return b""


def _inflate(data: bytes, magic: bytes) -> bytes:
    try:
        if magic in (b"\x78", b"\x1f\x8b"):
            return zlib.decompressobj(47).decompress(data, MAX_DECODED)  # 47: zlib or gzip header
        if magic == b"BZh":
            return bz2.BZ2Decompressor().decompress(data, MAX_DECODED)
        return lzma.LZMADecompressor().decompress(data, MAX_DECODED)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        return b""


def lint_train_py(text: str) -> list[str]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []  # not a guard matter: the run fails and the agent gets the error to fix
    modules = _module_aliases(tree)
    harness_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and n.module == "prepare" for a in n.names}
    main_block = {id(n) for top in tree.body if _is_main_guard(top) for n in ast.walk(top)}
    found = []

    def add(node: ast.AST, reason: str) -> None:
        found.append(f"train.py:{getattr(node, 'lineno', 0)}: {reason}")

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for reason in _import_findings(node):
                add(node, reason)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) or _is_str_concat(node):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else _folded(node)
            for needle, reason in FORBIDDEN_STRINGS.items():
                if needle in text:
                    add(node, f"mentions {needle!r}: {reason}")
        elif isinstance(node, ast.Name) and node.id in ESCAPE_NAMES:
            add(node, f"uses {node.id}, a route around the import and attribute rules")
        elif isinstance(node, ast.Raise) and _is_success_exit(node.exc) and id(node) not in main_block:
            add(node, "raises SystemExit with success, which could end the evaluator early")
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in FORBIDDEN_CALLS:
                add(node, f"calls {fn.id}(), which can rebind or run arbitrary code")
            if _dotted(fn) in EXIT_CALLS and not _constant_failure(node.args) and id(node) not in main_block:
                add(node, f"calls {_dotted(fn)}() without a constant non-zero status, which could end the evaluator early")
            if isinstance(fn, ast.Name) and fn.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                    and _dotted(node.args[0]).split(".")[0] in modules:
                name = node.args[1]
                if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                    add(node, f"calls {fn.id}() on module {_dotted(node.args[0])} with a computed name")
                else:  # a constant name is an attribute by another spelling: the same rules apply
                    for reason in _reference_findings(_resolved(f"{_dotted(node.args[0])}.{name.value}", modules)):
                        add(node, reason)
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if node.attr in ESCAPE_ATTRS:
                add(node, f"uses .{node.attr}, a route around the import and attribute rules")
            if dotted.startswith(("sys.modules", "sys._getframe", "sys.stdout", "sys.stderr")) and not isinstance(node.ctx, ast.Load):
                add(node, f"rebinds {dotted}")
            elif dotted in ("sys.modules", "sys._getframe"):
                add(node, f"uses {dotted}, which reaches the evaluator's modules")
            if dotted.split(".")[0] in modules:
                for reason in _reference_findings(_resolved(dotted, modules)):
                    add(node, reason)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets: list[ast.expr] = list(node.targets) if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in _flatten(targets):
                if isinstance(t, ast.Name) and t.id in harness_names:
                    add(node, f"rebinds the harness name {t.id}")
                elif isinstance(t, ast.Attribute):
                    dotted = _dotted(t)
                    root = dotted.split(".")[0]
                    if root in modules and not (modules[root] + dotted[len(root):]).startswith(ALLOWED_ATTR_PREFIXES):
                        add(node, f"assigns {dotted}: rebinding a library or harness attribute")
    return sorted(dict.fromkeys(found), key=lambda line: int(line.split(":")[1]))


def _import_findings(node: ast.Import | ast.ImportFrom) -> list[str]:
    """Forbidden modules, forbidden members of os, and members of prepare outside its API."""
    if isinstance(node, ast.Import):
        full = [a.name for a in node.names]
    else:  # `from asyncio import subprocess` imports asyncio.subprocess
        full = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
    found = []
    for name in full:
        for key in (name, name.split(".")[0]):
            if key in FORBIDDEN_MODULES:
                found.append(f"imports {name}, which {FORBIDDEN_MODULES[key]}")
                break
    if isinstance(node, ast.ImportFrom):
        for a in node.names:
            if node.module in ("os", "posix") and _forbidden_os(a.name) or a.name in ASYNC_SPAWN:
                found.append(f"imports {node.module}.{a.name}")
            if node.module == "prepare" and a.name not in HARNESS_API:
                found.append(f"imports prepare.{a.name}: train.py may use only {', '.join(sorted(HARNESS_API))}")
    return found


def _reference_findings(resolved: str) -> list[str]:
    """Rules on a module attribute by its resolved dotted name (`h.generate` -> `prepare.generate`)."""
    parts = resolved.split(".")
    found = []
    if parts[0] == "prepare" and len(parts) > 1 and parts[1] not in HARNESS_API:
        found.append(f"uses {'.'.join(parts[:2])}: train.py may use only {', '.join(sorted(HARNESS_API))}")
    if parts[0] in ("os", "posix") and len(parts) == 2 and _forbidden_os(parts[1]):
        found.append(f"uses {resolved}")
    hop = next((i for i in range(1, len(parts)) if parts[i] in REACH_THROUGH), None)
    if hop is not None:
        found.append(f"reaches {parts[hop]} through {'.'.join(parts[:hop])}, around the import rules")
    if parts[-1] in ASYNC_SPAWN or parts[-2:] == ["asyncio", "subprocess"]:
        found.append(f"uses {resolved}, which starts processes")
    return found


def _forbidden_os(name: str) -> bool:
    return name in FORBIDDEN_OS or name.startswith(("exec", "spawn"))


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` at module level: code the evaluator's import never runs."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.ops[0], ast.Eq) and _dotted(test.left) == "__name__"
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def _is_str_concat(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add))


def _folded(node: ast.AST) -> str:
    """The literal text of a string built by `+` or an f-string, holes left out ('val' + '_bpb')."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else ""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _folded(node.left) + _folded(node.right)
    if isinstance(node, ast.JoinedStr):
        return "".join(_folded(v) for v in node.values)
    return ""


def _constant_failure(args: list[ast.expr]) -> bool:
    return len(args) == 1 and isinstance(args[0], ast.Constant) and args[0].value not in (0, None, False)


def _is_success_exit(exc: ast.expr | None) -> bool:
    if isinstance(exc, ast.Name) and exc.id == "SystemExit":
        return True
    return isinstance(exc, ast.Call) and _dotted(exc.func) == "SystemExit" and not _constant_failure(exc.args)


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to modules (or their members) by imports: alias -> dotted origin."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _resolved(dotted: str, modules: dict[str, str]) -> str:
    """`_o.fork` -> `os.fork` after `import os as _o`."""
    root, _, rest = dotted.partition(".")
    origin = modules.get(root, root)
    return f"{origin}.{rest}" if rest else origin


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Subscript):
        return _dotted(node.value)
    return ".".join(reversed(parts))


def _flatten(targets: list[ast.expr]) -> list[ast.expr]:
    out: list[ast.expr] = []
    for t in targets:
        out.extend(_flatten(list(t.elts)) if isinstance(t, (ast.Tuple, ast.List)) else [t])
    return out


def check_command(repo: Path, rev: str | None, target_file: str | None = None) -> int:
    """`autoresearch check [REV]`: the commit guard of REV against its parent, as a command, for the
    target the daemon would guard REV with (see `_target_of`). Its own errors are told as every
    command tells them, also when it runs as a git hook (scripts/autoresearch-check)."""
    try:
        return _check(repo, rev or "HEAD", target_file)
    except (SetupError, UsageError) as e:
        print(f"autoresearch: {e}", file=sys.stderr)
        return e.exit_code


def _check(repo: Path, rev: str, target_file: str | None) -> int:
    git = gitops.Git(repo)
    root = git.root  # the declaration lives at the root
    commit_id = git.resolve(rev)
    if commit_id is None:
        raise UsageError(f"{rev} is not a commit of this repository: name one that exists (see `git log`)")
    target = _target_of(root, rev, target_file)
    if tags := _runs_started_at(root, commit_id):  # a run that kept nothing yet: its branch is still here
        on = _branch(root) if rev == "HEAD" else rev
        named = [t for t in tags if on in (t, gitops.BRANCH_PREFIX + t)]
        runs = f"run {named[0]}" if named else ("run " if len(tags) == 1 else "runs ") + ", ".join(tags)
        print(f"clean: {rev} ({commit_id[:7]}) is where {runs} started: nothing of the run to check yet")
        return 0
    parent_id = git.resolve(f"{commit_id}^")
    # What was compared, said on the verdict line: a bare "X changed" on a project's own commit reads as a bug.
    compared = f"{rev} ({commit_id[:7]})" + (f" against its parent ({parent_id[:7]})" if parent_id else
                                             ", a root commit with no parent to compare it with")
    guarded = ("the builtin target" if target.builtin else
               f"target {target.name} ({_shown_path(target.source, root)})")
    if target.builtin:
        found = _check_builtin(root, commit_id, parent_id)
        passed = "passes the lint and carries no validation text"
        if (unparsed := _syntax_error(git.file_at(commit_id, EDITABLE))) is not None:
            passed = f"carries no validation text, but does not parse ({unparsed}): as a run it would crash"
        clean = f"changes only {EDITABLE}, {passed}" if parent_id else passed
    else:  # as the daemon guards a custom target: its editable globs, frozen regions and protected files
        found = check_target_commit(root, commit_id, parent_id, {}, target) if parent_id else []
        allowed = ", ".join(target.editable)
        clean = (f"changes only {allowed}" + (", and keeps its frozen regions" if target.frozen else "")
                 if parent_id else "nothing to check: the guard compares a commit with its parent")
    if not found:
        print(f"clean: {compared}, by the guard of {guarded}: {clean}")
        return 0
    problems = f"{len(found)} problem" + ("s" if len(found) > 1 else "")
    print(f"refused: {compared}, by the guard of {guarded}: {problems}:")
    for line in found:
        print(line)
    if target.builtin and rev == "HEAD" and not _branch(root).startswith(gitops.BRANCH_PREFIX):  # a project's own commit
        print("(the guard judges an experiment's commit: `autoresearch check autoresearch/TAG` checks a run's best)")
    return 1


def _check_builtin(root: Path, commit: str, parent: str | None) -> list[str]:
    if gitops.Git(root).file_at(commit, EDITABLE) is None:
        return [f"{commit[:7]} has no {EDITABLE}: the builtin target edits {EDITABLE}; declare this repository's "
                "own target in autoresearch.toml (see examples/README.md), or check with --target FILE"]
    secrets = secret_index(root)
    if parent is not None:
        return check_commit(root, commit, parent, protected={}, secrets=secrets)
    # a root commit: nothing to compare with, the lint and the secrets still apply
    source = _text_at(root, commit, EDITABLE)
    carried = secrets.found_in(source)
    return lint_train_py(source) + ([f"{EDITABLE} {carried}"] if carried else [])


def _syntax_error(source: bytes | None) -> str | None:
    """Where and why train.py's text does not parse, or None when it does (or is missing)."""
    if source is None:
        return None
    try:
        ast.parse(source)
    except SyntaxError as e:
        return f"line {e.lineno}: {e.msg}"
    except ValueError as e:  # a null byte
        return str(e)
    return None


def _runs_started_at(root: Path, commit: str) -> list[str]:
    """The tags of this repository's runs that started at `commit` (their baseline)."""
    import json

    from loop.events import RunStarted, parse
    from loop.journal import JOURNAL_NAME, state_dir

    tags = []
    for journal in sorted((state_dir(root) / "runs").glob(f"*/{JOURNAL_NAME}")):
        try:
            with open(journal, encoding="utf-8") as f:
                first = parse(json.loads(f.readline()))  # a run's journal opens with its start
        except (OSError, ValueError, TypeError):
            continue
        if isinstance(first, RunStarted) and first.base_commit == commit:
            tags.append(journal.parent.name)
    return tags


def _branch(root: Path) -> str:
    """The branch checked out ("HEAD" when detached; "" before the first commit)."""
    try:
        return gitops.Git(root).current_branch()
    except GitCommandError:  # no commit yet
        return ""


def _target_of(root: Path, rev: str, given: str | None) -> Target:
    """--target FILE; else the target of the run whose branch REV names (its journal records the
    file it was started with, e.g. alpha.toml); else autoresearch.toml at the root; else the builtin."""
    from loop import target as targets  # here, not at the top: the daemon's import of the guard needs neither
    from loop.events import RunStarted
    from loop.journal import JOURNAL_NAME, read_events, run_dir

    if given is None:
        branch = rev.removeprefix("refs/heads/")
        tag = branch.removeprefix("autoresearch/") if branch.startswith("autoresearch/") else None
        if tag and "/" not in tag and not tag.startswith("."):
            started = [e for e in read_events(run_dir(root, tag) / JOURNAL_NAME) if isinstance(e, RunStarted)]
            if started:  # `start` records a declared target's file, autoresearch.toml too; none: the builtin
                given = started[0].config.get("target")
                return targets.of_config(root, given) if given else targets.BUILTIN
    return targets.of_config(root, given)


def _shown_path(path: Path | None, root: Path) -> str:
    if path is None:
        return ""
    resolved = path.resolve()
    return str(resolved.relative_to(root.resolve())) if resolved.is_relative_to(root.resolve()) else str(path)
