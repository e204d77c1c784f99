"""The claude-code agent against a stand-in `claude` executable that honours the JSON result."""
from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from daemon_kit import assert_invariants, make_repo, read_results, run_cli

STAND_IN = '''#!{python}
"""Stands in for `claude -p ... --output-format json`: edits train.py in its cwd, answers JSON."""
import json, pathlib, sys
argv = sys.argv[1:]
assert argv[0] == "-p" and "--output-format" in argv and argv[argv.index("--output-format") + 1] == "json"
assert "| 0 | keep |" in argv[1]  # the history reached the prompt
assert argv[argv.index("--allowedTools") + 1] == "Read,Edit(train.py),Write(train.py)"
mode = pathlib.Path({mode!r}).read_text().strip()
train = pathlib.Path("train.py")
if mode == "edit":
    train.write_text(train.read_text().replace("WIDTH = 8", "WIDTH = 16"))
elif mode == "cheat":
    pathlib.Path("prepare.py").write_text("# gone")
if mode == "error":
    print(json.dumps({{"type": "result", "subtype": "error_during_execution", "is_error": True, "result": "Invalid API key - please run /login"}}))
else:
    print(json.dumps({{"type": "result", "subtype": "success", "is_error": False, "num_turns": 3,
                      "result": "Widened the model.\\nDESCRIPTION: width 8 -> 16\\nHYPOTHESIS: more capacity helps",
                      "total_cost_usd": 0.0421, "usage": {{"input_tokens": 1200, "output_tokens": 300}}}}))
'''


def stand_in(tmp_path: Path, mode: str) -> Path:
    import sys

    (tmp_path / "mode").write_text(mode)
    exe = tmp_path / "claude"
    exe.write_text(STAND_IN.format(python=sys.executable, mode=str(tmp_path / "mode")))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


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


@pytest.mark.skipif(shutil.which("claude") is None, reason="the real claude CLI is not installed here")
def test_real_cli_answers_json() -> None:
    done = subprocess.run(["claude", "-p", "Reply with OK", "--output-format", "json", "--max-turns", "1"],
                          capture_output=True, text=True, timeout=300)
    assert '"type"' in done.stdout


def test_claude_code_agent_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from loop.agents.base import Context, HistoryItem
    from loop.agents.claude_code import ClaudeCodeAgent

    repo, _ = make_repo(tmp_path)
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", str(stand_in(tmp_path, "edit")))
    train = (repo / "train.py").read_text()
    context = Context(repo=repo, program="Lower val_bpb.", train_py=train, best_val_bpb=1.0,
                      history=(HistoryItem(0, "abcdef0", "keep", 1.0, None, 0.0, "baseline"),),
                      notes_path=tmp_path / "notes.md", run_dir=tmp_path / "exp", remaining_cost_usd=1.5)
    proposal = ClaudeCodeAgent(max_turns=5).propose(context)
    assert proposal.train_py == train.replace("WIDTH = 8", "WIDTH = 16") and proposal.hypothesis == "more capacity helps"
    assert proposal.usage.cost_usd == pytest.approx(0.0421) and proposal.usage.output_tokens == 300
    argv = json.loads((tmp_path / "exp/transcript.jsonl").read_text())["argv"]
    assert argv[argv.index("--max-budget-usd") + 1] == "1.5000" and argv[argv.index("--max-turns") + 1] == "5"
