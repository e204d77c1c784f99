"""The research agent as Claude Code: `claude -p` headless in a scratch copy of the tree.

For people who run on a Claude subscription rather than an API key. Claude Code may read the
scratch copy and edit train.py only; afterwards only train.py may differ, else the proposal is
refused. The reply ends with DESCRIPTION: and HYPOTHESIS: lines; the cost is `total_cost_usd`.

Confinement, two layers that do not depend on each other:
  - Claude Code's own permission settings (passed with --settings): only Read, Edit, Write, Glob
    and Grep exist (--tools), no MCP servers (--strict-mcp-config), and deny rules on reading or
    editing the real repository, the secret paths (val.txt, holdout.txt, the prepared data) and
    their resolved forms;
  - where bubblewrap works, a sandbox around the `claude` process that shows it the system
    read-only, the scratch copy (read-write), its own config dir and install, and the network,
    with the home directory, the repository, /tmp and the secret paths hidden.
The scratch copy itself never holds a secret: tracked files that are, or resolve to, one (or to
anything outside the repository) are not copied.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from loop import gitops, sandbox
from loop.agents import default_secret_paths
from loop.agents.base import Context, Proposal, Usage
from loop.agents.prompt import first_message
from loop.errors import AgentFatal, AgentUnavailable, ProposalFailed
from loop.patience import patiently

TIMEOUT_S = 1800.0
VERSION_TIMEOUT_S = 30.0
INSTALL = "npm install -g @anthropic-ai/claude-code"
INSTRUCTIONS = ("\n\nWork in this directory: edit train.py only (the daemon commits and trains, not you). "
                "End your reply with two lines:\nDESCRIPTION: <one line: what changed>\nHYPOTHESIS: <why it should help>")
TOOLS = "Read,Edit,Write,Glob,Grep"  # the only built-in tools that exist for the session
ALLOWED = "Read,Edit(train.py),Write(train.py)"  # what runs without asking; anything else is refused
DISALLOWED = "Bash,WebFetch,WebSearch,Task,NotebookEdit"  # belt and braces, should --tools change meaning
NO_BWRAP_WARNING = ("warning: bubblewrap is not usable here: the claude-code agent is confined by Claude Code's "
                    "permission settings only; install bubblewrap for a sandbox around it")


class ClaudeCodeAgent:
    name = "claude-code"
    concurrent = False  # one `claude` at a time: it shares its config dir and session files

    def __init__(self, model: str | None = None, max_turns: int = 30, secret_paths: tuple[Path, ...] = ()) -> None:
        self.model, self.max_turns = model, max_turns
        self.secret_paths = tuple(Path(p) for p in secret_paths)
        self.exe = os.environ.get("AUTORESEARCH_CLAUDE_BIN") or shutil.which("claude")

    def check(self) -> None:
        """Up front: the CLI is installed and runs; warn when only its settings confine it."""
        if not self.exe:
            raise AgentFatal(f"claude-code: the `claude` CLI is not installed: {INSTALL}")
        try:
            done = subprocess.run([self.exe, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AgentFatal(f"claude-code: {self.exe} does not run ({e}): reinstall it with {INSTALL}") from None
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise AgentFatal(f"claude-code: `{self.exe} --version` failed ({tail}): reinstall it with {INSTALL}")
        if not sandbox.available():
            print(NO_BWRAP_WARNING, file=sys.stderr)

    def propose(self, context: Context) -> Proposal:
        if not self.exe:
            raise AgentFatal(f"claude-code: the `claude` CLI is not installed: {INSTALL}")
        notes = context.notes_path.read_text(encoding="utf-8") if context.notes_path.exists() else ""
        prompt = "\n\n".join(block["text"] for block in first_message(context, notes)) + INSTRUCTIONS
        secrets = secret_forms((*self.secret_paths, *default_secret_paths(context.repo)))
        with tempfile.TemporaryDirectory(prefix="autoresearch-claude-") as tmp:
            root = Path(tmp)
            scratch = root / "work"
            copy_scratch(context.repo, scratch, secrets)
            editable = context.editable or {"train.py": context.train_py}
            for path, text in editable.items():
                (scratch / path).parent.mkdir(parents=True, exist_ok=True)
                (scratch / path).write_text(text, encoding="utf-8")
            settings = root / "settings.json"
            settings.write_text(json.dumps(permission_settings(context.repo, secrets), indent=1), encoding="utf-8")
            before = {p: p.read_bytes() for p in scratch.rglob("*")
                      if p.is_file() and str(p.relative_to(scratch)) not in editable}
            prompt = prompt.replace("edit train.py only", f"edit {', '.join(editable)} only")
            argv = self._argv(prompt, context, settings)
            command = confined(argv, root, hidden=(context.repo, *secrets))
            try:
                done = patiently(lambda: subprocess.run(command, cwd=scratch, capture_output=True, text=True,
                                                        timeout=TIMEOUT_S))
            except subprocess.TimeoutExpired:
                raise ProposalFailed(f"claude-code: no answer within {TIMEOUT_S:.0f}s") from None
            context.run_dir.mkdir(parents=True, exist_ok=True)
            with open(context.run_dir / "transcript.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"argv": argv[:1] + argv[3:], "sandboxed": command != argv, "prompt": prompt,
                                    "stdout": done.stdout, "stderr": done.stderr[-4000:]}) + "\n")
            result = _parse(done)
            usage = Usage(input_tokens=int(result.get("usage", {}).get("input_tokens", 0)),
                          output_tokens=int(result.get("usage", {}).get("output_tokens", 0)),
                          cost_usd=float(result.get("total_cost_usd", 0.0)), calls=int(result.get("num_turns", 1)))
            changed = [str(p.relative_to(scratch)) for p, data in before.items() if not p.exists() or p.read_bytes() != data]
            names = ", ".join(editable)
            if changed:
                raise ProposalFailed(f"claude-code: changed {', '.join(changed[:3])}; only {names} may change", usage)
            after = {p: (scratch / p).read_text(encoding="utf-8", errors="replace") if (scratch / p).is_file() else ""
                     for p in editable}
        if after == editable:
            raise ProposalFailed(f"claude-code: {names} was not changed", usage)
        reply = str(result.get("result", ""))
        files = {p: t for p, t in after.items() if t != editable[p]} if context.editable else {}
        return Proposal(after.get("train.py", ""), _field(reply, "DESCRIPTION") or "claude-code change",
                        _field(reply, "HYPOTHESIS"), usage, files=files)

    def _argv(self, prompt: str, context: Context, settings: Path) -> list[str]:
        argv = [str(self.exe), "-p", prompt, "--output-format", "json", "--max-turns", str(self.max_turns),
                "--tools", TOOLS, "--allowedTools", allowed(context), "--disallowedTools", DISALLOWED,
                "--permission-mode", "acceptEdits", "--settings", str(settings), "--strict-mcp-config",
                "--append-system-prompt", context.program]
        if self.model:
            argv += ["--model", self.model]
        if context.remaining_cost_usd is not None:  # the CLI stops itself before the run's cap
            argv += ["--max-budget-usd", f"{max(context.remaining_cost_usd, 0.0):.4f}"]
        return argv


def secret_forms(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    """Each secret path as given (absolute) and as it resolves: a symlink must not be a way in."""
    forms: dict[Path, None] = {}
    for p in paths:
        forms[Path(os.path.abspath(p))] = None
        forms[p.resolve()] = None
    return tuple(forms)


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def copy_scratch(repo: Path, scratch: Path, secrets: tuple[Path, ...]) -> None:
    """The repository's tracked files, minus secrets and anything that leads outside it."""
    real_repo = repo.resolve()
    for rel in gitops.Git(repo).ls_files():
        source = repo / rel
        target = source.resolve()
        if _under(source, secrets) or _under(target, secrets) or not target.is_relative_to(real_repo):
            continue
        if not target.is_file():
            continue
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, scratch / rel)


