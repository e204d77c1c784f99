"""Waiting for the GPU to come free after a killed run, without importing torch in the daemon."""
from __future__ import annotations

import shutil
import subprocess
import time

from loop.errors import GpuWedged

POLL_S = 2.0


def _smi(*args: str) -> list[str]:
    """Lines of an nvidia-smi query; empty without a GPU or when it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, *args, "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def count() -> int:
    return len(_smi("--query-gpu=index"))


def busy_processes(device: str | None = None) -> list[str]:
    """`pid, used_memory` of every process holding memory on the device (every GPU when None)."""
    return _smi("--query-compute-apps=pid,used_memory", *(("-i", device) if device is not None else ()))


def wait_for_free_memory(timeout_s: float = 120.0, device: str | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while busy := busy_processes(device):
        if time.monotonic() > deadline:
            raise GpuWedged(f"GPU memory still held {timeout_s:.0f}s after a killed run ({'; '.join(busy[:3])}): "
                            "free the GPU (nvidia-smi), then `autoresearch resume`")
        time.sleep(POLL_S)
