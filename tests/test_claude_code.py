"""The claude-code agent against a stand-in `claude` executable that honours the JSON result,
and its confinement: the stand-in tries to read the secrets by absolute path and cannot."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_kit import assert_invariants, make_repo, read_results, run_cli
from fake_anthropic import message, text, tool

from loop import sandbox
from loop.agents import default_secret_paths
from loop.agents.base import Context, HistoryItem
from loop.agents.claude_code import ClaudeCodeAgent, permission_settings, secret_forms
from loop.errors import AgentFatal

STAND_IN = '''#!{python}
"""Stands in for `claude -p ... --output-format json`: edits train.py in its cwd, answers JSON."""
import json, pathlib, sys
argv = sys.argv[1:]
if argv == ["--version"]:
    print("0.0.0 (stand-in)")
    sys.exit(0)
assert argv[0] == "-p" and "--output-format" in argv and argv[argv.index("--output-format") + 1] == "json"
assert "| 0 | keep |" in argv[1]  # the history reached the prompt
assert argv[argv.index("--allowedTools") + 1] == "Read,Edit(train.py),Write(train.py)"
assert argv[argv.index("--tools") + 1] == "Read,Edit,Write,Glob,Grep" and "--strict-mcp-config" in argv
settings = json.loads(pathlib.Path(argv[argv.index("--settings") + 1]).read_text())
mode = pathlib.Path({mode!r}).read_text().strip()
train = pathlib.Path("train.py")
tried = {{}}
if mode.startswith("snoop"):  # what a model gone astray would Read: the secrets, by absolute path
    for target in json.loads(pathlib.Path({probe!r}).read_text()):
        try:
            tried[target] = pathlib.Path(target).read_text()[:60]
        except OSError as e:
            tried[target] = "refused: " + type(e).__name__
if mode in ("edit", "snoop"):
    stolen = "".join(v for v in tried.values() if not v.startswith("refused"))
    train.write_text(train.read_text().replace("WIDTH = 8", "WIDTH = 16") + "# " + stolen.replace("\\n", " ") + "\\n")
elif mode == "cheat":
    pathlib.Path("prepare.py").write_text("# gone")
if mode == "error":
    print(json.dumps({{"type": "result", "subtype": "error_during_execution", "is_error": True,
                      "result": "Invalid API key - please run /login"}}))
else:
    print(json.dumps({{"type": "result", "subtype": "success", "is_error": False, "num_turns": 3,
                      "result": "Widened the model.\\nDESCRIPTION: width 8 -> 16\\nHYPOTHESIS: more capacity helps",
                      "total_cost_usd": 0.0421, "usage": {{"input_tokens": 1200, "output_tokens": 300}},
                      "tried": tried, "deny": settings["permissions"]["deny"],
                      "cwd_files": sorted(p.name for p in pathlib.Path().iterdir())}}))
'''


def stand_in(tmp_path: Path, mode: str, probe: list[str] | None = None) -> Path:
    (tmp_path / "mode").write_text(mode)
    (tmp_path / "probe.json").write_text(json.dumps(probe or []))
    exe = tmp_path / "claude"
    exe.write_text(STAND_IN.format(python=sys.executable, mode=str(tmp_path / "mode"),
                                   probe=str(tmp_path / "probe.json")))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def context_for(repo: Path, tmp_path: Path) -> Context:
    return Context(repo=repo, program="Lower val_bpb.", train_py=(repo / "train.py").read_text(), best_val_bpb=1.0,
                   history=(HistoryItem(0, "abcdef0", "keep", 1.0, None, 0.0, "baseline"),),
                   notes_path=tmp_path / "notes.md", run_dir=tmp_path / "exp", remaining_cost_usd=1.5)


def test_claude_code_through_the_daemon(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    env["AUTORESEARCH_CLAUDE_BIN"] = str(stand_in(tmp_path, "edit"))
    done = run_cli(repo, "start", "--tag", "cc", "--agent", "claude-code", "--max-experiments", "1", "--budget", "1", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    rows = read_results(repo)
    assert rows[1][3] == "keep" and rows[1][4] == "width 8 -> 16"
    assert_invariants(repo, "cc")
    status = run_cli(repo, "status", env=env).stdout
    assert "spend: $0.04" in status


def test_claude_code_failures(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    env["AUTORESEARCH_CLAUDE_BIN"] = str(stand_in(tmp_path, "cheat"))
    done = run_cli(repo, "start", "--tag", "c1", "--agent", "claude-code", "--max-experiments", "1", "--budget", "1", env=env)
    assert done.returncode == 3 and "only train.py may change" in done.stderr  # five refused proposals, then a stop
    env["AUTORESEARCH_CLAUDE_BIN"] = str(stand_in(tmp_path, "error"))
    done = run_cli(repo, "start", "--tag", "c2", "--agent", "claude-code", "--max-experiments", "1", "--budget", "1", env=env)
    assert done.returncode == 7 and "Invalid API key" in done.stderr
    env["AUTORESEARCH_CLAUDE_BIN"] = ""
    env["PATH"] = str(Path(shutil.which("git")).parent)  # no claude on PATH
    done = run_cli(repo, "start", "--tag", "c3", "--agent", "claude-code", "--budget", "1", env=env)
    assert done.returncode == 7 and "npm install -g @anthropic-ai/claude-code" in done.stderr


def test_check_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", str(stand_in(tmp_path, "edit")))
    ClaudeCodeAgent().check()
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'cannot start: missing library' >&2\nexit 127\n")
    broken.chmod(0o755)
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", str(broken))
    with pytest.raises(AgentFatal, match="missing library"):
        ClaudeCodeAgent().check()
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", "")
    monkeypatch.setenv("PATH", str(Path(shutil.which("git")).parent))
    with pytest.raises(AgentFatal, match="npm install -g @anthropic-ai/claude-code"):
        ClaudeCodeAgent().check()
    assert ClaudeCodeAgent.concurrent is False


def test_claude_code_agent_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = make_repo(tmp_path)
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", str(stand_in(tmp_path, "edit")))
    train = (repo / "train.py").read_text()
    proposal = ClaudeCodeAgent(max_turns=5).propose(context_for(repo, tmp_path))
    assert proposal.train_py.startswith(train.replace("WIDTH = 8", "WIDTH = 16"))
    assert proposal.hypothesis == "more capacity helps"
    assert proposal.usage.cost_usd == pytest.approx(0.0421) and proposal.usage.output_tokens == 300
    argv = json.loads((tmp_path / "exp/transcript.jsonl").read_text())["argv"]
    assert argv[argv.index("--max-budget-usd") + 1] == "1.5000" and argv[argv.index("--max-turns") + 1] == "5"


def test_secrets_are_out_of_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in Reads val.txt in the repository and the prepared data by absolute path, and a
    tracked symlink to val.txt from inside its copy: all refused; the proposal still works."""
    repo, env = make_repo(tmp_path)
    cache = Path(env["AUTORESEARCH_CACHE"])
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    (repo / "notes").mkdir()
    (repo / "notes" / "peek.txt").symlink_to(repo / "val.txt")
    subprocess.run(["git", "add", "notes/peek.txt"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "a link"], cwd=repo, check=True)
    probe = [str(repo / "val.txt"), str(cache / "train.bin"), "notes/peek.txt", str(repo / "prepare.py")]
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", str(stand_in(tmp_path, "snoop", probe)))
    proposal = ClaudeCodeAgent().propose(context_for(repo, tmp_path))
    assert "WIDTH = 16" in proposal.train_py
    assert "fixed validation text" not in proposal.train_py and "xxxx" not in proposal.train_py
    answer = json.loads(json.loads((tmp_path / "exp/transcript.jsonl").read_text())["stdout"])
    deny = answer["deny"]
    for secret in (repo / "val.txt", cache):
        assert f"Read(/{secret})" in deny and f"Read(/{secret}/**)" in deny
    assert f"Read(/{repo}/**)" in deny  # the real repository: the copy is where to read
    assert "val.txt" not in answer["cwd_files"] and "train.py" in answer["cwd_files"]
    assert answer["tried"]["notes/peek.txt"].startswith("refused")  # the link was not copied
    if not sandbox.available():
        pytest.skip("bubblewrap is not usable here: only Claude Code's settings confine the agent")
    assert all(answer["tried"][path].startswith("refused") for path in probe), answer["tried"]


