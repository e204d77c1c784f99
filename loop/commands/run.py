"""`autoresearch run`: one experiment of the working tree as it is; git is not touched."""
from __future__ import annotations

import time
from pathlib import Path

from loop import gitops, sandbox
from loop.commands.common import lock_path
from loop.commands.start import check_harness
from loop.display import Display
from loop.errors import SetupError
from loop.journal import state_dir
from loop.lock import read_holder
from loop.runner import Runner, RunSpec

PINNED = ("prepare.py", "val.txt", "holdout.txt")


def run_once(repo: Path, budget: float, timeout: float) -> int:
    root = gitops.Git(repo).root
    if read_holder(lock_path(root)):
        raise SetupError("a daemon is running in this repository: `autoresearch stop` it before a manual run")
    check_harness(root)
    exp_dir = state_dir(root) / "manual" / time.strftime("%Y%m%d-%H%M%S")
    exp_dir.mkdir(parents=True, exist_ok=True)
    pinned = {name: (root / name).read_bytes() for name in PINNED if (root / name).is_file()}
    display = Display()
    if warning := sandbox.warning():
        display.say(warning)
    started = time.monotonic()
    runner = Runner(root, pinned, on_line=lambda line: display.live(0, "training", time.monotonic() - started,
                                                                     budget, None))
    outcome = runner.run(RunSpec(train_py=(root / "train.py").read_bytes(), exp_dir=exp_dir, budget=budget,
                                 timeout=timeout))
    for key, value in outcome.summary.items():
        display.say(f"{key}: {value}")
    if outcome.val_bpb is None:
        display.say(f"crash: {outcome.reason} (logs in {exp_dir})")
        return 1
    display.say(f"val_bpb: {outcome.val_bpb:.6f} (logs in {exp_dir})")
    return 0
