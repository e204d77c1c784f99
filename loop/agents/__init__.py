"""Agents: whatever proposes the next train.py. See base.py for the protocol."""
from __future__ import annotations
