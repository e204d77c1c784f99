"""One experiment's training and evaluation, from trusted parts, in contained processes.

Per experiment, under its directory:
  train/   train.py (the commit's bytes) and prepare.py (pinned); cwd of training
  ckpt/    AUTORESEARCH_OUT: the only thing training leaves for evaluation
  nodes-*/ the sandboxes' own copies of /dev/null and the other standard device nodes (a root daemon)
  home/, tmp/  a fresh HOME and TMPDIR for training, so nothing carries over from an earlier run;
           tmp/kernels/ starts as a copy of the baseline's compiled kernels (below)
  model/   train.py and prepare.py, read-only to the model processes
  model-<role>/  a model process's own writable directory (cwd, HOME, TMPDIR)
  scorer/  prepare.py only: cwd of the scorer, which no model process can see
Evaluation is one scorer and two model processes (main, reference: see prepare.py), each in
its own sandbox and PID namespace, sharing only the pipes made here. The scorer reads the split's
bytes on its stdin from the daemon's pinned copy, so no split ever lies where a model can reach;
its metric line is the result, the training summary is advisory.

Compiling the GPU default takes most of a minute of every run's start-up. The untouched baseline's
compiled kernels (torch.compile's and Triton's caches) are kept once, and every later run starts
from a private copy of them: a change that keeps the model's shape compiles in seconds. Only the
baseline, the person's own train.py, ever writes the kept copy; what an experiment compiles dies
with its run, so no experiment can leave kernels for another.
"""
from __future__ import annotations

import builtins
import functools
import math
import os
import platform
import re
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from loop import sandbox
from loop.procs import INODE_FLOOR, MAX_TASKS, Cancel, Contained, ProcResult, Watch, run_contained, tail, task_cap
from loop.summary import parse_summary
from loop.trees import regular_files, remove_tree, strip_setid

STARTUP_ALLOWANCE_S = 120.0  # default wall-clock beyond the budget for imports, compilation and saving
EVAL_TIMEOUT_S = 600.0
# A run (training or scoring) that brings the free disk under its folder below this is ended: below
# the 2 GiB under which the daemon starts no experiment, so the daemon always has room for its state.
DISK_FLOOR_BYTES = 1 << 30
ROLES = ("main", "reference")  # the model processes of one evaluation, as prepare.py names them
# The scorer's words for a model process that failed before it was sent any text to score; said of
# main only: the reference starts after main had text, and main can signal to it through what the
# kernel caches (README, Containment), so the reference's own words are never told.
BEFORE_ANY_TEXT = ("start-up", "failed to start")
# What training may read of the prepared data: the training split and its manifest. The rest of the
# cache (downloaded shards, whose tail became val.txt) is never shown to a run.
TRAINING_DATA = ("train.bin", "manifest.json")
# Errors a model process that has seen text may be said to have raised: names, not its own words.
ERROR_NAMES = frozenset(name for name, value in vars(builtins).items()
                        if isinstance(value, type) and issubclass(value, BaseException)) | {"OutOfMemoryError"}
SPLIT_FILES = {"val": "val.txt", "holdout": "holdout.txt"}
SIMPLE_CRASH = re.compile(r"^(SyntaxError|IndentationError|TabError|ImportError|ModuleNotFoundError|NameError|"
                          r"AttributeError|TypeError|RuntimeError: .*(size|shape|dimension|mat1 and mat2))", re.M)
LOSS = re.compile(r"\bloss[ :=]+([0-9.]+|nan|inf)", re.I)
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH")


@dataclass(frozen=True)
class RunSpec:
    train_py: bytes
    exp_dir: Path
    budget: float
    timeout: float  # hard wall-clock cap on the training process
    seed: int = 0  # AUTORESEARCH_SEED for training
    device: str | None = None  # CUDA_VISIBLE_DEVICES for training and model processes; None: CPU or all
    startup_allowance: float = STARTUP_ALLOWANCE_S  # training's wall clock may exceed the budget by this
    splits: tuple[str, ...] = ("val",)  # ("val", "holdout") also scores the holdout
    kernels: Path | None = None  # the baseline's compiled kernels: each run trains with a copy of them
    keep_kernels: bool = False  # the untouched baseline: its kernels become `kernels` if it has none yet
    disk_floor: int = DISK_FLOOR_BYTES  # a run that takes the free disk under exp_dir below this is ended
    max_tasks: int = MAX_TASKS  # a run with more processes and threads at once is ended (see procs.task_cap)

    def watch(self) -> Watch:
        return Watch(self.exp_dir, self.disk_floor, task_cap(self.max_tasks))


