"""What several commands share: where the daemon's lock, last tag and live state live."""
from __future__ import annotations

import json
from pathlib import Path

from loop.journal import state_dir

LAST_TAG = "last_tag"


def lock_path(repo: Path) -> Path:
    return state_dir(repo) / "daemon.lock"


def state_path(repo: Path) -> Path:
    return state_dir(repo) / "state.json"


def last_tag(root: Path) -> str | None:
    path = state_dir(root) / LAST_TAG
    return path.read_text().strip() or None if path.exists() else None


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
