"""`autoresearch run`: one experiment of the working tree as it is; no branch, ref, index or
working-tree file is touched.

The builtin experiment trains train.py from the working tree. A target declared in
autoresearch.toml (or --target FILE) runs as the daemon runs it (TargetRunner: build, run and
evaluate in the sandbox, from a fresh copy of the files), the copy being the working tree's
files that git would commit: tracked ones and untracked ones not ignored, edits included.
"""
from __future__ import annotations

import time
from pathlib import Path

from loop import gitops, sandbox
from loop import target as targets
from loop.commands.common import lock_path
from loop.commands.start import check_harness, check_target, prepare_target
from loop.display import Display
from loop.errors import SetupError, UsageError
from loop.journal import state_dir
from loop.lock import read_holder
from loop.runner import Runner, RunSpec
from loop.summary import summary_text
from loop.target_runner import TargetRunner

PINNED = ("prepare.py", "val.txt", "holdout.txt")


def run_once(repo: Path, budget: float, timeout: float, target_file: str | None = None) -> int:
    root = gitops.Git(repo).root
    target = targets.of_config(root, target_file)
    if not target.builtin:
        return _run_target(root, target, target_file, budget, timeout)
    if read_holder(lock_path(root)):
        raise SetupError("a daemon is running in this repository: `autoresearch stop` it before a manual run")
    check_harness(root)
    exp_dir = _exp_dir(root)
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
        display.say(f"{key}: {summary_text(value)}")
    if outcome.val_bpb is None:
        display.say(f"crash: {outcome.reason} (logs in {exp_dir})")
        return 1
    display.say(f"val_bpb: {outcome.val_bpb:.6f} (logs in {exp_dir})")
    return 0


def _run_target(root: Path, target: targets.Target, given: str | None, budget: float, timeout: float) -> int:
    """One run of a declared target, refused and prepared as `start` refuses and prepares one."""
    if holder := read_holder(targets.lock_file(root, target)):
        # its slots and build cache are the daemon's for the night
        raise SetupError(f"a daemon runs target {target.name} here (pid {holder['pid']}, tag {holder['tag']}): "
                         f"`autoresearch stop --target {given or targets.TARGET_FILE}` it before a manual run")
    if target.timeout is not None and target.timeout < budget:
        raise UsageError(f"{target.source}: run.timeout {target.timeout:g} is shorter than --budget {budget:g}: "
                         "raise the timeout or lower the budget")
    check_target(root, target)
    prepare_target(root, target)
    exp_dir = _exp_dir(root)
    display = Display()
    if warning := sandbox.warning():
        display.say(warning)
    started = time.monotonic()
    # the daemon's cache pool: a warm build, and its flock keeps a manual run out of a slot in use
    runner = TargetRunner(root, target, gitops.Git(root).working_tree(state_dir(root).name), state_dir(root) / "cache" / target.name,
                          on_line=lambda line: display.live(0, "running", time.monotonic() - started, budget, None))
    outcome = runner.run(RunSpec(train_py=b"", exp_dir=exp_dir, budget=budget, timeout=timeout))
    for key, value in outcome.summary.items():
        if key != target.metric:  # said last, with the logs
            display.say(f"{key}: {summary_text(value)}")
    if outcome.reason or "val" not in outcome.scores:
        display.say(f"crash: {outcome.reason or 'no score'} (logs in {exp_dir})")
        return 1
    display.say(f"{target.metric}: {target.view.text(outcome.scores['val'])} (logs in {exp_dir})")
    return 0


def _exp_dir(root: Path) -> Path:
    exp_dir = state_dir(root) / "manual" / time.strftime("%Y%m%d-%H%M%S")
    exp_dir.mkdir(parents=True, exist_ok=True)
    return exp_dir
