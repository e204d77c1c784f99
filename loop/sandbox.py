"""The sandbox a training or evaluation process runs in.

With bubblewrap (`bwrap`): the host file system read-only, the repository and the user's home
hidden behind small empty tmpfs mounts (so val.txt, .git and earlier experiments' files are out of
reach), only the run's own directories writable, no network, a private size-capped /tmp, its own
/proc and PID namespace (the whole tree dies with the sandbox), and the GPU device nodes bound in
when there is a GPU. In every case the process gets resource limits (file size, open files, core
dumps, address space on CPU) from `limits_preexec`, and `loop.procs` gives it its own session and
a tree kill. Without a working bwrap the daemon prints `warning()` once and runs unsandboxed.
"""
from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NO_SANDBOX_WARNING = ("warning: bubblewrap (bwrap) is not usable here: experiments run without a sandbox "
                      "(only resource limits and a tree kill); install it with `apt-get install bubblewrap`")
MEMORY_ENV = "AUTORESEARCH_MAX_MEMORY_MB"  # overrides the address-space cap of CPU runs
FILE_ENV = "AUTORESEARCH_MAX_FILE_MB"  # overrides the cap on any one file a run writes
MEMORY_SHARE = 0.75  # default cap on a CPU run's address space: this share of the host's RAM
HIDE_TMPFS_BYTES = 1 << 20  # the tmpfs over a hidden path holds only mount points
PRIVATE_TMP_BYTES = 1 << 30


@dataclass(frozen=True)
class SandboxSpec:
    workdir: Path
    writable: tuple[Path, ...] = ()
    readonly: tuple[Path, ...] = ()
    hide: tuple[Path, ...] = ()
    gpu: bool = False
    max_file_bytes: int = 8 << 30
    max_open_files: int = 4096
    max_memory_bytes: int | None = None  # None: MEMORY_ENV, else MEMORY_SHARE of RAM; never on a GPU


@functools.cache
def available() -> bool:
    """bwrap is installed and can create its namespaces here (nested containers often cannot)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    try:
        probe = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def warning() -> str | None:
    """The one line the daemon prints at start when runs cannot be sandboxed, else None."""
    return None if available() else NO_SANDBOX_WARNING


def wrap(argv: list[str], spec: SandboxSpec) -> list[str]:
    """The bwrap command line running argv under spec, or argv unchanged without bwrap."""
    if not available():
        return list(argv)
    cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           "--size", str(PRIVATE_TMP_BYTES), "--tmpfs", "/tmp",
           "--unshare-all", "--die-with-parent", "--new-session"]
    # Hidden paths first, so the binds below stay reachable inside them. The user's home goes too
    # (keys, caches, other checkouts), except the Python installation when it lives there.
    home = Path.home().resolve()
    hidden = (*spec.hide, home) if home != Path("/") else spec.hide
    for path in hidden:
        cmd += ["--size", str(HIDE_TMPFS_BYTES), "--tmpfs", str(path)]
    interpreter = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix)}
    for path in sorted(p for p in interpreter if p.is_relative_to(home)):
        cmd += ["--ro-bind", str(path), str(path)]
    if spec.gpu:
        for node in sorted(Path("/dev").glob("nvidia*")):
            cmd += ["--dev-bind", str(node), str(node)]
    for path in spec.readonly:
        cmd += ["--ro-bind", str(path), str(path)]
    for path in (spec.workdir, *spec.writable):
        cmd += ["--bind", str(path), str(path)]
    return cmd + ["--chdir", str(spec.workdir), "--", *argv]


def memory_cap(spec: SandboxSpec) -> int | None:
    """Bytes of address space a run may map; None on a GPU, where CUDA maps far more than it uses."""
    if spec.gpu:
        return None
    if spec.max_memory_bytes is not None:
        return spec.max_memory_bytes
    if MEMORY_ENV in os.environ:
        return int(float(os.environ[MEMORY_ENV]) * (1 << 20))
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_SHARE)


def limits_preexec(spec: SandboxSpec) -> Callable[[], None]:
    """A preexec_fn: caps on any one file's size, open files, core dumps and (on CPU) memory, so
    a disk filler or a memory hog fails inside its own run instead of taking the host down."""
    memory = memory_cap(spec)
    file_bytes = int(float(os.environ[FILE_ENV]) * (1 << 20)) if FILE_ENV in os.environ else spec.max_file_bytes

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec.max_open_files, spec.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return apply


def gpu_present() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))
