"""One experiment's training and evaluation, from trusted parts, in contained processes.

Per experiment, under its directory:
  train/  train.py (the commit's bytes) and prepare.py (pinned at run start); cwd of training
  ckpt/   AUTORESEARCH_OUT: the only thing training leaves for the evaluator
  home/, tmp/  a fresh HOME and TMPDIR, so nothing carries over from an earlier run
  eval/   train.py, prepare.py and val.txt (pinned copies); cwd of `python prepare.py eval`
The evaluator never runs where training could have written, so nothing training left behind can
shadow one of its modules; its val_bpb is the metric, the training summary is advisory.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loop import sandbox
from loop.procs import Cancel, ProcResult, run_contained, tail
from loop.summary import parse_summary

STARTUP_ALLOWANCE_S = 120.0  # wall-clock beyond the budget for imports, compilation and saving
OVER_BUDGET_TOLERANCE = 0.05  # reported training_seconds may exceed the budget by this share
EVAL_TIMEOUT_S = 600.0
SIMPLE_CRASH = re.compile(r"^(SyntaxError|IndentationError|TabError|ImportError|ModuleNotFoundError|NameError|"
                          r"AttributeError|TypeError|RuntimeError: .*(size|shape|dimension|mat1 and mat2))", re.M)
LOSS = re.compile(r"\bloss[ :=]+([0-9.]+|nan|inf)", re.I)
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH")


@dataclass
class RunOutcome:
    scores: dict[str, float] = field(default_factory=dict)  # split -> bits per byte
    reason: str = ""  # empty when it worked; one line otherwise
    simple_crash: bool = False  # a crash the agent can likely fix (syntax, import, shape)
    interrupted: bool = False  # cancelled by a stop --now: not the experiment's fault
    killed: bool = False  # the run had to be killed (timeout, cancel): the GPU may need a moment
    summary: dict = field(default_factory=dict)
    train_seconds: float = 0.0  # the daemon's own clock for the training process
    eval_seconds: float = 0.0
    log_tail: str = ""

    timings: dict[str, float] = field(default_factory=dict)  # time.time() at started, training_ended, evaluated
    hardware: dict = field(default_factory=dict)

    @property
    def val_bpb(self) -> float | None:
        return self.scores.get("val")

    @property
    def peak_vram_mb(self) -> float:
        value = self.summary.get("peak_vram_mb", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0


def data_dir() -> Path:
    """Where `python prepare.py` put the training data (the same rule as prepare.data_dir)."""
    return Path(os.environ.get("AUTORESEARCH_CACHE", Path.home() / ".cache" / "autoresearch")).expanduser()


@dataclass(frozen=True)
class RunSpec:
    train_py: bytes
    exp_dir: Path
    budget: float
    timeout: float  # hard wall-clock cap on the training process
    seed: int = 0  # exported as AUTORESEARCH_SEED to training
    device: str | None = None  # GPU index for CUDA_VISIBLE_DEVICES; None: CPU or all devices
    startup_allowance: float = STARTUP_ALLOWANCE_S
    splits: tuple[str, ...] = ("val",)


class Runner:
    def __init__(self, repo: Path, pinned: dict[str, bytes], cancel: Cancel | None = None,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.repo, self.pinned = repo, pinned
        self.cancel = cancel or Cancel()
        self.on_line = on_line
        self.data = data_dir().resolve()
        self.gpu = sandbox.gpu_present()

    def run(self, spec: RunSpec) -> RunOutcome:
        out = self.train(spec)
        return out if out.reason else self.evaluate(spec, out)

    def _dirs(self, exp_dir: Path) -> dict[str, Path]:
        return {name: exp_dir / name for name in ("train", "ckpt", "home", "tmp", "eval")}

    def train(self, spec: RunSpec) -> RunOutcome:
        self.budget, self.timeout = spec.budget, spec.timeout
        dirs = self._dirs(spec.exp_dir)
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)  # a re-run after resume starts fresh too
            d.mkdir(parents=True)
        (dirs["train"] / "train.py").write_bytes(spec.train_py)
        (dirs["train"] / "prepare.py").write_bytes(self.pinned["prepare.py"])
        out = RunOutcome()
        out.timings["started"] = time.time()
        env = self._env(dirs["home"], dirs["tmp"], spec.device)
        env.update(AUTORESEARCH_OUT=str(dirs["ckpt"]), AUTORESEARCH_TIME_BUDGET=f"{spec.budget:g}",
                   AUTORESEARCH_CACHE=str(self.data), AUTORESEARCH_SEED=str(spec.seed))
        box = sandbox.SandboxSpec(workdir=dirs["train"], writable=(dirs["ckpt"], dirs["home"], dirs["tmp"]),
                                  readonly=(self.data,), hide=(self.repo,), gpu=self.gpu)
        train = self._contained(["train.py"], box, env, spec.timeout, spec.exp_dir / "train.log", self._watch)
        out.timings["training_ended"] = time.time()
        out.train_seconds = train.wall_seconds
        out.log_tail = tail(train.log_path)
        out.summary = parse_summary(out.log_tail)
        out.killed = train.timed_out or train.cancelled
        out.reason = self._training_failure(train, out)
        return out

    def evaluate(self, spec: RunSpec, out: RunOutcome) -> RunOutcome:
        dirs = self._dirs(spec.exp_dir)
        for name in ("train.py", "prepare.py", "val.txt"):
            (dirs["eval"] / name).write_bytes(spec.train_py if name == "train.py" else self.pinned[name])
        env = self._env(dirs["home"], dirs["tmp"], spec.device)
        env.pop("AUTORESEARCH_VAL", None)
        box = sandbox.SandboxSpec(workdir=dirs["eval"], writable=(dirs["tmp"],), readonly=(dirs["ckpt"],),
                                  hide=(self.repo,), gpu=self.gpu)
        ev = self._contained(["prepare.py", "eval", "--take-val", "--checkpoint", str(dirs["ckpt"])], box, env,
                             EVAL_TIMEOUT_S, spec.exp_dir / "eval.log", None)
        out.timings["evaluated"] = time.time()
        out.eval_seconds = ev.wall_seconds
        out.killed = out.killed or ev.timed_out or ev.cancelled
        ev_text = tail(ev.log_path, 2000)
        lines = ev_text.strip().splitlines()
        if ev.cancelled:
            out.interrupted, out.reason = True, "interrupted"
        elif ev.timed_out:
            out.reason = f"eval: timeout after {EVAL_TIMEOUT_S:.0f}s"
        elif ev.leftovers_killed:
            out.reason = f"eval: left {ev.leftovers_killed} process(es) running after it exited"
        elif ev.returncode != 0 or not lines:
            out.reason = "eval: " + (lines[-1].removeprefix("eval: ") if lines else f"exit {ev.returncode}")[:200]
        else:
            # The evaluator prints its two trusted lines last; anything earlier may be train.py's.
            match = re.fullmatch(r"val_bpb: ([0-9]+\.[0-9]+)", lines[-2]) if len(lines) >= 2 else None
            if match is None or not lines[-1].startswith("eval_seconds:"):
                out.reason = "eval: no val_bpb line at the end of the evaluator's output"
            else:
                out.scores["val"] = float(match.group(1))
        return out

    def _training_failure(self, train: ProcResult, out: RunOutcome) -> str:
        if train.cancelled:
            out.interrupted = True
            return "interrupted"
        if train.timed_out:
            return f"timeout after {self.timeout:.0f}s"
        if train.returncode != 0:
            out.simple_crash = bool(SIMPLE_CRASH.search(out.log_tail))
            return f"exit {train.returncode}: {_last_error(out.log_tail)}"
        if not out.summary:
            return "no summary: train.py must print '---' then key: value lines last"
        reported = out.summary.get("training_seconds")
        limit = self.budget * (1 + OVER_BUDGET_TOLERANCE)
        if not isinstance(reported, float):
            return "summary has no training_seconds"
        if reported > limit:
            return f"over budget: reported {reported:.1f}s > {limit:.1f}s"
        if train.wall_seconds > self.budget + STARTUP_ALLOWANCE_S:
            return f"over budget: ran {train.wall_seconds:.1f}s > {self.budget + STARTUP_ALLOWANCE_S:.1f}s"
        if train.leftovers_killed:
            return f"left {train.leftovers_killed} process(es) running after it exited"
        return ""

    def _contained(self, args: list[str], spec: sandbox.SandboxSpec, env: dict[str, str], timeout: float,
                   log: Path, on_line: Callable[[str], None] | None) -> ProcResult:
        argv = sandbox.wrap([sys.executable, *args], spec)
        return run_contained(argv, cwd=spec.workdir, env=env, timeout=timeout, log_path=log,
                             on_line=on_line, cancel=self.cancel, preexec=sandbox.limits_preexec(spec))

    def _env(self, home: Path, tmp: Path, device: str | None) -> dict[str, str]:
        # A clean environment: no API keys or tokens of the daemon's reach the experiment.
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
                   PYTHONNOUSERSITE="1")
        return env

    def _watch(self, line: str) -> None:
        if self.on_line is not None:
            self.on_line(line)


def _last_error(log_tail: str) -> str:
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|abort)\b|^[A-Za-z_.]+: ", line):
            return line[:200]
    return lines[-1][:200] if lines else "no output"


def last_loss(line: str) -> str | None:
    match = LOSS.search(line)
    return match.group(1) if match else None