def allowed(context: Context) -> str:
    """The edits that run without asking: train.py's, or a declared target's editable files'."""
    if not context.editable:
        return ALLOWED
    return ",".join(["Read", *(f"{tool}({path})" for path in context.editable for tool in ("Edit", "Write"))])


def permission_settings(repo: Path, secrets: tuple[Path, ...]) -> dict:
    """Claude Code settings that refuse reading or editing the real repository and every secret.

    `//` starts an absolute path in a permission rule; `/**` covers a folder's contents.
    Deny rules win over any allow rule from the user's own settings.
    """
    rules = []
    for path in (*secret_forms((repo,)), *secrets):  # a path and, should it be a folder, all inside it
        rules += [f"{tool}(/{pattern})" for tool in ("Read", "Edit") for pattern in (path, f"{path}/**")]
    return {"permissions": {"deny": list(dict.fromkeys(rules)), "defaultMode": "acceptEdits"},
            "enableAllProjectMcpServers": False}


def confined(argv: list[str], root: Path, hidden: tuple[Path, ...]) -> list[str]:
    """argv inside bubblewrap: the system read-only, `root` (scratch copy and settings) read-write,
    the CLI's install and config dir, the network; home, /tmp, the repository and `hidden` out of
    sight. Unchanged when bubblewrap does not work here."""
    if not sandbox.available():
        return list(argv)
    home = Path.home()
    cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
           *sandbox.ISOLATION, "--share-net", "--die-with-parent", "--new-session"]
    covered = [Path("/tmp")]
    if home != Path("/"):
        cmd += ["--tmpfs", str(home)]
        covered.append(home)
    for path in hidden:  # secrets elsewhere on the system (a data cache on another disk)
        if path.exists() and not _under(path, tuple(covered)):
            cmd += _hide(path)
    binds = [p for p in install_roots(Path(argv[0])) if p != Path("/")]
    for path in binds:
        cmd += ["--ro-bind", str(path), str(path)]
    for path in config_paths(home):
        cmd += ["--bind", str(path), str(path)]
        binds.append(path)
    for path in hidden:  # a secret inside something bound above goes out of sight again
        if path.exists() and _under(path, tuple(binds)):
            cmd += _hide(path)
    return cmd + ["--bind", str(root), str(root), "--chdir", str(root / "work"), "--", *argv]


