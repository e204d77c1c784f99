"""Shared fixtures: the test kit on the import path, and the real builtin data prepared once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
MAIN = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding a small builtin training split (2 MB), prepared by the real prepare.py."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_BUILTIN_MB": "2"}
    subprocess.run([sys.executable, "prepare.py"], cwd=MAIN, env=env, check=True, capture_output=True)
    return cache

