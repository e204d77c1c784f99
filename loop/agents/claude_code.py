"""The research agent as Claude Code: `claude -p` headless in a scratch copy of the tree.

For people who run on a Claude subscription rather than an API key. Claude Code may read the
scratch copy and edit train.py only; afterwards only train.py may differ, else the proposal is
refused. The reply ends with DESCRIPTION: and HYPOTHESIS: lines; the cost is `total_cost_usd`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from loop.agents.base import Context, Proposal, Usage
from loop.agents.prompt import first_message
from loop.errors import AgentFatal, AgentUnavailable, ProposalFailed

TIMEOUT_S = 1800.0
INSTRUCTIONS = ("\n\nWork in this directory: edit train.py only (the daemon commits and trains, not you). "
                "End your reply with two lines:\nDESCRIPTION: <one line: what changed>\nHYPOTHESIS: <why it should help>")


class ClaudeCodeAgent:
    name = "claude-code"

    def __init__(self, model: str | None = None, max_turns: int = 30) -> None:
        self.model, self.max_turns = model, max_turns
        self.exe = os.environ.get("AUTORESEARCH_CLAUDE_BIN") or shutil.which("claude")

    def propose(self, context: Context) -> Proposal:
        if not self.exe:
            raise AgentFatal("claude-code: the `claude` CLI is not installed: npm install -g @anthropic-ai/claude-code")
        notes = context.notes_path.read_text(encoding="utf-8") if context.notes_path.exists() else ""
        prompt = "\n\n".join(block["text"] for block in first_message(context, notes)) + INSTRUCTIONS
        with tempfile.TemporaryDirectory(prefix="autoresearch-claude-") as tmp:
            scratch = Path(tmp)
            tracked = subprocess.run(["git", "ls-files", "-z"], cwd=context.repo, capture_output=True, check=True).stdout
            for rel in filter(None, tracked.decode().split("\0")):
                if rel == "val.txt":
                    continue
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(context.repo / rel, scratch / rel)
            (scratch / "train.py").write_text(context.train_py, encoding="utf-8")
            before = {p: p.read_bytes() for p in scratch.rglob("*") if p.is_file() and p.name != "train.py"}
            argv = [self.exe, "-p", prompt, "--output-format", "json", "--max-turns", str(self.max_turns),
                    "--allowedTools", "Read,Edit(train.py),Write(train.py)", "--permission-mode", "acceptEdits",
                    "--append-system-prompt", context.program]
            if self.model:
                argv += ["--model", self.model]
            if context.remaining_cost_usd is not None:  # the CLI stops itself before the run's cap
                argv += ["--max-budget-usd", f"{max(context.remaining_cost_usd, 0.0):.4f}"]
            try:
                done = subprocess.run(argv, cwd=scratch, capture_output=True, text=True, timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise ProposalFailed(f"claude-code: no answer within {TIMEOUT_S:.0f}s") from None
            context.run_dir.mkdir(parents=True, exist_ok=True)
            with open(context.run_dir / "transcript.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"argv": argv[:1] + argv[3:], "prompt": prompt, "stdout": done.stdout, "stderr": done.stderr[-4000:]}) + "\n")
            result = _parse(done)
            usage = Usage(input_tokens=int(result.get("usage", {}).get("input_tokens", 0)),
                          output_tokens=int(result.get("usage", {}).get("output_tokens", 0)),
                          cost_usd=float(result.get("total_cost_usd", 0.0)), calls=int(result.get("num_turns", 1)))
            changed = [str(p.relative_to(scratch)) for p, data in before.items() if not p.exists() or p.read_bytes() != data]
            if changed:
                raise ProposalFailed(f"claude-code: changed {', '.join(changed[:3])}; only train.py may change", usage)
            train_py = (scratch / "train.py").read_text(encoding="utf-8", errors="replace")
        if train_py == context.train_py:
            raise ProposalFailed("claude-code: train.py was not changed", usage)
        reply = str(result.get("result", ""))
        return Proposal(train_py, _field(reply, "DESCRIPTION") or "claude-code change", _field(reply, "HYPOTHESIS"), usage)


def _parse(done: subprocess.CompletedProcess) -> dict:
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        if any(w in tail.lower() for w in ("overloaded", "rate limit", "network", "timed out", "econn")):
            raise AgentUnavailable(f"claude-code: {tail}") from None
        raise ProposalFailed(f"claude-code: exit {done.returncode}: {tail}") from None
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
