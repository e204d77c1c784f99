"""`autoresearch start` and `resume`: the refusals, in the order a user would fix them, then the
daemon in the foreground (or detached).

Everything that can be checked is checked before the branch is made: a refused start leaves
nothing behind, and a baseline that cannot run never uses up the tag.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

from loop import gitops, sandbox
from loop import target as targets
from loop.agents import AgentOptions, default_agent_name, default_secret_paths, make_agent
from loop.agents.base import Agent
from loop.commands.common import LAST_TAG, last_tag, lock_path
from loop.config import Config
from loop.daemon import Daemon
from loop.display import Display
from loop.errors import AlreadyRunning, AutoresearchError, BaselineCrashed, SetupError, UsageError
from loop.executor import plan_slots
from loop.journal import JOURNAL_NAME, load_run, run_dir, state_dir
from loop.lock import RepoLock, read_holder
from loop.runner import hardware

PREPARE_CHECK_TIMEOUT_S = 300
RAY_CONNECT_TIMEOUT_S = 10.0


def start(repo: Path, config: Config, detach: bool, argv: list[str]) -> int:
    git = gitops.Git(repo)
    target = targets.of_config(git.root, config.target)
    if not target.builtin and config.target is None:  # recorded, so resume and status find the same one
        config = replace(config, target=targets.TARGET_FILE)
    preflight(git, config.tag, target)
    _refuse_ray(target, config)
    check_slots(config)
    if target.timeout is not None and target.timeout < config.budget:
        raise UsageError(f"{target.source}: run.timeout {target.timeout:g} is shorter than --budget {config.budget:g}: "
                         "raise the timeout or lower the budget")
    if not target.builtin and config.agent == "search":
        raise UsageError(f"--agent search tunes train.py's constants; {target.source} needs --agent queue, "
                         "anthropic or claude-code")
    agent = checked_agent(git.root, config)
    if detach:
        return _detach(git.root, [a for a in argv if a != "--detach"])
    lock = RepoLock(targets.lock_file(git.root, target))
    lock.acquire(config.tag)
    try:
        home = git.current_branch()
        if target.builtin:
            _archive_results(git.root)
            git.checkout_new_branch(gitops.BRANCH_PREFIX + config.tag)
        else:  # a custom target's runs come from commits: the working tree stays the person's
            prepare_target(git.root, target)
            git.pin(f"refs/heads/{gitops.BRANCH_PREFIX}{config.tag}", git.head())
        try:
            daemon = _make_daemon(git.root, config, agent)
        except AutoresearchError:  # its slots or cluster could not be had: as if never started
            _undo_branch(git, config.tag, home)
            raise
        try:
            return _run_daemon(daemon, config, agent, begin=True)
        except BaselineCrashed as e:
            raise _give_back_tag(git, config.tag, home, e, target.results) from None
    finally:
        lock.release()


def resume(repo: Path, tag: str, overrides: dict, detach: bool = False, argv: list[str] | None = None) -> int:
    git = gitops.Git(repo)
    journal = run_dir(git.root, tag) / JOURNAL_NAME
    if not journal.exists() or git.ref_sha(gitops.BRANCH_PREFIX + tag) is None:
        raise SetupError(f"no run tagged {tag} to resume here: `autoresearch start --tag {tag}` starts one")
    if holder := read_holder(lock_path(git.root)):
        raise AlreadyRunning(f"another autoresearch daemon runs in this repository (pid {holder['pid']}, "
                             f"tag {holder['tag']}): `autoresearch stop` it first")
    if git.current_branch() != gitops.BRANCH_PREFIX + tag and git.dirty():
        raise SetupError(f"the working tree has uncommitted changes on {git.current_branch()}: commit or stash them first")
    run = load_run(git.root, tag)
    config = Config.from_saved(run.meta.get("config", {}), overrides)
    target = targets.of_config(git.root, config.target)
    if not target.builtin and (holder := read_holder(targets.lock_file(git.root, target))):
        raise AlreadyRunning(f"a daemon runs target {target.name} here (pid {holder['pid']}, tag {holder['tag']}): "
                             f"`autoresearch stop --target {config.target}` it first")
    _refuse_ray(target, config)
    if detach:  # refused here, in one line, what the background daemon would refuse
        check_slots(config)
        checked_agent(git.root, config)
        return _detach(git.root, [a for a in argv or ["resume", "--tag", tag] if a != "--detach"])
    lock = RepoLock(targets.lock_file(git.root, target))
    lock.acquire(tag)  # from here `status` says the run is running, through the checks below
    try:
        check_slots(config)
        agent = checked_agent(git.root, config)
        base = run.meta.get("base_commit")
        try:
            return _run_daemon(_make_daemon(git.root, config, agent), config, agent, begin=False)
        except BaselineCrashed as e:
            raise _give_back_tag(git, tag, base, e, target.results) from None
    finally:
        lock.release()


def preflight(git: gitops.Git, tag: str, target: targets.Target = targets.BUILTIN) -> None:
    """The refusals of `start`, in the order a user would fix them."""
    if target.builtin and (holder := read_holder(lock_path(git.root))):
        raise AlreadyRunning(f"another autoresearch daemon runs in this repository (pid {holder['pid']}, "
                             f"tag {holder['tag']}): `autoresearch stop` it first")
    if not target.builtin and (holder := read_holder(targets.lock_file(git.root, target))):
        raise AlreadyRunning(f"a daemon runs target {target.name} here (pid {holder['pid']}, tag {holder['tag']}): "
                             "`autoresearch stop --target FILE` it first")
    if dirty := git.dirty():
        raise SetupError(f"the working tree has uncommitted changes ({', '.join(dirty[:3])}): commit or stash them first")
    if git.ref_sha(gitops.BRANCH_PREFIX + tag) is not None:
        raise SetupError(f"branch {gitops.BRANCH_PREFIX}{tag} already exists: choose a new --tag, "
                         f"or `autoresearch resume --tag {tag}`")
    if target.builtin:
        check_harness(git.root)
    else:
        check_target(git.root, target)


def check_harness(root: Path) -> None:
    """The experiment's files are there, its data is prepared, and a sandboxed Python runs."""
    if not (root / "prepare.py").exists() or not (root / "train.py").exists():
        raise SetupError(f"{root} has no prepare.py and train.py: run autoresearch in an experiment repository")
    check = subprocess.run([sys.executable, "prepare.py", "check"], cwd=root, capture_output=True, text=True,
                           timeout=PREPARE_CHECK_TIMEOUT_S)
    if check.returncode != 0:
        lines = (check.stdout + check.stderr).strip().splitlines() or ["prepare.py check failed"]
        raise SetupError(lines[-1])
    if problem := sandbox.self_check():
        raise SetupError(problem)


