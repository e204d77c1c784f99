"""autoresearch: a daemon that does ML research overnight, one fixed-budget experiment at a time."""
from __future__ import annotations

__version__ = "0.1.0"