def _hide(path: Path) -> list[str]:
    return ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]


def install_roots(exe: Path) -> list[Path]:
    """Where the CLI and its interpreter live: each file's folder, or the folder above a `bin`."""
    files = [exe, exe.resolve()]
    interpreter = _shebang(exe.resolve())
    if interpreter is not None:
        files += [interpreter, interpreter.resolve()]
    roots: dict[Path, None] = {}
    for f in files:
        roots[f.parent.parent if f.parent.name == "bin" else f.parent] = None
    return list(roots)


def _shebang(script: Path) -> Path | None:
    """The interpreter a script names on its first line (`env X` looked up on PATH)."""
    try:
        with open(script, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    if Path(words[0]).name == "env" and len(words) > 1:
        found = shutil.which(words[-1])
        return Path(found) if found else None
    return Path(words[0])


def config_paths(home: Path) -> list[Path]:
    """Claude Code's own state: its config dir and ~/.claude.json (login, sessions)."""
    config_dir = Path(os.environ["CLAUDE_CONFIG_DIR"]) if os.environ.get("CLAUDE_CONFIG_DIR") else home / ".claude"
    return [p for p in (config_dir, home / ".claude.json") if p.exists()]


def _parse(done: subprocess.CompletedProcess) -> dict:
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        if any(w in tail.lower() for w in ("overloaded", "rate limit", "network", "timed out", "econn")):
            raise AgentUnavailable(f"claude-code: {tail}") from None
        raise ProposalFailed(f"claude-code: exit {done.returncode}: {tail}") from None
    if not isinstance(result, dict):
        raise ProposalFailed("claude-code: the CLI answered something other than a JSON object")
    if result.get("is_error"):
        text = str(result.get("result", result.get("subtype", "")))[:200]
        if any(w in text.lower() for w in ("login", "api key", "authentication", "credit")):
            raise AgentFatal(f"claude-code: {text}")
        raise ProposalFailed(f"claude-code: {text}")
    return result


def _field(reply: str, name: str) -> str:
    for line in reversed(reply.splitlines()):
        if line.strip().upper().startswith(name + ":"):
            return " ".join(line.split(":", 1)[1].split())[:200]
    return ""