def check_target(root: Path, target: targets.Target) -> None:
    """A custom target's files are there, its check command passes, and the sandbox works."""
    if not target.editable_files(gitops.Git(root).ls_files()):
        raise SetupError(f"{target.source}: no tracked file matches editable = {list(target.editable)}: "
                         "commit the files, or fix the globs")
    if target.check:
        _target_command(root, target, target.check, "check")
    if problem := sandbox.self_check():
        raise SetupError(problem)


def _refuse_ray(target: targets.Target, config: Config) -> None:
    if not target.builtin and config.ray is not None:
        raise UsageError(f"--ray runs the builtin experiment only; {target.source} runs on local slots: drop --ray")


def check_slots(config: Config) -> None:
    """The slots asked for exist: the GPUs named are visible here, or the Ray head answers. A
    cluster that is not there is found in seconds, not after Ray's own minutes of retries."""
    if config.ray is None:
        plan_slots(config.gpus, config.slots)
        return
    from loop.ray_executor import import_ray

    ray = import_ray()
    address = config.ray.split("://", 1)[-1]
    if config.ray == "auto":  # the latest cluster started on this machine, as Ray itself would find it
        try:
            address = ray._private.services.canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError:
            raise SetupError("--ray auto: no Ray cluster runs on this machine: start one with `ray start --head`, "
                             "or give the head's address") from None
        except Exception:  # a Ray that finds it another way: it says so itself when the daemon joins
            return
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:6379
    if not host or not port.isdigit():
        raise UsageError(f"--ray {config.ray}: give the head's address as HOST:PORT (e.g. 10.0.0.5:6379), or auto")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise SetupError(f"--ray {config.ray}: nothing answers at {host}:{port} ({e.strerror or e}): start the head "
                         "with `ray start --head`, or check the address with `ray status` on it") from None


def prepare_target(root: Path, target: targets.Target) -> None:
    """The target's prepare command, once, at start, in the repository as the person left it."""
    if target.prepare:
        _target_command(root, target, target.prepare, "prepare")


