"""One run of a custom target (autoresearch.toml), with the same API as runner.Runner.

Per run, under the experiment's directory:
  src/        the commit's tracked files, fresh (mtimes of now, so a build cache never mistakes
              them for what it built before); cwd of the build and run commands
  ckpt/       AUTORESEARCH_OUT: what the run leaves for the evaluate command (kept as --keep-checkpoints says)
  home/, tmp/ a fresh HOME and TMPDIR
  eval/       the commit's files again, fresh; cwd of the evaluate command, which sees ckpt/ read-only
  nodes-*/    the sandboxes' own copies of /dev/null and the other standard device nodes (a root daemon)
The cache the target declares ([sandbox] cache, e.g. cargo's target directory) lives under
.autoresearch/cache/NAME/K/: one of a pool, locked for the length of a build and run, so two slots
never build into the same directory, while sources always come from the commit being run.
"""
from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path
from typing import Callable

from loop import gitops, sandbox
from loop.procs import Cancel, ProcResult, run_contained, tail
from loop.runner import PASSED_ENV, RunOutcome, RunSpec, disk_full_reason, fresh_dirs, too_many_tasks_reason
from loop.target import Target
from loop.trees import remove_tree, strip_setid

EVAL_TIMEOUT_S = 600.0
BUILD_SHARE = 1.0  # the build gets its own timeout of this share of the run's, on top of it
PASSED_TOOL_ENV = ("CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "GOPATH", "GOCACHE", "GOROOT")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
KEY_VALUE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*:\s*(" + NUMBER + r")\s*$", re.M | re.I)
FIRST_ERRORS = (re.compile(r"^\s*(error\b.*)$", re.M | re.I), re.compile(r"^(.*\berror\b.*)$", re.M | re.I))


class TargetRunner:
    def __init__(self, repo: Path, target: Target, commit: str, cache_root: Path, cancel: Cancel | None = None,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.repo, self.target, self.commit, self.cache_root = repo, target, commit, cache_root
        self.cancel = cancel or Cancel()
        self.on_line = on_line
        self.gpu = sandbox.gpu_present()

    def run(self, spec: RunSpec) -> RunOutcome:
        out = self.train(spec)
        return out if out.reason else self.evaluate(spec, out)

    def train(self, spec: RunSpec) -> RunOutcome:
        dirs = fresh_dirs(spec.exp_dir, "src", "ckpt", "home", "tmp", "eval")
        self._export(dirs["src"])
        out = RunOutcome()
        out.timings["started"] = time.time()
        timeout = self.target.timeout or spec.timeout
        with CacheSlot(self.cache_root, self.target.cache_dir is not None) as cache:
            env = self._env(dirs, spec)
            readonly = self._readonly()
            writable: tuple[Path, ...] = (dirs["ckpt"], dirs["home"], dirs["tmp"])
            if cache.path is not None and self.target.cache_env:
                env[self.target.cache_env] = str(cache.path)
                writable += (cache.path,)
            box = sandbox.SandboxSpec(workdir=dirs["src"], writable=writable, readonly=readonly, hide=(self.repo,),
                                      gpu=self.gpu, nodes_dir=spec.exp_dir / "nodes-run")
            if self.target.build:
                build = self._contained(self.target.build, box, env, timeout * BUILD_SHARE,
                                        spec.exp_dir / "build.log", None, spec)
                if reason := self._failure(build, "build", timeout * BUILD_SHARE, out, spec):
                    out.killed = build.timed_out or build.cancelled
                    # a compiler's error is what an agent fixes best: it goes back to it first
                    out.simple_crash = build.returncode not in (0, None)
                    out.reason = f"build failed: {_first_error(build.log_path)}" if out.simple_crash else reason
                    out.log_tail = tail(build.log_path)
                    out.timings["training_ended"] = time.time()
                    _strip_setid(spec.exp_dir, cache.path)
                    return out
            run = self._contained(self.target.run or "", box, env, timeout, spec.exp_dir / "train.log", self.on_line,
                                  spec)
            _strip_setid(spec.exp_dir, cache.path)
        out.timings["training_ended"] = time.time()
        out.train_seconds = run.wall_seconds
        out.log_tail = tail(run.log_path)
        out.summary = key_values(out.log_tail)
        out.killed = run.timed_out or run.cancelled
        out.reason = self._failure(run, "run", timeout, out, spec)
        if not out.reason and self.target.evaluate is None:
            self._score(out, out.log_tail, "run")
        return out

    def evaluate(self, spec: RunSpec, out: RunOutcome) -> RunOutcome:
        if self.target.evaluate is None:
            out.timings["evaluated"] = time.time()
            return out
        dirs = {name: spec.exp_dir / name for name in ("ckpt", "home", "tmp", "eval")}
        self._export(dirs["eval"])
        env = self._env(dirs, spec)
        box = sandbox.SandboxSpec(workdir=dirs["eval"], writable=(dirs["tmp"], dirs["home"]),
                                  readonly=(*self._readonly(), dirs["ckpt"]), hide=(self.repo,), gpu=self.gpu,
                                  nodes_dir=spec.exp_dir / "nodes-eval")
        ev = self._contained(self.target.evaluate, box, env, EVAL_TIMEOUT_S, spec.exp_dir / "eval.log", None, spec)
        out.timings["evaluated"] = time.time()
        strip_setid(spec.exp_dir)
        out.eval_seconds = ev.wall_seconds
        out.killed = out.killed or ev.timed_out or ev.cancelled
        if reason := self._failure(ev, "eval", EVAL_TIMEOUT_S, out, spec):
            lines = tail(ev.log_path, 2000).strip().splitlines()
            out.reason = reason if ev.returncode in (0, None) else f"eval: {lines[-1][:200] if lines else reason}"
            return out
        self._score(out, tail(ev.log_path, 4000), "eval")
        return out

    # --- parts -------------------------------------------------------------------------------------------
    def _score(self, out: RunOutcome, text: str, who: str) -> None:
        """The metric is the last `name: value` line; the controller orders lower-is-better."""
        found = [v for k, v in KEY_VALUE.findall(text) if k == self.target.metric]
        if not found:
            out.reason = f"{who}: no `{self.target.metric}: VALUE` line in its output"
            return
        value = float(found[-1])
        if value != value or value in (float("inf"), float("-inf")):
            out.reason = f"{who}: impossible {self.target.metric} {found[-1]}"
            return
        out.summary[self.target.metric] = value
        if self.target.memory and isinstance(out.summary.get(self.target.memory), float):
            out.summary["peak_vram_mb"] = out.summary[self.target.memory]
        out.scores["val"] = self.target.score(value)

    def _failure(self, proc: ProcResult, what: str, timeout: float, out: RunOutcome, spec: RunSpec) -> str:
        if proc.cancelled:
            out.interrupted = True
            return "interrupted"
        if proc.disk_full:
            return disk_full_reason(spec)
        if proc.tasks_over:
            return too_many_tasks_reason(spec, proc.tasks_over, who=f"{what}: it")
        if proc.timed_out:
            return f"{what}: timeout after {timeout:.0f}s"
        if proc.returncode != 0:
            return f"{what}: exit {proc.returncode}: {_last_line(proc.log_path)}"
        if proc.leftovers_killed:
            return f"{what}: left {proc.leftovers_killed} process(es) running after it exited"
        return ""

    def _export(self, dest: Path) -> None:
        remove_tree(dest)
        dest.mkdir(parents=True)
        gitops.Git(self.repo).export(self.commit, dest)

    def _readonly(self) -> tuple[Path, ...]:
        paths = (Path(p).expanduser() for p in self.target.readonly)
        return tuple(p.resolve() for p in paths if p.exists())

    def _env(self, dirs: dict[str, Path], spec: RunSpec) -> dict[str, str]:
        # A clean environment: the daemon's keys and tokens never reach the run.
        env = {k: os.environ[k] for k in (*PASSED_ENV, *PASSED_TOOL_ENV) if k in os.environ}
        home = Path.home()
        for tool, default in (("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")):
            if tool not in env and (home / default).is_dir():
                env[tool] = str(home / default)  # the run's HOME is fresh: point tools at the real ones
        if spec.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = spec.device
        env.update(HOME=str(dirs["home"]), TMPDIR=str(dirs["tmp"]), AUTORESEARCH_OUT=str(dirs["ckpt"]),
                   AUTORESEARCH_TIME_BUDGET=f"{spec.budget:g}", AUTORESEARCH_SEED=str(spec.seed))
        return env

    def _contained(self, command: str, box: sandbox.SandboxSpec, env: dict[str, str], timeout: float, log: Path,
                   on_line: Callable[[str], None] | None, spec: RunSpec) -> ProcResult:
        argv = sandbox.wrap(["/bin/sh", "-c", command], box)
        return run_contained(argv, cwd=box.workdir, env=env, timeout=timeout, log_path=log, on_line=on_line,
                             cancel=self.cancel, preexec=sandbox.limits_preexec(box), watch=spec.watch())


class CacheSlot:
    """One directory of the target's build-cache pool, held (flock) while a run builds and runs in it."""

    def __init__(self, root: Path, wanted: bool) -> None:
        self.root, self.wanted = root, wanted
        self.path: Path | None = None
        self._fd: int | None = None

    def __enter__(self) -> CacheSlot:
        if not self.wanted:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        index = 0
        while True:
            path = self.root / str(index)
            path.mkdir(exist_ok=True)
            fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                index += 1
                continue
            self.path, self._fd = path, fd
            return self

    def __exit__(self, *_: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def key_values(text: str) -> dict[str, float]:
    """Every `key: number` line of the output, the last one of each key winning."""
    return {k: float(v) for k, v in KEY_VALUE.findall(text)}


def _strip_setid(*folders: Path | None) -> None:
    """What a run wrote, the build cache it shares with later runs included, loses its set-id bits."""
    for folder in folders:
        if folder is not None:
            strip_setid(folder)


def _first_error(log: Path) -> str:
    """The first line that starts with `error` (cargo, rustc, gcc, go), else the first naming one, else the last."""
    text = tail(log, 20000)
    for pattern in FIRST_ERRORS:
        if match := pattern.search(text):
            return match.group(1).strip()[:200]
    return _last_line(log)


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in tail(log, 2000).splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"
