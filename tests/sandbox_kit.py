"""Test kit for the sandbox: a scratch directory outside /tmp and the home (the places the sandbox
used to hide wholesale, so only an allow-list keeps what is there out of sight), virtualenvs with
a marker module, and `python -c` run in the sandbox as a run is."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from loop import sandbox
from loop.procs import run_contained

needs_bwrap = pytest.mark.skipif(not sandbox.available(), reason="bwrap is not usable here")
OUTSIDE_CANDIDATES = ("/var/tmp", "/srv", "/opt", "/mnt")
MARKER_MODULE = "autoresearch_sandbox_probe"


@pytest.fixture
def outside() -> Iterator[Path]:
    """A fresh directory neither in /tmp nor in the home: where a checkout such as
    /workspace/project lives, and what a run used to see through a read-only host."""
    home, tmp = Path.home().resolve(), Path(tempfile.gettempdir()).resolve()
    for base in map(Path, OUTSIDE_CANDIDATES):
        elsewhere = not base.is_relative_to(home) and not base.is_relative_to(tmp)
        if elsewhere and base.is_dir() and os.access(base, os.W_OK):
            path = Path(tempfile.mkdtemp(prefix="autoresearch-test-", dir=base))
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)
            return
    pytest.skip(f"no writable directory outside /tmp and the home among {OUTSIDE_CANDIDATES}")


def make_venv(path: Path, marker: str) -> Path:
    """A virtualenv at path (no pip: fast) whose site-packages holds a module saying marker;
    returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / f"{MARKER_MODULE}.py").write_text(f"MARKER = {marker!r}\n")
    return python


def boxed(python: Path | str, code: str, spec: sandbox.SandboxSpec, log: Path,
          timeout: float = 60) -> tuple[int | None, str]:
    """Run `python -c code` in the sandbox of spec, with a run's clean environment; (exit, output)."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1",
           "HOME": str(spec.workdir), "TMPDIR": str(spec.workdir)}
    argv = sandbox.wrap([str(python), "-c", textwrap.dedent(code)], spec)
    res = run_contained(argv, cwd=spec.workdir, env=env, timeout=timeout, log_path=log,
                        preexec=sandbox.limits_preexec(spec))
    return res.returncode, log.read_text(errors="replace")
