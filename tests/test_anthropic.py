"""The Anthropic agent driven through the real `anthropic` client against a loopback server."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from daemon_kit import assert_invariants, folded, journal_events, make_repo, read_results, run_cli
from fake_anthropic import FakeAnthropic, error, message, scripted, text, tool

from loop.agents.anthropic_agent import AnthropicAgent
from loop.agents.base import Context, HistoryItem
from loop.errors import AgentFatal, AgentUnavailable, ProposalFailed

TRAIN = "LR = 0.02  # learning rate\nWIDTH = 8\n"
FAST = {"retry-after-ms": "10"}  # the SDK's own short retries, without real waiting


@pytest.fixture
def context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    repo, _ = make_repo(tmp_path)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    history = tuple(HistoryItem(n, f"{n:07d}", s, v, 1.0, 1.0, d, reason=r, diff="-LR = 0.02\n+LR = 0.03" if n == 2 else "")
                    for n, s, v, d, r in [(0, "keep", 1.0, "baseline", ""), (1, "crash", None, "huge LR", "exit 1: NaN"),
                                          (2, "discard", 1.1, "LR 0.02 -> 0.03", "")])
    return Context(repo=repo, program="Lower val_bpb.", train_py=TRAIN, history=history, best_val_bpb=1.0,
                   notes_path=tmp_path / "notes.md", run_dir=tmp_path / "exp", budget_seconds=300)


def run_agent(context: Context, replies: list, monkeypatch: pytest.MonkeyPatch) -> tuple[object, FakeAnthropic]:
    with FakeAnthropic(scripted(replies)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        try:
            return AnthropicAgent(max_turns=6).propose(context), server
        except Exception as e:  # noqa: BLE001 - returned for the test to inspect
            return e, server


def results_of(request: dict) -> list[dict]:
    last = request["body"]["messages"][-1]["content"]
    return [b for b in last if isinstance(b, dict) and b.get("type") == "tool_result"]


def test_view_edit_submit(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    proposal, server = run_agent(context, [
        message([text("Let me look."), tool("str_replace_based_edit_tool", command="view", path="/repo/train.py")], cache_write=900),
        message([tool("str_replace_based_edit_tool", command="str_replace", path="train.py", old_str="LR = 0.02", new_str="LR = 0.01")], cache_read=900),
        message([tool("write_notes", notes="LR 0.03 was worse; trying lower.")]),
        message([tool("submit_experiment", description="halve LR", hypothesis="0.02 overshoots")]),
    ], monkeypatch)
    assert proposal.train_py == TRAIN.replace("LR = 0.02", "LR = 0.01")
    assert proposal.description == "halve LR" and proposal.hypothesis == "0.02 overshoots"
    # Sonnet 5.5: $2 in, $10 out per MTok; 5m cache writes 1.25x, reads 0.1x.
    expected = (4 * 1000 * 2 + 4 * 200 * 10 + 900 * 2 * 1.25 + 900 * 2 * 0.1) / 1e6
    assert proposal.usage.cost_usd == pytest.approx(expected) and proposal.usage.calls == 4
    first = server.requests[0]["body"]
    assert [t["name"] for t in first["tools"]] == ["str_replace_based_edit_tool", "write_notes", "submit_experiment"]
    assert first["tools"][0]["type"] == "text_editor_20250728"
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"} and first["system"][0]["text"] == "Lower val_bpb."
    assert len(first["messages"]) == 1  # a fresh conversation
    stable, now = first["messages"][0]["content"]
    assert stable["cache_control"] == {"type": "ephemeral"} and "cache_control" not in now
    assert "| 1 | crash | - |  | 1.0 | huge LR (exit 1: NaN) |" in stable["text"] and "+LR = 0.03" in stable["text"]
    assert "LR = 0.02" in now["text"]
    assert "1\tLR = 0.02" in results_of(server.requests[1])[0]["content"]
    assert (context.notes_path.read_text()) == "LR 0.03 was worse; trying lower."
    lines = (context.run_dir / "transcript.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["response"]["content"][0]["text"] == "Let me look."


def test_tool_misuse_comes_back_as_errors(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    proposal, server = run_agent(context, [
        message([tool("str_replace_based_edit_tool", command="str_replace", path="train.py", old_str="LR = 0.5", new_str="x"),
                 tool("str_replace_based_edit_tool", command="str_replace", path="prepare.py", old_str="a", new_str="b"),
                 tool("str_replace_based_edit_tool", path="train.py"),
                 tool("str_replace_based_edit_tool", command="view", path="train.py", view_range=[5, 1]),
                 tool("submit_experiment", description="nothing", hypothesis="h")]),
        message([tool("str_replace_based_edit_tool", command="insert", path="train.py", insert_line=2, insert_text="DEPTH = 4"),
                 tool("submit_experiment", description="add depth", hypothesis="h")]),
    ], monkeypatch)
    errors = results_of(server.requests[1])
    assert all(r["is_error"] for r in errors) and len(errors) == 5
    assert "unchanged" in errors[4]["content"]
    assert "matches 0 times" in errors[0]["content"]
    assert "only train.py may be edited" in errors[1]["content"]
    assert "unknown command" in errors[2]["content"]
    assert "view_range" in errors[3]["content"]
    assert proposal.train_py == TRAIN + "DEPTH = 4\n"


def test_unchanged_submit_is_refused(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    proposal, server = run_agent(context, [
        message([tool("submit_experiment", description="same", hypothesis="h")]),
        message([tool("str_replace_based_edit_tool", command="create", path="train.py", file_text="LR = 1\n"),
                 tool("submit_experiment", description="rewrite", hypothesis="h")]),
    ], monkeypatch)
    assert "unchanged" in results_of(server.requests[1])[0]["content"]
    assert proposal.train_py == "LR = 1\n"


def test_never_submits(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, server = run_agent(context, [message([text("I think we should")], "end_turn"),
                                          message([text("still thinking")], "end_turn")], monkeypatch)
    assert isinstance(outcome, ProposalFailed) and "without submitting" in str(outcome)
    assert server.requests[1]["body"]["messages"][-1]["content"].startswith("Please finish")
    assert outcome.usage.calls == 2


def test_max_tokens_stop_then_submit(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    proposal, _ = run_agent(context, [
        message([text("A very long")], "max_tokens"),
        message([tool("str_replace_based_edit_tool", command="str_replace", path="train.py", old_str="WIDTH = 8", new_str="WIDTH = 16"),
                 tool("submit_experiment", description="wider", hypothesis="h")]),
    ], monkeypatch)
    assert proposal.description == "wider"


def test_overload_then_success(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    proposal, server = run_agent(context, [
        error(529, "overloaded_error", "Overloaded", **FAST),
        message([tool("str_replace_based_edit_tool", command="create", path="train.py", file_text="LR = 2\n"),
                 tool("submit_experiment", description="d", hypothesis="h")]),
    ], monkeypatch)
    assert proposal.description == "d" and len(server.requests) == 2


def test_rate_limit_reports_retry_after(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    limited = error(429, "rate_limit_error", "Slow down", **{"retry-after": "0.01"})
    outcome, server = run_agent(context, [limited, limited, limited], monkeypatch)
    assert isinstance(outcome, AgentUnavailable) and outcome.retry_after == pytest.approx(0.01)
    assert len(server.requests) == 3  # the SDK's two quick retries, then the daemon's turn


def test_outage_and_fatal_errors(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    down = error(500, "api_error", "Internal", **FAST)
    outcome, _ = run_agent(context, [down, down, down], monkeypatch)
    assert isinstance(outcome, AgentUnavailable)
    outcome, _ = run_agent(context, [error(401, "authentication_error", "invalid x-api-key")], monkeypatch)
    assert isinstance(outcome, AgentFatal) and "ANTHROPIC_API_KEY" in str(outcome)
    outcome, _ = run_agent(context, [error(404, "not_found_error", "model: nope")], monkeypatch)
    assert isinstance(outcome, AgentFatal) and "--model" in str(outcome)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    outcome, _ = run_agent(context, [], monkeypatch)
    assert isinstance(outcome, AgentFatal) and "not set" in str(outcome)


def researcher(outage: int):
    """A brain for whole-daemon runs: `outage` overloaded answers first, then edit LR and submit."""
    calls = {"n": 0}

    def brain(body: dict):
        calls["n"] += 1
        if calls["n"] <= outage:
            return error(529, "overloaded_error", "Overloaded", **{"retry-after": "0.3"})
        if body["messages"][-1]["role"] == "user" and isinstance(body["messages"][-1]["content"], list) \
                and body["messages"][-1]["content"][0].get("type") == "tool_result":
            return message([tool("submit_experiment", description=f"LR step {calls['n']}", hypothesis="lower is better here")])
        lr = float(re.search(r"LR = ([0-9.e-]+)", body["messages"][0]["content"][1]["text"]).group(1))
        return message([tool("str_replace_based_edit_tool", command="str_replace", path="train.py",
                             old_str=f"LR = {lr!r}", new_str=f"LR = {lr * 0.6!r}")])

    return brain


def test_whole_daemon_with_an_outage(tmp_path: Path) -> None:
    repo, env = make_repo(tmp_path)
    with FakeAnthropic(researcher(outage=6)) as server:
        env.update(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=server.url)
        done = run_cli(repo, "start", "--tag", "llm", "--max-experiments", "2", "--budget", "1", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    rows = read_results(repo)
    assert len(rows) == 3 and rows[1][3] == "keep" and rows[1][4].startswith("LR step")
    assert_invariants(repo, "llm")
    events = journal_events(repo, "llm")
    assert sum(e["event"] == "agent_waiting" for e in events) == 2  # waited, spent no experiment
    run = folded(events)
    # An edit and a submit per proposal, the overloaded answers not counted. Two proposals are asked
    # at once (one ahead), both from the baseline: the second, rebased onto the first once that is
    # kept, may change nothing and be asked again, so the count of proposals is read, not assumed.
    calls = 2 * sum(e["event"] == "proposed" and e["n"] > 0 for e in events)
    assert calls >= 4 and run.total_usage.calls == calls
    assert run.total_usage.cost_usd == pytest.approx(calls * (1000 * 2 + 200 * 10) / 1e6)
    assert (repo / ".autoresearch/runs/llm/0001/transcript.jsonl").exists()
    status = run_cli(repo, "status", env=env).stdout
    assert f"spend: ${run.total_usage.cost_usd:.2f}" in status


def test_history_table_stays_bounded() -> None:
    from loop.agents.prompt import BEST_ROWS, RECENT_ROWS, history_table

    items = tuple(HistoryItem(n, "x", "discard", 1.0 + (n % 97) / 1000, 1.0, 1.0, f"exp {n}") for n in range(1000))
    table = history_table(items).splitlines()
    assert len(table) <= 2 + BEST_ROWS + RECENT_ROWS + 1
    assert table[-1].startswith("(") and "more experiments not shown" in table[-1]
    assert any("| 999 |" in row for row in table) and any("| 0 |" in row for row in table)  # recent and best


def test_pricing_by_ttl_and_unknown_models() -> None:
    from types import SimpleNamespace

    from loop.agents.pricing import usage_of

    both = SimpleNamespace(input_tokens=1000, output_tokens=100, cache_read_input_tokens=5000, cache_creation_input_tokens=3000,
                           cache_creation=SimpleNamespace(ephemeral_5m_input_tokens=1000, ephemeral_1h_input_tokens=2000))
    used = usage_of("claude-opus-4-1", both)
    assert (used.cache_write_5m_tokens, used.cache_write_1h_tokens, used.cache_read_tokens) == (1000, 2000, 5000)
    assert used.cost_usd == pytest.approx((1000 * 15 + 100 * 75 + 1000 * 15 * 1.25 + 2000 * 15 * 2 + 5000 * 1.5) / 1e6)
    legacy = SimpleNamespace(input_tokens=0, output_tokens=0, cache_read_input_tokens=0, cache_creation_input_tokens=400, cache_creation=None)
    assert usage_of("claude-haiku-4-5", legacy).cost_usd == pytest.approx(400 * 1.25 / 1e6)
    assert usage_of("claude-someday-9", legacy).cost_usd == pytest.approx(400 * 15 * 1.25 / 1e6)  # the dearest known rate


def test_long_outage_then_recovery_each_proposal_fresh(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nine overloaded answers: each proposal attempt (three requests) raises AgentUnavailable; then it works."""
    down = error(529, "overloaded_error", "Overloaded", **{"retry-after": "0.01"})
    replies = [down] * 9 + [
        message([tool("str_replace_based_edit_tool", command="view", path="val.txt"),
                 tool("str_replace_based_edit_tool", command="view", path="notes-not-tracked.md"),
                 tool("str_replace_based_edit_tool", command="view", path="prepare.py", view_range=[1, 2])]),
        message([tool("str_replace_based_edit_tool", command="insert", path="train.py", insert_line=0, new_str="import math"),
                 tool("submit_experiment", description="  import\tmath  ", hypothesis="h")]),
    ]
    (context.repo / "notes-not-tracked.md").write_text("secret")
    with FakeAnthropic(scripted(replies)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        agent = AnthropicAgent(max_turns=6)
        for _ in range(3):
            with pytest.raises(AgentUnavailable) as raised:
                agent.propose(context)
            assert raised.value.retry_after == pytest.approx(0.01)
        proposal = agent.propose(context)
    assert proposal.train_py == "import math\n" + TRAIN and proposal.description == "import math"
    firsts = [r["body"] for r in server.requests[::3][:3]] + [server.requests[9]["body"]]
    assert all(len(body["messages"]) == 1 for body in firsts)  # every attempt starts a fresh conversation
    val, untracked, prepare = results_of(server.requests[10])
    assert val["is_error"] and "validation data" in val["content"]
    assert untracked["is_error"] and "not a tracked file" in untracked["content"]
    assert "is_error" not in prepare and prepare["content"].startswith("     1\t")


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connections are refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_check_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(AgentFatal, match="ANTHROPIC_API_KEY is not set"):
        AnthropicAgent().check()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with FakeAnthropic() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        AnthropicAgent().check()
        assert server.requests[-1]["path"] == "/v1/models/claude-sonnet-5-5"
        with pytest.raises(AgentFatal, match="--model"):
            AnthropicAgent(model="claude-nonesuch-1").check()
        monkeypatch.setenv("ANTHROPIC_API_KEY", "wrong-key")
        with pytest.raises(AgentFatal, match="authentication failed"):
            AnthropicAgent().check()
    with FakeAnthropic(models_reply=error(529, "overloaded_error", "Overloaded")) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        AnthropicAgent().check()  # busy is not broken: the run's backoff waits it out
        assert len(server.requests) == 1
    unreachable = ((closed_port_url(), "Connection refused"), ("http://no-such-host.invalid", "no-such-host.invalid"))
    for url, words in unreachable:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
        started = time.monotonic()
        with pytest.raises(AgentFatal, match="cannot reach") as raised:
            AnthropicAgent().check()
        assert words in str(raised.value) and "ANTHROPIC_BASE_URL" in str(raised.value)
        assert time.monotonic() - started < 30  # a few quick tries, not an outage to wait out


def test_refused_connection_during_the_run_is_an_outage(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", closed_port_url())
    with pytest.raises(AgentUnavailable, match="cannot reach the API"):
        AnthropicAgent().propose(context)


def test_editor_never_shows_secrets(tmp_path: Path) -> None:
    from loop.agents.tools import ToolError, Workspace

    repo, env = make_repo(tmp_path)
    cache = Path(env["AUTORESEARCH_CACHE"])
    (repo / "holdout.txt").write_text("holdout text\n")
    (repo / "peek.txt").symlink_to(repo / "val.txt")
    (repo / "data.txt").symlink_to(cache / "train.bin")
    import subprocess

    subprocess.run(["git", "add", "holdout.txt", "peek.txt", "data.txt"], cwd=repo, check=True)
    secrets = (repo / "val.txt", repo / "holdout.txt", cache)
    work = Workspace(repo, "LR = 1\n", tmp_path / "notes.md", secret_paths=secrets)
    for path in ("val.txt", "/repo/val.txt", str(repo / "val.txt"), "holdout.txt", "peek.txt", "data.txt",
                 "./notes/../val.txt", "../cache/train.bin", str(cache / "train.bin"), "prepare.py/../val.txt"):
        with pytest.raises(ToolError, match="not readable by agents|not a tracked file"):
            work.editor({"command": "view", "path": path})
    assert "VAL_SHA256" in work.editor({"command": "view", "path": "prepare.py"})
    outside = Workspace(repo, "", tmp_path / "notes.md")  # even with no secret paths given
    for path in ("val.txt", "peek.txt", "data.txt"):
        with pytest.raises(ToolError):
            outside.editor({"command": "view", "path": path})


def test_concurrent_proposals(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight proposals at once on one agent: each gets its own edit, notes stay whole, transcript
    lines stay whole."""
    from concurrent.futures import ThreadPoolExecutor

    assert AnthropicAgent.concurrent is True

    def brain(body: dict):
        first = body["messages"][0]["content"][1]["text"]
        tag = re.search(r"# worker (\d+)", first).group(1)
        if len(body["messages"]) == 1:
            return message([tool("str_replace_based_edit_tool", command="str_replace", path="train.py",
                                 old_str="WIDTH = 8", new_str=f"WIDTH = {tag}"),
                            tool("write_notes", notes=f"worker {tag} " * 500)])
        return message([tool("submit_experiment", description=f"width {tag}", hypothesis="h")])

    with FakeAnthropic(brain) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        agent = AnthropicAgent(max_turns=4)
        contexts = [Context(**{**context.__dict__, "train_py": TRAIN + f"# worker {n}\n"}) for n in range(8)]
        with ThreadPoolExecutor(8) as pool:
            proposals = list(pool.map(agent.propose, contexts))
    for n, proposal in enumerate(proposals):
        assert proposal.description == f"width {n}" and f"WIDTH = {n}\n" in proposal.train_py
    notes = context.notes_path.read_text()
    assert re.fullmatch(r"(worker (\d) )\1{499}", notes), notes[:80]
    lines = (context.run_dir / "transcript.jsonl").read_text().splitlines()
    assert len(lines) == 16 and all(json.loads(line) for line in lines)
