"""The commands around the loop: start and resume (with their refusals), stop, status, run.

Each refusal is a typed error with one line that says what is wrong and what to do.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from loop import gitops, sandbox
from loop.agents import AgentOptions, default_agent_name, make_agent
from loop.daemon import Config, Daemon
from loop.display import Display
from loop.errors import NotRunning, SetupError
from loop.journal import JOURNAL_NAME, load_run, run_dir, state_dir
from loop.lock import RepoLock, read_holder
from loop.runner import Runner, RunSpec

LAST_TAG = "last_tag"


def lock_path(repo: Path) -> Path:
    return state_dir(repo) / "daemon.lock"


def preflight(git: gitops.Git, tag: str) -> None:
    """The refusals of `start`, in the order a user would fix them."""
    holder = read_holder(lock_path(git.root))
    if holder:
        from loop.errors import AlreadyRunning

        raise AlreadyRunning(f"another autoresearch daemon runs in this repository (pid {holder['pid']}, tag {holder['tag']}): `autoresearch stop` it first")
    if dirty := git.dirty():
        raise SetupError(f"the working tree has uncommitted changes ({', '.join(dirty[:3])}): commit or stash them first")
    if git.ref_sha(gitops.BRANCH_PREFIX + tag) is not None:
        raise SetupError(f"branch {gitops.BRANCH_PREFIX}{tag} already exists: choose a new --tag, or `autoresearch resume --tag {tag}`")
    if not (git.root / "prepare.py").exists() or not (git.root / "train.py").exists():
        raise SetupError(f"{git.root} has no prepare.py and train.py: run autoresearch in an experiment repository")
    check = subprocess.run([sys.executable, "prepare.py", "check"], cwd=git.root, capture_output=True, text=True, timeout=300)
    if check.returncode != 0:
        lines = (check.stdout + check.stderr).strip().splitlines() or ["prepare.py check failed"]
        raise SetupError(lines[-1])


def start(repo: Path, config: Config, detach: bool, argv: list[str]) -> int:
    git = gitops.Git(repo)
    preflight(git, config.tag)
    if detach:
        return _detach(git.root, [a for a in argv if a != "--detach"])
    lock = RepoLock(lock_path(git.root))
    lock.acquire(config.tag)
    try:
        _archive_results(git.root)
        git.checkout_new_branch(gitops.BRANCH_PREFIX + config.tag)
        _run_daemon(git.root, config, begin=True)
    finally:
        lock.release()
    return 0


def resume(repo: Path, tag: str, overrides: dict) -> int:
    git = gitops.Git(repo)
    journal = run_dir(git.root, tag) / JOURNAL_NAME
    if not journal.exists() or git.ref_sha(gitops.BRANCH_PREFIX + tag) is None:
        raise SetupError(f"no run tagged {tag} to resume here: `autoresearch start --tag {tag}` starts one")
    lock = RepoLock(lock_path(git.root))
    lock.acquire(tag)
    try:
        if git.current_branch() != gitops.BRANCH_PREFIX + tag and git.dirty():
            raise SetupError(f"the working tree has uncommitted changes on {git.current_branch()}: commit or stash them first")
        saved = load_run(git.root, tag).meta.get("config", {})
        config = Config(**{**saved, **{k: v for k, v in overrides.items() if v is not None}})
        _run_daemon(git.root, config, begin=False)
    finally:
        lock.release()
    return 0


def _run_daemon(root: Path, config: Config, begin: bool) -> None:
    (state_dir(root) / LAST_TAG).write_text(config.tag)
    daemons: list[Daemon] = []  # the agent may poll for a stop before the daemon exists
    options = AgentOptions(queue_dir=Path(config.queue) if config.queue else None, model=config.model,
                           on_gpu=sandbox.gpu_present(), should_stop=lambda: bool(daemons) and daemons[0].stop.requested)
    agent = make_agent(config.agent, options)
    display = Display()
    _banner(display, config)
    daemons.append(Daemon(root, config, agent, display))
    if begin:
        daemons[0].begin(hardware())
    display.say(f"stopped: {daemons[0].run()}")


def stop(repo: Path, now: bool, wait_s: float = 60.0) -> int:
    root = gitops.Git(repo).root
    holder = read_holder(lock_path(root))
    if not holder:
        raise NotRunning("no autoresearch daemon is running in this repository")
    os.kill(int(holder["pid"]), signal.SIGUSR1 if now else signal.SIGTERM)
    if not now:
        print(f"stop requested: the daemon (pid {holder['pid']}) finishes and records its experiment, then exits")
        return 0
    deadline = time.monotonic() + wait_s
    while read_holder(lock_path(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"stopped now: the running experiment was interrupted and the branch reset (pid {holder['pid']})")
    return 0


def status(repo: Path) -> int:
    root = gitops.Git(repo).root
    holder = read_holder(lock_path(root))
    tag = holder["tag"] if holder else _last_tag(root)
    if tag is None:
        print("not running; no run yet: `autoresearch start --tag NAME`")
        return 0
    state = _read_json(state_dir(root) / "state.json")
    run = load_run(root, tag)
    done = run.finished
    counts = {s: sum(e.status == s for e in done) for s in ("keep", "discard", "crash")}
    print(f"{'running' if holder else 'not running'} (tag {tag}{', pid ' + str(holder['pid']) if holder else ''})")
    if holder and state.get("tag") == tag and state.get("n") is not None:
        elapsed = time.time() - float(state.get("since", time.time()))
        loss = f", loss {state['last_loss']}" if state.get("last_loss") else ""
        print(f"experiment {state['n']}: {state['phase']} for {elapsed:.0f}s (budget {state.get('budget', 0):.0f}s){loss}")
        if state.get("waiting"):
            print(f"waiting for agent: {state['waiting']}")
    print(f"experiments: {len(done)} (keep {counts['keep']}, discard {counts['discard']}, crash {counts['crash']})")
    baseline = next((e for e in done if e.n == 0), None)
    if baseline and baseline.val_bpb is not None:
        print(f"baseline val_bpb: {baseline.val_bpb:.6f} ({(baseline.commit or '')[:7]})")
    if run.best:
        print(f"best val_bpb: {run.best.val_bpb:.6f} ({(run.best.commit or '')[:7]}: {run.best.description})")
    if run.started_at and done:
        hours = max((done[-1].finished_at or time.time()) - run.started_at, 1e-9) / 3600
        print(f"experiments per hour: {len(done) / hours:.1f}")
    usage = run.total_usage
    print(f"spend: ${usage.cost_usd:.2f} ({usage.input_tokens + usage.cache_read_tokens + usage.cache_write_5m_tokens + usage.cache_write_1h_tokens:,} input, {usage.output_tokens:,} output tokens)")
    return 0


def run_once(repo: Path, budget: float, timeout: float) -> int:
    """`autoresearch run`: one experiment of the working tree as it is; git is not touched."""
    root = gitops.Git(repo).root
    if read_holder(lock_path(root)):
        raise SetupError("a daemon is running in this repository: `autoresearch stop` it before a manual run")
    check = subprocess.run([sys.executable, "prepare.py", "check"], cwd=root, capture_output=True, text=True)
    if check.returncode != 0:
        raise SetupError((check.stdout + check.stderr).strip().splitlines()[-1])
    exp_dir = state_dir(root) / "manual" / time.strftime("%Y%m%d-%H%M%S")
    pinned = {name: (root / name).read_bytes() for name in ("prepare.py", "val.txt")}
    display = Display()
    if warning := sandbox.warning():
        display.say(warning)
    started = time.monotonic()
    runner = Runner(root, pinned, on_line=lambda line: display.live(0, "training", time.monotonic() - started, budget, None))
    outcome = runner.run(RunSpec((root / "train.py").read_bytes(), exp_dir, budget, timeout))
    for key, value in outcome.summary.items():
        display.say(f"{key}: {value}")
    if outcome.val_bpb is None:
        display.say(f"crash: {outcome.reason} (logs in {exp_dir})")
        return 1
    display.say(f"val_bpb: {outcome.val_bpb:.6f} (logs in {exp_dir})")
    return 0


def hardware() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        info["gpus"] = out.splitlines()
    return info


def _banner(display: Display, config: Config) -> None:
    if config.agent == "search" and default_agent_name() == "search":
        display.say("agent: search (offline hyperparameter search; set ANTHROPIC_API_KEY to research with Claude)")
    if warning := sandbox.warning():
        display.say(warning)
    display.say(f"run {config.tag}: budget {config.budget:g}s per experiment; results in results.tsv")


def _archive_results(root: Path) -> None:
    results = root / "results.tsv"
    previous = _last_tag(root)
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


def _last_tag(root: Path) -> str | None:
    path = state_dir(root) / LAST_TAG
    return path.read_text().strip() or None if path.exists() else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}

