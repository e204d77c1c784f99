"""Asking the agent for experiments ahead of time, in threads, while the slots train.

The controller decides what to ask (a `Request`: the experiment's number, the parent it is built
on, the Context) and when; the Proposer only calls the agent and reports back through the
controller's event queue. Agents wait on the network, so threads are enough; an agent that cannot
take two requests at once (it says `concurrent = False`) gets one at a time.

An outage or rate limit (`AgentUnavailable`) is waited out inside the request's thread with
backoff, for as long as it lasts, and never spends an experiment.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from loop.agents.base import Agent, Context, Proposal, Usage
from loop.errors import AgentUnavailable, ProposalFailed
from loop.patience import start_thread

BACKOFF_START_S, BACKOFF_MAX_S = 5.0, 300.0


@dataclass(frozen=True)
class Request:
    n: int
    parent: str  # the best kept commit the proposal is built on
    attempt: int  # 0, or the fix attempt / conflict retry this is
    context: Context


@dataclass(frozen=True)
class ProposalReady:
    request: Request
    proposal: Proposal
    agent_seconds: float


@dataclass(frozen=True)
class ProposalError:
    """The agent tried and produced nothing usable: no experiment is spent, the number is asked again."""

    request: Request
    error: str
    usage: Usage


@dataclass(frozen=True)
class AgentWaiting:
    request: Request
    error: str
    retry_in: float


@dataclass(frozen=True)
class AgentBroken:
    """The agent cannot work at all (AgentFatal) or failed in a way nobody expected: stop the run."""

    request: Request
    error: Exception


class Proposer:
    def __init__(self, agent: Agent, events: queue.Queue, stopping: Callable[[], bool]) -> None:
        self.agent, self.events, self.stopping = agent, events, stopping
        self.capacity_limit = None if getattr(agent, "concurrent", False) else 1
        self._busy: set[int] = set()
        self._lock = threading.Lock()

    def in_flight(self) -> set[int]:
        with self._lock:
            return set(self._busy)

    def can_ask(self) -> bool:
        with self._lock:
            return self.capacity_limit is None or len(self._busy) < self.capacity_limit

    def ask(self, request: Request) -> None:
        with self._lock:
            self._busy.add(request.n)
        start_thread(threading.Thread(target=self._propose, args=(request,), name=f"propose-{request.n}", daemon=True))

    def _propose(self, request: Request) -> None:
        event = self._outcome(request)
        with self._lock:  # free the place before the controller hears, so it may ask again at once
            self._busy.discard(request.n)
        self.events.put(event)

    def _outcome(self, request: Request) -> ProposalReady | ProposalError | AgentBroken:
        delay = BACKOFF_START_S
        try:
            while not self.stopping():
                started = time.monotonic()
                try:
                    proposal = self.agent.propose(request.context)
                except AgentUnavailable as e:
                    wait = e.retry_after if e.retry_after is not None else delay  # the server knows best
                    self.events.put(AgentWaiting(request, str(e), wait))
                    self._sleep(wait)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                except ProposalFailed as e:
                    return ProposalError(request, str(e), e.usage if isinstance(e.usage, Usage) else Usage())
                return ProposalReady(request, proposal, round(time.monotonic() - started, 3))
            return ProposalError(request, "stopped while proposing", Usage())
        except Exception as e:  # AgentFatal, or a bug in a user's agent: the controller stops with one line
            return AgentBroken(request, e)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stopping():
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