def _target_command(root: Path, target: targets.Target, command: str, what: str) -> None:
    try:
        done = subprocess.run(["/bin/sh", "-c", command], cwd=root, capture_output=True, text=True,
                              timeout=PREPARE_CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SetupError(f"{target.source}: commands.{what} ran past {PREPARE_CHECK_TIMEOUT_S}s: "
                         "make it quicker or drop it") from None
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines() or [f"exit {done.returncode}"]
        raise SetupError(f"{target.source}: commands.{what} failed: {lines[-1][:200]}")


def checked_agent(root: Path, config: Config) -> Agent:
    """The agent, made and asked whether it can work, before anything is spent."""
    options = AgentOptions(queue_dir=Path(config.queue) if config.queue else None, model=config.model,
                           seed=zlib.crc32(config.tag.encode()),  # runs of other tags explore otherwise
                           on_gpu=sandbox.gpu_present(), secret_paths=default_secret_paths(root))
    agent = make_agent(config.agent, options)
    check = getattr(agent, "check", None)
    if callable(check):
        check()
    return agent


def _make_daemon(root: Path, config: Config, agent: Agent) -> Daemon:
    daemon = Daemon(root, config, agent, Display())
    (state_dir(root) / LAST_TAG).write_text(config.tag)
    return daemon


def _run_daemon(daemon: Daemon, config: Config, agent: Agent, begin: bool) -> int:
    display = daemon.display
    _banner(display, config, daemon.target.results)
    if hasattr(agent, "should_stop"):
        agent.should_stop = lambda: daemon.stop.requested or bool(daemon.stopping)  # type: ignore[attr-defined]
    if begin:
        daemon.begin(hardware())  # the same record every run's outcome carries
    reason = daemon.run_loop()
    if daemon.best is None:  # stopped before the baseline was decided
        display.say(f"stopped ({reason}) before the baseline finished: `autoresearch resume --tag {config.tag}` runs it")
    else:
        display.say(f"stopped: {reason}")
    return 0


def _give_back_tag(git: gitops.Git, tag: str, home: str | None, error: BaselineCrashed, results: str) -> SetupError:
    """A baseline that crashed leaves no branch behind: the same `start` works once the cause is fixed.
    Its logs are kept beside the runs, under a name of their own."""
    runs = run_dir(git.root, tag)
    kept = runs.with_name(f"{tag}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
    _undo_branch(git, tag, home)
    if runs.exists():
        shutil.move(str(runs), kept)
    if (rows := git.root / results).exists() and kept.exists():  # its one row goes with the failed run
        shutil.move(str(rows), kept / rows.name)
    return SetupError(f"the baseline crashed ({error}); nothing was kept and the tag is free again: "
                      f"see {kept / '0000'}, fix the cause, then run the same `autoresearch start --tag {tag}`")


def _undo_branch(git: gitops.Git, tag: str, home: str | None) -> None:
    """The branch and refs a start made, gone; the checkout back where it was."""
    if home and home != "HEAD":
        git.checkout(home)
    git.delete_branch(gitops.BRANCH_PREFIX + tag)
    for ref in git.refs(f"{gitops.REF_PREFIX}{tag}/"):
        git.delete_ref(ref)
    runs = run_dir(git.root, tag)
    if runs.is_dir() and not (runs / JOURNAL_NAME).exists():  # made, but nothing was run in it
        shutil.rmtree(runs, ignore_errors=True)


def _banner(display: Display, config: Config, results: str = "results.tsv") -> None:
    if config.agent == "search" and default_agent_name() == "search":
        display.say("agent: search (offline hyperparameter search; set ANTHROPIC_API_KEY to research with Claude)")
    if warning := sandbox.warning():
        display.say(warning)
    display.say(f"run {config.tag}: budget {config.budget:g}s per experiment; results in {results}")


def _archive_results(root: Path) -> None:
    results = root / "results.tsv"
    previous = last_tag(root)
    if results.exists() and previous:
        dest = run_dir(root, previous) / "results.tsv"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(results), dest)


def _detach(root: Path, argv: list[str]) -> int:
    log = state_dir(root) / "daemon.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        child = subprocess.Popen([sys.executable, "-m", "loop.cli", *argv], cwd=root, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(1.0)
    if child.poll() not in (None, 0):  # a refusal or a crash at start-up; 0 is a run that already ended
        raise SetupError(f"the daemon exited at once (code {child.returncode}): see {log}")
    print(f"started in the background (pid {child.pid}); follow it with `tail -f results.tsv` or `tail -f {log}`")
    return 0
