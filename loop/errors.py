"""The typed errors that end a command, and the exit code each one maps to.

Every failure a user can cause or meet (bad flags, dirty tree, missing data, an agent with bad
credentials) is one of these. `cli.main` is the only place that catches them: it prints the
message as one line and exits with the class's code, so nothing else needs to know about exits.
"""
from __future__ import annotations


class AutoresearchError(Exception):
    """Base: a failure with a one-line message that says what is wrong and what to do."""

    exit_code = 1


class UsageError(AutoresearchError):
    """Wrong flags or arguments."""

    exit_code = 2


class SetupError(AutoresearchError):
    """The repository or data is not in a state to start: not a repo, dirty tree, data missing."""

    exit_code = 3


class AlreadyRunning(AutoresearchError):
    """Another daemon holds this repository's lock."""

    exit_code = 4


class NotRunning(AutoresearchError):
    """A command that needs a running daemon found none."""

    exit_code = 5


class JournalError(AutoresearchError):
    """The journal cannot be read or does not match git and results.tsv beyond repair."""

    exit_code = 6


class AgentFatal(AutoresearchError):
    """The agent cannot work at all (bad credentials, unknown model, missing CLI): stop the run."""

    exit_code = 7


class AgentUnavailable(Exception):
    """The agent cannot answer now (outage, rate limit, overload): the daemon backs off and retries.

    Not an AutoresearchError: it never reaches the user as an exit, the daemon absorbs it.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProposalFailed(Exception):
    """The agent tried but produced no usable proposal (never submitted, ran past its limits).

    Costs no experiment: no results row, no git change; the daemon asks again.
    """

    def __init__(self, message: str, usage: "object | None" = None) -> None:
        super().__init__(message)
        self.usage = usage


class GpuWedged(AutoresearchError):
    """The GPU's memory did not come free after a killed run: continuing would only crash."""

    exit_code = 8


class BudgetExhausted(AutoresearchError):
    """Free disk ran out: the run stops cleanly rather than corrupt its state."""

    exit_code = 9


class BaselineCrashed(AutoresearchError):
    """The unmodified experiment did not run: nothing can be compared until it does."""

    exit_code = 10


class InternalError(AutoresearchError):
    """A failure inside the daemon itself (not the experiment's): the run stops, resume continues."""

    exit_code = 11
