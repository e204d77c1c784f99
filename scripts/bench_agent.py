#!/usr/bin/env python3
"""The LLM agent's prompt size as history grows, and its cost accounting over a scripted night.

    python scripts/bench_agent.py

1. The request body of a proposal's first call after 10, 100 and 1000 experiments of synthetic
   history (it must stay bounded: the table keeps the best and the most recent rows).
2. 100 proposals through a loopback Messages API server with fixed usage per call, priced by the
   agent, against the same sum computed by hand from the price table.
"""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from daemon_kit import make_repo  # noqa: E402
from fake_anthropic import FakeAnthropic, message, tool  # noqa: E402

from loop.agents.anthropic_agent import AnthropicAgent  # noqa: E402
from loop.agents.base import Context, HistoryItem  # noqa: E402

IN, OUT, WRITE, READ = 2000, 400, 1500, 6000  # tokens per call in the scripted night


def history(n: int) -> tuple[HistoryItem, ...]:
    rnd, best, items = random.Random(n), 1.2, []
    for i in range(n):
        status = rnd.choice(["keep", "discard", "discard", "discard", "crash"])
        bpb = None if status == "crash" else best + rnd.uniform(-0.01, 0.03)
        items.append(HistoryItem(i, f"{i:07x}", status, bpb, best, 40.0, f"experiment {i}: change a hyperparameter",
                                 reason="exit 1: RuntimeError" if bpb is None else "",
                                 diff="-LR = 0.02\n+LR = 0.03\n" * 20))
        best = min(best, bpb) if status == "keep" and bpb else best
    return tuple(items)


def brain(body: dict):
    last = body["messages"][-1]["content"]
    if isinstance(last, list) and last and last[0].get("type") == "tool_result":
        return message([tool("submit_experiment", description="d", hypothesis="h")], input_tokens=IN, output_tokens=OUT,
                       cache_write=WRITE, cache_read=READ)
    return message([tool("str_replace_based_edit_tool", command="create", path="train.py", file_text="LR = 0.01\n")],
                   input_tokens=IN, output_tokens=OUT, cache_write=WRITE, cache_read=READ)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        repo, _ = make_repo(Path(tmp))
        os.environ["ANTHROPIC_API_KEY"] = "bench"
        with FakeAnthropic(brain) as server:
            os.environ["ANTHROPIC_BASE_URL"] = server.url
            agent = AnthropicAgent()
            train_py = (ROOT / "train.py").read_text()
            for n in (10, 100, 1000):
                ctx = Context(repo, (ROOT / "program.md").read_text(), train_py, history(n), 1.1,
                              Path(tmp) / "notes.md", Path(tmp) / f"run{n}")
                start = len(server.requests)
                agent.propose(ctx)
                size = len(json.dumps(server.requests[start]["body"]))
                print(f"first request after {n:4d} experiments: {size:,} bytes (~{size // 4:,} tokens)")
            ok = True
            for model, inp, out in (("claude-sonnet-4-6", 3.0, 15.0), ("claude-sonnet-5-5", 2.0, 10.0)):
                server.requests.clear()
                agent, total = AnthropicAgent(model=model), 0.0
                for i in range(100):
                    ctx = Context(repo, "p", "LR = 0.02\n", history(20), 1.1, Path(tmp) / "notes.md", Path(tmp) / f"{model}-{i}")
                    total += agent.propose(ctx).usage.cost_usd
                calls = len(server.requests)
                by_hand = calls * (IN * inp + OUT * out + WRITE * inp * 1.25 + READ * inp * 0.1) / 1e6
                print(f"scripted night on {model}: 100 proposals, {calls} calls; "
                      f"cost by the agent ${total:.4f}, by hand ${by_hand:.4f}")
                ok = ok and abs(total - by_hand) < 1e-9
        return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
