"""The sandbox a training or evaluation process runs in.

With bubblewrap (`bwrap`): the host file system read-only, the repository and the user's home
hidden behind empty tmpfs mounts (so val.txt, .git and earlier experiments' files are out of
reach), only the run's own directories writable, no network, a private /tmp, /proc and PID
namespace (the whole tree dies with the sandbox), and the GPU device nodes bound in when there is
a GPU. Without bwrap, the process still gets its own session, resource limits and a tree kill,
and the daemon says once that the run is not sandboxed.
"""
from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NO_SANDBOX_WARNING = "warning: bubblewrap (bwrap) is not usable here: experiments run unsandboxed (apt-get install bubblewrap)"


@dataclass(frozen=True)
class SandboxSpec:
    workdir: Path
    writable: tuple[Path, ...] = ()
    readonly: tuple[Path, ...] = ()
    hide: tuple[Path, ...] = ()
    gpu: bool = False
    max_file_bytes: int = 8 << 30
    max_open_files: int = 4096


@functools.cache
def available() -> bool:
    """bwrap is installed and can actually create its namespaces here (nested containers may not)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    probe = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def warning() -> str | None:
    return None if available() else NO_SANDBOX_WARNING


def wrap(argv: list[str], spec: SandboxSpec) -> list[str]:
    if not available():
        return list(argv)
    cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
           "--unshare-all", "--die-with-parent", "--new-session"]
    for path in spec.hide:
        cmd += ["--tmpfs", str(path)]
    if spec.gpu:
        for node in sorted(Path("/dev").glob("nvidia*")):
            cmd += ["--dev-bind", str(node), str(node)]
    for path in spec.readonly:
        cmd += ["--ro-bind", str(path), str(path)]
    for path in (spec.workdir, *spec.writable):
        cmd += ["--bind", str(path), str(path)]
    return cmd + ["--chdir", str(spec.workdir), "--", *argv]


def limits_preexec(spec: SandboxSpec) -> Callable[[], None]:
    """A preexec_fn: caps on the size of any file written and on open files."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec.max_file_bytes, spec.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec.max_open_files, spec.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def gpu_present() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))
