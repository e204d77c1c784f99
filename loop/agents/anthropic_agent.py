"""The research agent on the Anthropic API: a tool-use loop that edits train.py and submits.

Each proposal is one fresh conversation: program.md as the system prompt, the run's history and
the current train.py as the first message (see prompt.py), the text editor tool on an in-memory
train.py, `write_notes` for notes kept across experiments, and `submit_experiment` to end. Errors
map onto the agent protocol: outages become AgentUnavailable (the daemon waits), bad credentials
or models AgentFatal (the daemon stops), a conversation that never submits ProposalFailed.

`check()` runs once before the first experiment: no key, a wrong ANTHROPIC_BASE_URL (connection
refused, no such host, after a few quick tries), a bad key or an unknown model stop the run at
once with one line; an overloaded API passes, since the run's backoff waits that out. During the
run an unreachable API stays AgentUnavailable for as long as it lasts. Proposals may run in
several threads at once: each has its own client and conversation; notes and transcripts are
written under locks.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

import anthropic

from loop.agents import default_secret_paths
from loop.agents.base import Context, Proposal, Usage
from loop.agents.pricing import rates, usage_of
from loop.agents.prompt import first_message
from loop.agents.tools import ToolError, Workspace
from loop.errors import AgentFatal, AgentUnavailable, ProposalFailed

DEFAULT_MODEL = "claude-sonnet-5-5"  # the newest Sonnet the installed client lists
CHECK_TRIES, CHECK_PAUSE_S, CHECK_TIMEOUT_S = 3, 1.0, 10.0  # a wrong URL fails in seconds, not hours
_TRANSCRIPT_LOCK = threading.Lock()  # whole lines in transcripts, whatever the threads
REMINDER = "Please finish: make your edit to train.py if you have not, then call submit_experiment."
TOOLS = [
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    {"name": "write_notes", "description": "Replace your research notes (kept across experiments, 8000 characters at most).",
     "input_schema": {"type": "object", "properties": {"notes": {"type": "string"}}, "required": ["notes"]}},
    {"name": "submit_experiment", "description": "Submit the edited train.py as the next experiment. Ends your turn.",
     "input_schema": {"type": "object", "properties": {
         "description": {"type": "string", "description": "one line: what changed"},
         "hypothesis": {"type": "string", "description": "why it should lower val_bpb"}},
         "required": ["description", "hypothesis"]},
     "cache_control": {"type": "ephemeral"}},
]


class AnthropicAgent:
    name = "anthropic"
    concurrent = True  # no state shared between proposals but files written under locks

    def __init__(self, model: str = DEFAULT_MODEL, max_turns: int = 30, max_tokens: int = 16000,
                 secret_paths: tuple[Path, ...] = ()) -> None:
        self.model, self.max_turns, self.max_tokens = model, max_turns, max_tokens
        self.secret_paths = tuple(Path(p) for p in secret_paths)
        if not rates(model)[2]:
            print(f"warning: no price known for {model}: costs are estimated at the most expensive rate", file=sys.stderr)

    def check(self) -> None:
        """Before the run: a key, a reachable API, a key it accepts and a model it knows."""
        _require_key()
        client = anthropic.Anthropic(max_retries=0, timeout=CHECK_TIMEOUT_S)  # our own few quick tries
        last = ""
        for attempt in range(CHECK_TRIES):
            try:
                client.models.retrieve(self.model)
                return
            except (anthropic.RateLimitError, anthropic.InternalServerError):
                return  # reachable and answering, only busy: the run's backoff waits that out
            except anthropic.APIStatusError as e:
                if e.status_code >= 500:
                    return
                self._fatal(e, str(client.base_url))
            except anthropic.APIConnectionError as e:  # refused, no such host, or no answer in time
                timed_out = isinstance(e, anthropic.APITimeoutError)
                last = f"no answer within {CHECK_TIMEOUT_S:.0f}s" if timed_out else _cause(e)
            if attempt + 1 < CHECK_TRIES:
                time.sleep(CHECK_PAUSE_S)
        raise AgentFatal(f"anthropic: cannot reach {client.base_url} ({last}) after {CHECK_TRIES} tries: "
                         "check ANTHROPIC_BASE_URL and the network")

    def propose(self, context: Context) -> Proposal:
        _require_key()
        client = anthropic.Anthropic(max_retries=2)  # short: the daemon's backoff does the long waits
        notes = context.notes_path.read_text(encoding="utf-8") if context.notes_path.exists() else ""
        secrets = (*self.secret_paths, *default_secret_paths(context.repo))
        work = Workspace(context.repo, context.train_py, context.notes_path, secrets, files=dict(context.editable))
        system = [{"type": "text", "text": context.program, "cache_control": {"type": "ephemeral"}}]
        messages: list[dict] = [{"role": "user", "content": first_message(context, notes)}]
        usage, reminded = Usage(), False
        transcript = context.run_dir / "transcript.jsonl"
        context.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(self.max_turns):
            request = {"model": self.model, "max_tokens": self.max_tokens, "system": system, "tools": TOOLS, "messages": messages}
            response = self._call(client, request, usage)
            usage = usage + usage_of(self.model, response.usage)
            line = json.dumps({"ts": time.time(), "request": request,
                               "response": response.model_dump(mode="json")}) + "\n"
            with _TRANSCRIPT_LOCK, open(transcript, "a", encoding="utf-8") as f:
                f.write(line)
            if context.remaining_cost_usd is not None and usage.cost_usd > context.remaining_cost_usd:
                raise ProposalFailed(f"anthropic: stopped at ${usage.cost_usd:.2f}, past the remaining budget", usage)
            messages.append({"role": "assistant", "content": [b.model_dump(mode="json", exclude_none=True) for b in response.content]})
            results, submitted = self._run_tools(response.content, work)
            if submitted is not None:
                return Proposal(work.train_py, " ".join(str(submitted.get("description", "")).split())[:200] or "unnamed change",
                                str(submitted.get("hypothesis", "")), usage, files=work.changed_files())
            if results:
                messages.append({"role": "user", "content": results})
            elif reminded:
                raise ProposalFailed(f"anthropic: the model stopped ({response.stop_reason}) without submitting", usage)
            else:
                reminded = True
                messages.append({"role": "user", "content": REMINDER})
        raise ProposalFailed(f"anthropic: no submission within {self.max_turns} turns", usage)

    def _fatal(self, e: anthropic.APIStatusError, base_url: str) -> NoReturn:
        """Raise AgentFatal for an answer that says the run cannot work at all."""
        if isinstance(e, anthropic.AuthenticationError):
            raise AgentFatal("anthropic: authentication failed (401): check ANTHROPIC_API_KEY") from None
        if isinstance(e, anthropic.PermissionDeniedError):
            raise AgentFatal(f"anthropic: permission denied (403): {_message(e)}") from None
        if isinstance(e, anthropic.NotFoundError):
            raise AgentFatal(f"anthropic: model {self.model!r} not found (404) at {base_url}: "
                             "choose another with --model") from None
        raise AgentFatal(f"anthropic: the API refused a request for model {self.model!r} ({e.status_code}): "
                         f"{_message(e)}") from None

    def _call(self, client: anthropic.Anthropic, request: dict, usage: Usage):
        try:
            return client.messages.create(**request)
        except (anthropic.AuthenticationError, anthropic.PermissionDeniedError, anthropic.NotFoundError) as e:
            self._fatal(e, str(client.base_url))
        except anthropic.RateLimitError as e:
            raise AgentUnavailable(f"anthropic: rate limited (429): {_message(e)}", _retry_after(e)) from None
        except anthropic.APIStatusError as e:
            if e.status_code == 529 or e.status_code >= 500:
                raise AgentUnavailable(f"anthropic: overloaded or down ({e.status_code})", _retry_after(e)) from None
            raise ProposalFailed(f"anthropic: request refused ({e.status_code}): {_message(e)}", usage) from None
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as e:
            raise AgentUnavailable(f"anthropic: cannot reach the API ({type(e).__name__})") from None

    def _run_tools(self, content: list, work: Workspace) -> tuple[list[dict], dict | None]:
        results: list[dict] = []
        for block in content:
            if block.type != "tool_use":
                continue
            args = block.input if isinstance(block.input, dict) else {}
            try:
                if block.name == "submit_experiment":
                    if work.unchanged():
                        raise ToolError(f"{work.names()} is unchanged: edit it first, then submit")
                    if not str(args.get("description", "")).strip():
                        raise ToolError("submit_experiment needs a one-line description")
                    return results, args
                if block.name == "write_notes":
                    text = work.write_notes(args)
                elif block.name == "str_replace_based_edit_tool":
                    text = work.editor(args)
                else:
                    raise ToolError(f"unknown tool {block.name}")
                results.append({"type": "tool_result", "tool_use_id": block.id, "content": text})
            except ToolError as e:
                results.append({"type": "tool_result", "tool_use_id": block.id, "content": str(e), "is_error": True})
        return results, None


def _require_key() -> None:
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise AgentFatal("anthropic: ANTHROPIC_API_KEY is not set: export it, or use --agent search")


def _cause(e: BaseException) -> str:
    """The innermost reason of a connection error: `[Errno 111] Connection refused`, not `Connection error.`"""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return str(e)[:200] or type(e).__name__


def _message(e: anthropic.APIStatusError) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    return str(body.get("error", {}).get("message", e.message))[:200]


def _retry_after(e: anthropic.APIStatusError) -> float | None:
    try:
        return float(e.response.headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None