def test_settings_cover_symlinked_secrets(tmp_path: Path) -> None:
    real = tmp_path / "data"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    deny = permission_settings(tmp_path / "repo", secret_forms((tmp_path / "link",)))["permissions"]["deny"]
    assert f"Read(/{tmp_path / 'link'}/**)" in deny and f"Read(/{real}/**)" in deny


def test_default_secret_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "c"))
    assert default_secret_paths(tmp_path) == (tmp_path / "val.txt", tmp_path / "holdout.txt", tmp_path / "c")
    monkeypatch.delenv("AUTORESEARCH_CACHE")
    assert default_secret_paths(tmp_path)[2] == Path.home() / ".cache" / "autoresearch"


REAL_CLI = os.environ.get("AUTORESEARCH_REAL_CLAUDE") or shutil.which("claude")


def snooping_model(targets: list[Path], seen: list[dict]):
    """A brain for the real CLI: Read each target, then Read and Edit train.py in the scratch
    copy, then answer. Every tool result the CLI sends back is kept in `seen`."""
    def brain(body: dict):
        if not body.get("tools"):  # the CLI's side requests (titles and the like)
            return message([text("ok")], "end_turn")
        results = [b for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list)
                   for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
        seen[:] = results
        where = re.search(r"(/[^\s\"']*autoresearch-claude-[^/\s\"']+/work|/[^\s\"']*/plain/work)", json.dumps(body))
        work = where.group(1)  # the scratch copy the CLI runs in, from its system prompt
        steps = [tool("Read", file_path=str(t)) for t in targets] + [
            tool("Grep", pattern="validation", path=str(targets[0].parent)),
            tool("Read", file_path=f"{work}/train.py"),
            tool("Edit", file_path=f"{work}/train.py", old_string="WIDTH = 8", new_string="WIDTH = 16")]
        if len(results) < len(steps):
            return message([steps[len(results)]])
        return message([text("Done.\nDESCRIPTION: width 8 -> 16\nHYPOTHESIS: more capacity")], "end_turn")
    return brain


