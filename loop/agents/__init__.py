"""Agents: whatever proposes the next train.py (see base.py for the protocol), and the registry
that makes one by name: search, queue, anthropic, claude-code, or `module:Class` for your own.

Beyond `propose`, each agent class says whether it may be called from several threads at once
(`concurrent`), and may offer `check()`, which the daemon calls before the first experiment: it
raises AgentFatal with one line when the agent cannot work (no key, no CLI, wrong URL or model).
Agents never show a tool the secret paths (default_secret_paths and AgentOptions.secret_paths).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loop.agents.base import Agent
from loop.errors import AgentFatal, UsageError

NAMES = ("search", "queue", "anthropic", "claude-code")


SECRET_FILES = ("val.txt", "holdout.txt")  # in the repository: the splits that score
CACHE_ENV = "AUTORESEARCH_CACHE"  # the prepared data's folder (default ~/.cache/autoresearch)


@dataclass
class AgentOptions:
    queue_dir: Path | None = None
    model: str | None = None
    seed: int = 0  # the search agent's random draws (start: from the tag)
    on_gpu: bool = False
    should_stop: Callable[[], bool] | None = None
    secret_paths: tuple[Path, ...] = ()  # what no agent tool may read; default_secret_paths(repo) is the floor


def default_secret_paths(repo: Path) -> tuple[Path, ...]:
    """The validation and holdout splits and the prepared data: never shown to an agent."""
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autoresearch").expanduser()
    return (*(repo / name for name in SECRET_FILES), cache)


def default_agent_name() -> str:
    return "anthropic" if os.environ.get("ANTHROPIC_API_KEY") else "search"


def make_agent(name: str, options: AgentOptions) -> Agent:
    if name == "search":
        from loop.agents.search import SearchAgent

        return SearchAgent(seed=options.seed, on_gpu=options.on_gpu)
    if name == "queue":
        from loop.agents.queue import QueueAgent

        return QueueAgent(options.queue_dir, should_stop=options.should_stop)
    if name in ("anthropic", "claude-code"):
        module = "anthropic_agent" if name == "anthropic" else "claude_code"
        try:
            mod = importlib.import_module(f"loop.agents.{module}")
        except ImportError:
            raise AgentFatal(f"the {name} agent is not available in this installation") from None
        cls = getattr(mod, "AnthropicAgent" if name == "anthropic" else "ClaudeCodeAgent")
        model = {"model": options.model} if options.model else {}
        return cls(secret_paths=options.secret_paths, **model)
    if ":" in name:
        return _own_agent(name)
    raise UsageError(f"--agent {name}: unknown agent; choose one of {', '.join(NAMES)} or module:Class")


def _own_agent(name: str) -> Agent:
    """Your own agent, `package.module:ClassName`, constructed with no arguments; refused in one
    line, before anything is made of the run, when it cannot be loaded or is no agent."""
    module, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"--agent {name}: cannot load it ({e})") from None
    except Exception as e:  # the module itself fails as it is imported
        raise UsageError(f"--agent {name}: importing {module} failed ({type(e).__name__}: {e})") from None
    if not callable(factory) or not callable(getattr(factory, "propose", None)):
        raise UsageError(f"--agent {name}: {attr} is not an agent class (no propose(context) method; "
                         "see loop/agents/base.py)")
    try:
        agent = factory()
    except Exception as e:
        raise UsageError(f"--agent {name}: {attr}() failed ({type(e).__name__}: {e}): it is made with no arguments") from None
    if not isinstance(getattr(agent, "name", None), str):
        try:
            agent.name = name  # what the journal calls it
        except AttributeError:
            raise UsageError(f"--agent {name}: give {attr} a `name` attribute (a string)") from None
    return agent
