"""A run starts under the Python wherever it lives: a virtualenv in /tmp, a `.venv` inside a
checkout outside the home (whose val.txt and .git stay hidden), a pyenv installation in the home,
the system's; and a Python the sandbox cannot start is refused up front by self_check."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_kit import MARKER_MODULE, boxed, make_venv, needs_bwrap, outside  # noqa: F401  (outside: a fixture)

from loop import sandbox

pytestmark = needs_bwrap

PROBE = f"""
    import sys, {MARKER_MODULE}
    print("prefix:", sys.prefix)
    print("marker:", {MARKER_MODULE}.MARKER)
"""


def test_venv_in_tmp(tmp_path: Path) -> None:
    # The run's /tmp is a private tmpfs; the virtualenv's own /tmp path is bound back into it.
    python = make_venv(tmp_path / "venv", "venv in tmp")
    code, log = boxed(python, PROBE, sandbox.SandboxSpec(workdir=tmp_path / "work"), tmp_path / "log")
    assert code == 0, log
    assert f"prefix: {tmp_path / 'venv'}" in log and "marker: venv in tmp" in log


def test_in_repo_venv_outside_home(tmp_path: Path, outside: Path) -> None:
    repo = outside / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "val.txt").write_text("validation bytes\n")
    python = make_venv(repo / ".venv", "in-repo venv")
    run_dir = repo / ".autoresearch" / "runs" / "t" / "0001" / "train"  # where the runner puts a run
    spec = sandbox.SandboxSpec(workdir=run_dir, hide=(repo,))
    code, log = boxed(python, PROBE + f"""
    import os
    print("repo:", sorted(os.listdir({str(repo)!r})))
    print("val.txt:", os.path.exists({str(repo / 'val.txt')!r}), ".git:", os.path.exists({str(repo / '.git')!r}))
    """, spec, tmp_path / "log")
    assert code == 0, log
    assert "marker: in-repo venv" in log
    assert "repo: ['.autoresearch', '.venv']" in log and "val.txt: False .git: False" in log


def other_pyenv_python() -> Path | None:
    """A pyenv Python 3 in the home that is not the one running the tests (that one is bound
    because it is the tests' own base installation, which would prove nothing)."""
    own = Path(sys.base_prefix).resolve()
    for python in sorted((Path.home() / ".pyenv" / "versions").glob("3.*/bin/python3")):
        if python.resolve().parents[1] != own:
            return python
    return None


def test_pyenv_python_in_home(tmp_path: Path) -> None:
    python = other_pyenv_python()
    if python is None:
        pytest.skip("no second pyenv Python 3 in the home")
    code, log = boxed(python, "import sys, json; print('prefix:', sys.prefix)",
                      sandbox.SandboxSpec(workdir=tmp_path / "work"), tmp_path / "log")
    assert code == 0, log
    assert f"prefix: {python.parents[1]}" in log


def test_system_python(tmp_path: Path) -> None:
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no /usr/bin/python3")
    code, log = boxed(python, "import sys, json, ssl; print('prefix:', sys.prefix)",
                      sandbox.SandboxSpec(workdir=tmp_path / "work"), tmp_path / "log")
    assert code == 0, log
    assert "prefix: /usr" in log


def test_self_check_passes_for_this_python() -> None:
    assert sandbox.self_check(sys.executable, imports=("json",)) is None


def test_self_check_names_a_missing_module() -> None:
    line = sandbox.self_check(sys.executable, imports=("json", "autoresearch_no_such_module"))
    assert line is not None and "\n" not in line
    assert "cannot import autoresearch_no_such_module" in line and "pip install" in line


def test_self_check_refuses_a_python_it_cannot_start(tmp_path: Path, outside: Path) -> None:
    # A launcher that hands over to an interpreter in a place the sandbox never shows, as a pyenv
    # shim does: it works outside the sandbox and cannot inside.
    hidden = outside / "hidden"
    hidden.mkdir()
    (hidden / "python3").symlink_to(Path(sys.executable).resolve())
    launcher = tmp_path / "bin" / "python3"
    launcher.parent.mkdir()
    launcher.write_text(f"#!/bin/sh\nexec {hidden / 'python3'} \"$@\"\n")
    launcher.chmod(0o755)
    assert subprocess.run([str(launcher), "-c", "pass"]).returncode == 0
    line = sandbox.self_check(str(launcher))
    assert line is not None and "\n" not in line
    assert line.startswith(f"{launcher} does not start in the sandbox (") and "start again" in line