@dataclass
class RunOutcome:
    reason: str = ""  # empty when it worked; one line otherwise
    simple_crash: bool = False  # a crash the agent can likely fix (syntax, import, shape)
    interrupted: bool = False  # cancelled by a stop --now: not the experiment's fault
    killed: bool = False  # the run had to be killed (timeout, cancel): the GPU may need a moment
    summary: dict = field(default_factory=dict)
    train_seconds: float = 0.0  # the daemon's own clock for the training process
    eval_seconds: float = 0.0
    log_tail: str = ""
    scores: dict[str, float] = field(default_factory=dict)  # split -> bits per byte
    timings: dict[str, float] = field(default_factory=dict)  # time.time() at started, training_ended, evaluating, evaluated
    hardware: dict = field(default_factory=dict)

    @property
    def val_bpb(self) -> float | None:
        return self.scores.get("val")

    @val_bpb.setter
    def val_bpb(self, value: float | None) -> None:
        if value is None:
            self.scores.pop("val", None)
        else:
            self.scores["val"] = value

    @property
    def peak_vram_mb(self) -> float:
        value = self.summary.get("peak_vram_mb", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0


def data_dir() -> Path:
    """Where `python prepare.py` put the training data (the same rule as prepare.data_dir)."""
    return Path(os.environ.get("AUTORESEARCH_CACHE", Path.home() / ".cache" / "autoresearch")).expanduser()


ALLOWANCE_MARGIN_S = 20.0  # a busy machine can slow a start-up by this much without any fault of the run


def startup_allowance_from(baseline_wall: float, budget: float) -> float:
    """An allowance measured on the baseline: one and a half times its start-up (imports,
    compilation, saving), plus a margin for a busy machine. Whatever a run does inside it is
    training the daemon cannot tell from start-up, so it is kept tight."""
    return ALLOWANCE_MARGIN_S + 1.5 * max(0.0, baseline_wall - budget)


# What a model process does is bounded against the untouched baseline's: loading (train.py's import,
# build_model, the weights) and its first answer may take EVAL_FACTOR times the baseline's plus a
# margin, all its answers ANSWERS_FACTOR times (a bigger model answers slower; training in between
# answers would change them, which the canaries catch). More is training inside the evaluator,
# where no budget applies, or a forward pass that trains on each window's own bytes.
EVAL_FACTOR, ANSWERS_FACTOR, EVAL_MARGIN_S = 3.0, 5.0, 5.0
EVAL_PHASES = {"model_load_s": ("load", EVAL_FACTOR), "first_answer_s": ("give its first answer", EVAL_FACTOR),
               "answers_s": ("give all its answers", ANSWERS_FACTOR)}


def eval_limits_from(baseline_timings: list[dict]) -> dict[str, float]:
    """Per phase of the model processes (EVAL_PHASES), the most an experiment's may take, from the
    baseline's runs (their slowest, so that a quiet baseline does not make a busy night crash)."""
    limits = {}
    for phase in EVAL_PHASES:
        seen = [float(t[phase]) for t in baseline_timings if isinstance(t.get(phase), (int, float))]
        if seen:
            limits[phase] = EVAL_MARGIN_S + EVAL_PHASES[phase][1] * max(seen)
    return limits


def over_eval_limits(timings: dict, limits: dict[str, float]) -> str:
    """Why a run's model processes took longer than the baseline's allow ("" when they did not)."""
    for phase, limit in limits.items():
        took = timings.get(phase)
        if isinstance(took, (int, float)) and took > limit:
            words, factor = EVAL_PHASES[phase]
            return (f"eval: a model process took {took:.1f}s to {words}, more than the {limit:.1f}s allowed "
                    f"({factor:g}x the untouched baseline's, plus {EVAL_MARGIN_S:g}s): the evaluator scores the "
                    "model it is given, it is no place to train")
    return ""


class Runner:
    """Runs experiments; holds nothing that changes, so train and evaluate may run in many threads."""

    def __init__(self, repo: Path, pinned: dict[str, bytes], cancel: Cancel | None = None,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.repo, self.pinned = repo, dict(pinned)
        self.cancel = cancel or Cancel()
        self.on_line = on_line
        self.data = data_dir().resolve()
        self.gpu = sandbox.gpu_present()

    def run(self, spec: RunSpec) -> RunOutcome:
        trained = self.train(spec)
        return trained if trained.reason else self.evaluate(spec, trained)

    # --- training ---------------------------------------------------------------------------------
    def train(self, spec: RunSpec) -> RunOutcome:
        dirs = fresh_dirs(spec.exp_dir, "train", "ckpt", "home", "tmp")
        (dirs["train"] / "train.py").write_bytes(spec.train_py)
        (dirs["train"] / "prepare.py").write_bytes(self.pinned["prepare.py"])
        out = RunOutcome(hardware=hardware(), timings={"started": time.time()})
        env = self._env(dirs["home"], dirs["tmp"], spec.device)
        env.update(AUTORESEARCH_OUT=str(dirs["ckpt"]), AUTORESEARCH_TIME_BUDGET=f"{spec.budget:g}",
                   AUTORESEARCH_CACHE=str(self.data), AUTORESEARCH_SEED=str(spec.seed))
        env.update(_kernel_caches(spec.kernels, dirs["tmp"] / "kernels"))
        data = tuple(self.data / name for name in TRAINING_DATA if (self.data / name).exists())
        box = sandbox.SandboxSpec(workdir=dirs["train"], writable=(dirs["ckpt"], dirs["home"], dirs["tmp"]),
                                  readonly=data, hide=(self.repo,), gpu=self.gpu,
                                  gpu_devices=_devices(spec.device), nodes_dir=spec.exp_dir / "nodes-train")
        # The daemon's own clock bounds all of training, start-up included.
        limit = min(spec.timeout, spec.budget + spec.startup_allowance)
        argv = sandbox.wrap([sys.executable, "train.py"], box)
        devices = sandbox.device_states(box)
        train = run_contained(argv, cwd=box.workdir, env=env, timeout=limit, log_path=spec.exp_dir / "train.log",
                              on_line=self.on_line, cancel=self.cancel, preexec=sandbox.limits_preexec(box),
                              watch=spec.watch())
        out.timings["training_ended"] = time.time()
        strip_setid(spec.exp_dir)
        out.train_seconds = train.wall_seconds
        out.log_tail = tail(train.log_path)
        out.summary = parse_summary(out.log_tail)
        out.killed = train.timed_out or train.cancelled
        out.reason = self._training_failure(spec, train, out)
        if changed := sandbox.put_back_devices(devices):
            out.reason = f"guard: it changed the host's device node {changed[0]}; it was put back"
        if spec.keep_kernels and spec.kernels is not None and not out.reason:
            keep_kernels(dirs["tmp"] / "kernels", spec.kernels)
        return out

    def _training_failure(self, spec: RunSpec, train: ProcResult, out: RunOutcome) -> str:
        if train.cancelled:
            out.interrupted = True
            return "interrupted"
        if train.disk_full:
            return disk_full_reason(spec)
        if train.tasks_over:
            return too_many_tasks_reason(spec, train.tasks_over)
        if train.timed_out:
            if train.wall_seconds < spec.timeout:
                return f"over budget: ran {train.wall_seconds:.1f}s > {spec.budget + spec.startup_allowance:.1f}s"
            return f"timeout after {spec.timeout:.0f}s"
        if train.returncode != 0:
            out.simple_crash = bool(SIMPLE_CRASH.search(out.log_tail))
            return f"exit {train.returncode}: {_last_error(out.log_tail)}"
        if not out.summary:
            return "no summary: train.py must print '---' then key: value lines last"
        reported = out.summary.get("training_seconds")
        if not isinstance(reported, float):
            return "summary has no training_seconds"
        # One step of overshoot is allowed (a step that began inside the budget may end past it on
        # a busy machine, where the last step can take many times the mean); more is training past
        # the budget. The slowest step is the run's own word, as its time is: the daemon's clock
        # (the wall-clock limit above) is what bounds a run that lies.
        steps = out.summary.get("num_steps")
        step = reported / steps if isinstance(steps, (int, float)) and steps >= 1 else 0.0
        slowest = out.summary.get("slowest_step_seconds")
        step = max(step, slowest) if isinstance(slowest, float) and math.isfinite(slowest) else step
        step = min(step, spec.budget / 2)  # never half a budget more
        if reported > spec.budget + step:
            return f"over budget: reported {reported:.1f}s > {spec.budget + step:.1f}s"
        if train.wall_seconds > spec.budget + spec.startup_allowance:
            return f"over budget: ran {train.wall_seconds:.1f}s > {spec.budget + spec.startup_allowance:.1f}s"
        if train.leftovers_killed:
            return f"left {train.leftovers_killed} process(es) running after it exited"
        return ""

    # --- evaluation -------------------------------------------------------------------------------
    def evaluate(self, spec: RunSpec, trained: RunOutcome) -> RunOutcome:
        out = trained
        out.timings["evaluating"] = time.time()
        devices = sandbox.device_states(sandbox.SandboxSpec(workdir=spec.exp_dir, gpu=self.gpu,
                                                            gpu_devices=_devices(spec.device),
                                                            nodes_dir=spec.exp_dir / f"nodes-{ROLES[0]}"))
        for split in spec.splits:
            started = time.monotonic()
            score, reason = self._score(spec, split)
            if changed := sandbox.put_back_devices(devices):
                score, reason = 0.0, f"guard: a model process changed the host's device node {changed[0]}; it was put back"
            out.eval_seconds += time.monotonic() - started
            if reason:
                out.reason = reason
                out.interrupted = reason == "interrupted"
                out.killed = out.killed or out.interrupted or "timeout" in reason
                break
            out.scores[split] = score
            if split == "val":
                out.timings.update(eval_profile(spec.exp_dir / f"eval-{split}.log"))
        out.timings["evaluated"] = time.time()
        strip_setid(spec.exp_dir)
        return out

    def _score(self, spec: RunSpec, split: str) -> tuple[float, str]:
        """One split's score, or a reason. Fresh model processes and a fresh scorer every time."""
        if SPLIT_FILES[split] not in self.pinned:
            return 0.0, f"eval: no pinned {SPLIT_FILES[split]} to score the {split} split"
        exp = spec.exp_dir
        dirs = fresh_dirs(exp, "model", "scorer", *(f"model-{role}" for role in ROLES))
        for name in ("train.py", "prepare.py"):
            (dirs["model"] / name).write_bytes(spec.train_py if name == "train.py" else self.pinned[name])
            (dirs["model"] / name).chmod(0o444)
        (dirs["scorer"] / "prepare.py").write_bytes(self.pinned["prepare.py"])
        # Pipes for every role are made now; a model process is started on them when the scorer
        # says it needs it, or warmed behind a gate before that (its trusted start-up only), and
        # ended when the scorer is done with it: never two running train.py at once.
        child_ends: dict[str, tuple[int, int]] = {}
        scorer_fds: list[int] = []
        for role in ROLES:
            to_model_r, to_model_w = os.pipe()
            from_model_r, from_model_w = os.pipe()
            child_ends[role] = (to_model_r, from_model_w)
            scorer_fds += [from_model_r, to_model_w]
        control_r, control_w = os.pipe()
        models: dict[str, Contained] = {}
        gates: dict[str, int] = {}  # write ends of the gates of warmed model processes (-1: none)
        results: list[ProcResult] = []
        scorer: Contained | None = None
        ev: ProcResult | None = None
        try:
            scorer = self._start_scorer(spec, split, dirs["scorer"], scorer_fds, control_w)
            for fd in (*scorer_fds, control_w):
                os.close(fd)  # the scorer holds these now
            scorer_fds, control_w = [], -1
            breached: list[str] = []  # what ended scoring early: a model process past the watch's limits

            def give_up() -> bool:  # the scorer waits on the model processes: watch them here
                if not breached:
                    breached.extend(why for m in models.values() if (why := _breach(spec, m)))
                return self.cancel.is_set() or bool(breached)

            for line in _lines(control_r, time.monotonic() + EVAL_TIMEOUT_S, give_up):
                role, _, what = line.partition(" ")
                if what in ("warm", "start") and role in child_ends and role not in models:
                    stdin_fd, stdout_fd = child_ends.pop(role)
                    gate_r, gates[role] = os.pipe() if what == "warm" else (-1, -1)
                    models[role] = self._start_model(spec, role, dirs, stdin_fd, stdout_fd, gate_r)
                    for fd in (stdin_fd, stdout_fd, gate_r):
                        if fd >= 0:
                            os.close(fd)
                if what == "start" and gates.get(role, -1) >= 0:
                    os.write(gates[role], b"g")  # the one moment this process may import train.py
                elif what == "done" and role in models:
                    results.append(models.pop(role).kill())
                    _evict(dirs["model"], spec.exp_dir / "ckpt")  # what the model process read, uncached again
            if breached:
                ev = scorer.kill()
                return 0.0, breached[0]
            ev = scorer.wait(timeout=max(1.0, EVAL_TIMEOUT_S - (time.monotonic() - scorer.start)), cancel=self.cancel)
        finally:
            for fd in (*scorer_fds, control_r, *(fd for pair in child_ends.values() for fd in pair),
                       *(fd for fd in gates.values() if fd >= 0)):
                os.close(fd)
            if control_w >= 0:
                os.close(control_w)
            results += [m.kill() for m in models.values()]
            if scorer is not None and ev is None:  # a model process could not be started: end it too
                scorer.kill()
        return self._read_score(spec, split, ev, results)

    def _start_model(self, spec: RunSpec, role: str, dirs: dict[str, Path], stdin_fd: int, stdout_fd: int,
                     gate_fd: int = -1) -> Contained:
        own = dirs[f"model-{role}"]
        box = sandbox.SandboxSpec(workdir=own, readonly=(dirs["model"], spec.exp_dir / "ckpt"),
                                  hide=(self.repo, spec.exp_dir), gpu=self.gpu, gpu_devices=_devices(spec.device),
                                  nodes_dir=spec.exp_dir / f"nodes-{role}")  # fresh: no note from main to the reference
        gate = ["--gate", str(gate_fd)] if gate_fd >= 0 else []
        argv = sandbox.wrap([sys.executable, str(dirs["model"] / "prepare.py"), "model",
                             "--checkpoint", str(spec.exp_dir / "ckpt"), *gate], box)
        return Contained(argv, cwd=own, env=self._env(own, own, spec.device), log_path=spec.exp_dir / f"eval-{role}.log",
                         preexec=sandbox.limits_preexec(box), stdin_fd=stdin_fd, stdout_fd=stdout_fd,
                         pass_fds=(gate_fd,) if gate_fd >= 0 else (), watch=spec.watch())

    def _start_scorer(self, spec: RunSpec, split: str, workdir: Path, fds: list[int], control_fd: int) -> Contained:
        box = sandbox.SandboxSpec(workdir=workdir, hide=(self.repo, spec.exp_dir), gpu=False)
        pairs = ",".join(f"{fds[i]}:{fds[i + 1]}" for i in range(0, len(fds), 2))
        # -I: neither the script's directory nor the environment shapes the scorer's imports.
        argv = sandbox.wrap([sys.executable, "-I", str(workdir / "prepare.py"), "eval", "--split", split,
                             "--model-fds", pairs, "--control-fd", str(control_fd)], box)
        env = self._env(workdir, workdir, None)
        return Contained(argv, cwd=workdir, env=env, log_path=spec.exp_dir / f"eval-{split}.log",
                         preexec=sandbox.limits_preexec(box), stdin_data=self.pinned[SPLIT_FILES[split]],
                         pass_fds=(*fds, control_fd), watch=spec.watch())

    def _read_score(self, spec: RunSpec, split: str, ev: ProcResult, models: list[ProcResult]) -> tuple[float, str]:
        lines = tail(ev.log_path, 2000).strip().splitlines()
        if ev.cancelled:
            return 0.0, "interrupted"
        if ev.disk_full:
            return 0.0, disk_full_reason(spec)
        if ev.tasks_over:
            return 0.0, too_many_tasks_reason(spec, ev.tasks_over, who="eval: the scorer")
        if ev.timed_out:
            return 0.0, f"eval: timeout after {EVAL_TIMEOUT_S:.0f}s"
        if ev.leftovers_killed:
            return 0.0, f"eval: left {ev.leftovers_killed} process(es) running after it exited"
        if ev.returncode != 0 or not lines:
            reason = "eval: " + (lines[-1].removeprefix("eval: ") if lines else f"exit {ev.returncode}")[:200]
            if "model process" in reason:
                reason = _model_failure(reason, models, spec.train_py)
            return 0.0, reason[:300]
        # The scorer prints its two trusted lines last. A line that looks right but is not a
        # possible score is the experiment's crash, never the daemon's.
        match = re.fullmatch(rf"{split}_bpb: (\S+)", lines[-2]) if len(lines) >= 2 else None
        if match is None or not lines[-1].startswith("eval_seconds:"):
            return 0.0, f"eval: no {split}_bpb line at the end of the evaluator's output"
        try:
            value = float(match.group(1))
        except ValueError:
            return 0.0, f"eval: {split}_bpb is not a number: {match.group(1)[:40]!r}"
        if not math.isfinite(value) or value < 0:
            return 0.0, f"eval: {split}_bpb is impossible: {value}"
        return value, ""

    def _env(self, home: Path, tmp: Path, device: str | None) -> dict[str, str]:
        # A clean environment: no API keys or tokens of the daemon's reach the experiment.
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
                   PYTHONNOUSERSITE="1")
        return env


def _kernel_caches(kept: Path | None, private: Path) -> dict[str, str]:
    """The run's own compile caches, under its TMPDIR, starting as a copy of the kept kernels. The
    copy's times are the run's own: the kept folder's would tell every run when the night began."""
    if kept is not None and kept.is_dir():
        shutil.copytree(kept, private, symlinks=True)
        for path in (private, *private.rglob("*")):
            if not path.is_symlink():
                os.utime(path)
    private.mkdir(exist_ok=True)
    return {"TORCHINDUCTOR_CACHE_DIR": str(private / "inductor"), "TRITON_CACHE_DIR": str(private / "triton")}


def keep_kernels(private: Path, kept: Path) -> None:
    """`private` becomes the kept copy, whole or not at all: each caller copies to a folder of its
    own and renames it into place, and the first to finish wins (the baseline's runs on several
    slots end together; a cluster's tasks unpack on one node together)."""
    if kept.exists() or not private.is_dir():
        return
    kept.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{kept.name}.partial-", dir=kept.parent))
    try:
        shutil.copytree(private, partial, symlinks=True, dirs_exist_ok=True)
        os.replace(partial, kept)  # fails if another run's copy is in place already
    except OSError:  # that, or a full disk: it costs the speed-up, never the run
        pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _evict(*dirs: Path) -> None:
    """Drop the files under dirs from the page cache. Which pages of a file are cached outlives the
    process that read them: a model process could leave notes for the next one in a file the run
    wrote (its checkpoint), page by page. The shared libraries both read remain such a channel,
    at far less bandwidth than these files offer; see prepare.py on why main goes first."""
    for d in dirs:
        for folder, name in regular_files(d):  # never into a linked folder: the run made these files
            try:  # not blocking on a FIFO, not following a link
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def fresh_dirs(exp_dir: Path, *names: str) -> dict[str, Path]:
    """Empty directories under exp_dir (a re-run after resume starts fresh too). exp_dir is its
    owner's alone: what a run leaves there is out of other users' reach while it is looked over."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    exp_dir.chmod(0o700)
    dirs = {name: exp_dir / name for name in names}
    for d in dirs.values():
        remove_tree(d)
        d.mkdir(parents=True)
    return dirs


@functools.cache
def hardware() -> dict:
    """What the run ran on: GPU name, driver and CUDA version, or the CPU model; torch's version."""
    info: dict = {"host": platform.node(), "python": platform.python_version()}
    try:
        from importlib.metadata import version

        info["torch"] = version("torch")
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            name, driver = (part.strip() for part in out.stdout.strip().splitlines()[0].split(","))
            info.update(gpu=name, driver=driver)
            cuda = re.search(r"CUDA Version: ([0-9.]+)", subprocess.run(["nvidia-smi"], capture_output=True,
                                                                        text=True, timeout=10).stdout)
            if cuda:
                info["cuda"] = cuda.group(1)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    if "gpu" not in info:
        try:
            model = re.search(r"^model name\s*: (.*)$", Path("/proc/cpuinfo").read_text(), re.M)
            info["cpu"] = model.group(1).strip() if model else platform.processor()
        except OSError:
            info["cpu"] = platform.processor()
        info["cpu_count"] = os.cpu_count()
    return info


def _lines(fd: int, deadline: float, give_up: Callable[[], bool]) -> Iterator[str]:
    """Lines from a pipe until its writer closes it, the deadline passes or give_up() says so."""
    buffer = b""
    while time.monotonic() < deadline and not give_up():
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode("utf-8", errors="replace")


PROFILE = re.compile(r"eval_profile: load ([0-9.]+) first_answer ([0-9.]+) answers ([0-9.]+)")


def eval_profile(log: Path) -> dict[str, float]:
    """What the scorer measured of the model processes (its third-last line, written by it alone):
    seconds from a gate opening to the model's hello (train.py's import, its model, the weights), and
    from a first request to its answer and to the last answer. The time a model could spend on more
    than scoring."""
    lines = tail(log, 2000).strip().splitlines()
    found = PROFILE.fullmatch(lines[-3]) if len(lines) >= 3 else None
    if found is None:
        return {}
    return {"model_load_s": float(found.group(1)), "first_answer_s": float(found.group(2)),
            "answers_s": float(found.group(3))}


def too_many_tasks_reason(spec: RunSpec, seen: int, who: str = "processes: it") -> str:
    return (f"{who} ran {seen} processes and threads at once, over the {task_cap(spec.max_tasks)} a run may "
            "have (more would leave the host unable to start any)")


def _breach(spec: RunSpec, model: Contained) -> str:
    """The reason to end scoring when a model process went past its watch's limits, else ''."""
    found = model.breach()
    if found == "tasks":
        return too_many_tasks_reason(spec, model.tasks_over, who="eval: a model process")
    return disk_full_reason(spec) if found == "disk" else ""


def disk_full_reason(spec: RunSpec) -> str:
    return (f"disk: it left less than {spec.disk_floor / 2**30:.1f} GiB (or {INODE_FLOOR} files) free under "
            f"{spec.exp_dir.parent}, and was ended: a run may not fill the disk")


def _devices(device: str | None) -> tuple[int, ...] | None:
    """The one GPU node a slot's run may see (None: every node, when no slot chose one)."""
    return (int(device),) if device is not None and device.isdigit() else None


def _model_failure(reason: str, models: list[ProcResult], train_py: bytes) -> str:
    """The scorer's reason for a failed model process, with the process's own account of why. Until
    it is sent text to score, what it printed is its own; after, anything in its log may be that text
    (a window raised as an error message), and a reason reaches the agent and results.tsv. Then only
    the kind of error and where in train.py it was raised are told, as a known name and a line
    number that train.py has: nothing the process could spell the text with."""
    role = next((r for r in ROLES if f"the {r} model process" in reason), None)
    log = next((tail(m.log_path) for m in models if m.log_path.name == f"eval-{role}.log"), "")
    if not log.strip():
        return reason
    if role == ROLES[0] and any(words in reason for words in BEFORE_ANY_TEXT):
        why = _last_error(log)
        return why if why.startswith("eval: ") else f"{reason}: {why}"
    # The scorer's own words stay, less the answer limit: it follows the model's answer times, which
    # the model chooses (and could choose from the text it was sent).
    reason = re.sub(r" \(limit \d+s\)", "", reason)
    kind = next((m.group(1) for line in reversed(log.splitlines())
                 if (m := re.match(r"(?:[A-Za-z_][\w.]*\.)?(\w+)(?::|$)", line.strip())) and m.group(1) in ERROR_NAMES),
                "an error")
    lines = train_py.count(b"\n") + 1
    where = [int(n) for n in TRAIN_PY_LINE.findall(log) if 1 <= int(n) <= lines]
    at = f" at train.py line {where[-1]}" if where else ""
    return f"{reason}: {kind}{at} (its message is not shown: it had been sent text to score; eval-{role}.log has it)"


TRAIN_PY_LINE = re.compile(r'File "(?:[^"\n]*/)?train\.py", line (\d{1,7})\b')


def _last_error(log_tail: str) -> str:
    """The error a run ended with, and where in train.py it was raised when the traceback says."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|abort)\b|^[A-Za-z_.]+: ", lines[i]):
            where = [m.group(1) for line in lines[:i] if (m := TRAIN_PY_LINE.search(line))]
            return lines[i][:200] + (f" (train.py line {where[-1]})" if where else "")
    return lines[-1][:200] if lines else "no output"


def last_loss(line: str) -> str | None:
    match = LOSS.search(line)
    return match.group(1) if match else None
