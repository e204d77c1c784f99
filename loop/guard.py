"""The guard: what an experiment may not touch, checked after every proposal and every run.

Three checks, each returning one line per violation (empty when clean):
  check_commit  the commit changes train.py only, and train.py passes the lint;
  check_tree    the protected files still hash as at the run's start, and nothing new that could
                shadow a module sits in the repository;
  lint_train_py static rules against the known ways to game the metric from inside train.py.
The lint cannot prove good faith (Python is too dynamic); it closes the direct routes, and the
sandbox and the separate evaluator process close the rest.
"""
from __future__ import annotations

import ast
import hashlib
import subprocess
from pathlib import Path

PROTECTED_FILES = ("prepare.py", "val.txt", "program.md", "pyproject.toml", ".gitignore")
PROTECTED_DIRS = ("loop/", "scripts/")
EDITABLE = "train.py"
HARNESS_API = {"TIME_BUDGET", "MAX_SEQ_LEN", "VOCAB_SIZE", "train_batches", "data_dir"}
FORBIDDEN_MODULES = {
    "subprocess": "starts processes", "socket": "opens network connections", "ctypes": "pokes at memory",
    "importlib": "rewires imports", "inspect": "reaches into the evaluator's frames",
    "gc": "reaches other objects through the collector", "builtins": "rebinds builtins",
    "__main__": "reaches the evaluator's module", "atexit": "runs code after the evaluator reports",
    "signal": "interferes with the run's control", "threading": "runs code behind the evaluator's back",
    "urllib": "uses the network", "http": "uses the network", "requests": "uses the network", "git": "drives git",
}
FORBIDDEN_CALLS = {"exec", "eval", "compile", "__import__", "globals", "setattr", "delattr", "breakpoint"}
FORBIDDEN_OS = {"system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "remove", "unlink", "rename",
                "replace", "_exit", "abort"}
FORBIDDEN_STRINGS = {"val.txt": "reads the validation data", "bpb": "prints a metric line",
                     "eval_seconds": "prints a metric line", "AUTORESEARCH_VAL": "reads the validation data",
                     "AUTORESEARCH_RUN_TOKEN": "reaches the run's process token", ".git": "touches git"}
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
    out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def is_protected(path: str) -> bool:
    return path in PROTECTED_FILES or path.startswith(PROTECTED_DIRS)


def protected_hashes(repo: Path) -> dict[str, str]:
    """sha256 of every tracked protected file as it is in the working tree now."""
    return {p: sha256_file(repo / p) for p in _tracked(repo) if is_protected(p) and (repo / p).is_file()}


def check_commit(repo: Path, commit: str, parent: str, protected: dict[str, str]) -> list[str]:
    names = subprocess.run(["git", "diff", "--name-only", "--no-renames", parent, commit],
                           cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    found = [f"{p} changed: only train.py may change" for p in names if p != EDITABLE]
    text = subprocess.run(["git", "show", f"{commit}:{EDITABLE}"], cwd=repo, capture_output=True).stdout
    found += lint_train_py(text.decode("utf-8", errors="replace"))
    return found + _hash_changes(repo, protected)


def check_tree(repo: Path, protected: dict[str, str]) -> list[str]:
    """After a run: protected files intact and no new module that could shadow an import."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            cwd=repo, capture_output=True, text=True, check=True).stdout
    found = []
    for line in status.splitlines():
        path = line[3:]
        if line.startswith("??") and (path.endswith(".py") or path.endswith(".pth")):
            found.append(f"new file {path} could shadow a module")
        elif not line.startswith("??") and path != EDITABLE:
            found.append(f"{path} was modified during the run")
    return found + _hash_changes(repo, protected)


def _hash_changes(repo: Path, protected: dict[str, str]) -> list[str]:
    found = []
    for path, digest in protected.items():
        f = repo / path
        if not f.is_file():
            found.append(f"protected file {path} was deleted")
        elif sha256_file(f) != digest:
            found.append(f"protected file {path} changed")
    return found


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
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                root = name.split(".")[0]
                if root in FORBIDDEN_MODULES:
                    add(node, f"imports {name}, which {FORBIDDEN_MODULES[root]}")
            if isinstance(node, ast.ImportFrom) and node.module in ("os", "posix"):
                for a in node.names:
                    if a.name in FORBIDDEN_OS or a.name.startswith(("exec", "spawn")):
                        add(node, f"imports {node.module}.{a.name}")
            if isinstance(node, ast.ImportFrom) and node.module == "prepare":
                for a in node.names:
                    if a.name not in HARNESS_API:
                        add(node, f"imports prepare.{a.name}: train.py may use only {', '.join(sorted(HARNESS_API))}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) or _is_str_concat(node):
            text = node.value if isinstance(node, ast.Constant) else _folded(node)
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
            if (isinstance(fn, ast.Name) and fn.id in ("getattr", "hasattr") and len(node.args) >= 2
                    and not isinstance(node.args[1], ast.Constant) and _dotted(node.args[0]).split(".")[0] in modules):
                add(node, f"calls {fn.id}() on module {_dotted(node.args[0])} with a computed name")
            called = _resolved(_dotted(fn), modules)
            owner, _, attr = called.rpartition(".")
            if owner in ("os", "posix") and (attr in FORBIDDEN_OS or attr.startswith(("exec", "spawn"))):
                add(node, f"calls {called}")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if node.attr in ESCAPE_ATTRS:
                add(node, f"uses .{node.attr}, a route around the import and attribute rules")
            if dotted.startswith(("sys.modules", "sys._getframe", "sys.stdout", "sys.stderr")) and not isinstance(node.ctx, ast.Load):
                add(node, f"rebinds {dotted}")
            elif dotted in ("sys.modules", "sys._getframe"):
                add(node, f"uses {dotted}, which reaches the evaluator's modules")
            elif dotted.startswith("prepare.") and dotted.split(".")[1] not in HARNESS_API:
                add(node, f"uses {dotted}: train.py may use only {', '.join(sorted(HARNESS_API))}")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in _flatten(targets):
                if isinstance(t, ast.Name) and t.id in harness_names:
                    add(node, f"rebinds the harness name {t.id}")
                elif isinstance(t, ast.Attribute):
                    dotted = _dotted(t)
                    root = dotted.split(".")[0]
                    if root in modules and not (modules[root] + dotted[len(root):]).startswith(ALLOWED_ATTR_PREFIXES):
                        add(node, f"assigns {dotted}: rebinding a library or harness attribute")
    return sorted(dict.fromkeys(found), key=lambda line: int(line.split(":")[1]))


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


def check_command(repo: Path, rev: str | None) -> int:
    """`autoresearch check [REV]`: the commit guard of REV against its parent, as a command."""
    rev = rev or "HEAD"
    parent = subprocess.run(["git", "rev-parse", f"{rev}^"], cwd=repo, capture_output=True, text=True)
    if parent.returncode != 0:
        text = (repo / EDITABLE).read_text() if (repo / EDITABLE).exists() else ""
        found = lint_train_py(text)
    else:
        found = check_commit(repo, rev, parent.stdout.strip(), protected={})
    for line in found:
        print(line)
    if not found:
        print(f"clean: {rev} changes only train.py and passes the lint")
    return 1 if found else 0
