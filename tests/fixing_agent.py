"""A user's own agent (`--agent fixing_agent:FixingAgent`) for the fix-attempt tests: its first
proposal imports a module that does not exist; asked to fix it, it hands back the same change
without the import."""
from __future__ import annotations

from loop.agents.base import Context, Proposal


class FixingAgent:
    name = "fixing"

    def propose(self, context: Context) -> Proposal:
        change = context.train_py.replace("LR = 0.02", "LR = 0.01")
        if context.fix_of:
            return Proposal(train_py=change, description="lower LR, fixed")
        return Proposal(train_py=change.replace("LR = 0.01", "LR = 0.01\nimport not_a_module"), description="lower LR")


class NamelessAgent:
    """An agent that gives itself no `name`: the journal calls it by what --agent said."""

    def propose(self, context: Context) -> Proposal:
        return Proposal(train_py=context.train_py.replace("LR = 0.02", "LR = 0.01"), description="lower LR")