@pytest.mark.skipif(REAL_CLI is None, reason="no real claude CLI here (on PATH, or named by AUTORESEARCH_REAL_CLAUDE)")
def test_real_cli_cannot_read_the_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real CLI, driven by a model that Reads val.txt and the prepared data by absolute path:
    its own permission settings refuse them (checked without the sandbox), and so does the whole
    agent, sandbox included; the proposal still works."""
    from fake_anthropic import FakeAnthropic

    repo, env = make_repo(tmp_path)
    cache = Path(env["AUTORESEARCH_CACHE"])
    targets = [repo / "val.txt", cache / "train.bin"]
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the CLI's config and sessions stay in the test
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", str(REAL_CLI))
    agent = ClaudeCodeAgent(max_turns=10)
    context = context_for(repo, tmp_path)
    seen: list[dict] = []
    with FakeAnthropic(snooping_model(targets, seen)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        # Layer one alone: the settings, as where bubblewrap does not work.
        root = tmp_path / "plain"
        (root / "work").mkdir(parents=True)
        (root / "work" / "train.py").write_text((repo / "train.py").read_text())
        settings = root / "settings.json"
        settings.write_text(json.dumps(permission_settings(repo, secret_forms(default_secret_paths(repo)))))
        done = subprocess.run(agent._argv("Propose an experiment.", context, settings), cwd=root / "work",
                              capture_output=True, text=True, timeout=300)
        assert json.loads(done.stdout)["is_error"] is False, done.stdout + done.stderr
        assert "WIDTH = 16" in (root / "work" / "train.py").read_text()
        refused = [r for r in seen if r.get("is_error")]
        assert len(refused) >= 3 and all("denied" in str(r["content"]) for r in refused[:3]), seen
        assert not any("fixed validation text" in str(r["content"]) or "xxxx" in str(r["content"]) for r in seen)
        # Both layers: the agent as the daemon runs it.
        proposal = agent.propose(context)
    assert "WIDTH = 16" in proposal.train_py and proposal.description == "width 8 -> 16"
    assert not any("fixed validation text" in str(r["content"]) or "xxxx" in str(r["content"]) for r in seen), seen
    assert sum(bool(r.get("is_error")) for r in seen) >= 3
    last = json.loads((tmp_path / "exp/transcript.jsonl").read_text().splitlines()[-1])
    assert last["sandboxed"] is sandbox.available()
