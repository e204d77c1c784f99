"""train.py from a fresh copy: learns, keeps to its budget (also when the machine gets busy near
its end), prints the summary, seeds from AUTORESEARCH_SEED, stops on NaN."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from loop.guard import lint_train_py
from loop.summary import SUMMARY_KEYS, parse_summary

TOLERANCE = 0.05  # train.py stops within 5% of its budget, stricter than the daemon's one step

MAIN = Path(__file__).resolve().parents[1]
BUDGET = 6.0  # seconds of training
STOPPED = re.compile(r"^stopped at [0-9.]+s of [0-9.]+s after \d+ steps; slowest step ([0-9.]+)s$", re.M)
PROGRESS = re.compile(r"^step (\d+) \| loss ([0-9.]+) \| ([0-9.]+)s of", re.M)
EVERY_STEP = ("LOG_EVERY = 25 if ON_GPU else 10", "LOG_EVERY = 1")  # a progress line per step
PRECISE = ("{budget.trained:.1f}s of", "{budget.trained:.4f}s of")  # each step's length, from two lines
RECENT_STEPS = int(re.search(r"^RECENT_STEPS = (\d+)", (MAIN / "train.py").read_text(), re.M).group(1))
WARMUP_STEPS = int(re.search(r"^WARMUP_STEPS = (\d+)", (MAIN / "train.py").read_text(), re.M).group(1))  # untimed
# one thread per run: on a shared two-core machine, two threads per process fight the other
# processes and make steps several times slower and their length erratic
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def fresh_copy(tmp_path: Path, *replace: tuple[str, str]) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("prepare.py", "train.py", "val.txt"):
        shutil.copy(MAIN / name, work / name)
    text = (work / "train.py").read_text()
    for old, new in replace:
        assert old in text
        text = text.replace(old, new)
    (work / "train.py").write_text(text)
    return work


def test_trains_to_budget_and_evaluates(tmp_path: Path, prepared_cache: Path) -> None:
    work = fresh_copy(tmp_path)
    env = {**os.environ, **ONE_THREAD, "AUTORESEARCH_CACHE": str(prepared_cache),
           "AUTORESEARCH_TIME_BUDGET": f"{BUDGET:g}"}
    train = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr[-2000:]
    summary = parse_summary(train.stdout)
    assert set(SUMMARY_KEYS) <= set(summary)
    assert train.stdout.strip().splitlines()[-len(SUMMARY_KEYS) - 1] == "---"
    slowest = float(STOPPED.findall(train.stdout)[-1])
    # It stops when the slowest recent step would no longer fit, never over the runner's limit.
    limit = BUDGET * (1 + TOLERANCE)
    assert BUDGET - 2 * slowest <= summary["training_seconds"] <= limit, train.stdout[-1500:]
    assert summary["peak_vram_mb"] == 0.0 and summary["num_steps"] > 10
    ev = subprocess.run([sys.executable, "prepare.py", "eval", "--checkpoint", "out"], cwd=work, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    bpb = float(ev.stdout.split("val_bpb: ")[1].split()[0])
    assert bpb < 5.0  # a uniform byte model scores 8.0; six seconds on a CPU already learns a lot


def mean_step(progress: re.Match) -> float | None:
    """Mean seconds per timed step so far, from a progress line; None during the warm-up."""
    timed = int(progress.group(1)) - WARMUP_STEPS
    return float(progress.group(3)) / timed if timed > 0 else None


def late_enough(trained: float, mean: float, budget: float, hogs: int) -> bool:
    """The moment for the hogs: a step that starts under the old rule (trained + mean step <= the
    budget) and that the hogs slow to (hogs + 1) mean steps ends past the runner's tolerance. The
    middle of that window, one step early for the step already under way."""
    window = (budget * (1 + TOLERANCE) - (hogs + 1) * mean, budget - mean)
    return trained >= sum(window) / 2 - mean


def test_stays_in_budget_when_the_machine_gets_busy_near_the_end(tmp_path: Path, prepared_cache: Path) -> None:
    """CPU hogs join training on its one core shortly before the budget ends, so the next steps are
    several times slower than any before them: the old rule (a step of the mean length must fit)
    starts one more of those and runs over; the run must stop within the runner's tolerance."""
    budget, hogs = 10.0, 5  # the hogs leave training a sixth of the core: steps about 6x slower
    work = fresh_copy(tmp_path, EVERY_STEP, PRECISE)
    core = {min(os.sched_getaffinity(0))}
    env = {**os.environ, **ONE_THREAD, "AUTORESEARCH_CACHE": str(prepared_cache),
           "AUTORESEARCH_TIME_BUDGET": f"{budget:g}"}
    train = subprocess.Popen([sys.executable, "train.py"], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: os.sched_setaffinity(0, core))
    watchdog = threading.Timer(300, train.kill)
    watchdog.start()
    # The hogs wait stopped on the same core from the start, so that they bite the moment they are
    # let go (starting processes on a loaded machine takes longer than a step).
    hog_procs = [subprocess.Popen(["sh", "-c", "kill -STOP $$; while :; do :; done"],
                                  preexec_fn=lambda: os.sched_setaffinity(0, core)) for _ in range(hogs)]
    released_at: float | None = None  # training seconds when the hogs were let go
    hog_cpu = 0.0
    lines: list[str] = []
    steps: list[float] = []  # lengths of the timed steps so far
    try:
        for line in train.stdout:  # type: ignore[union-attr]
            lines.append(line)
            progress = PROGRESS.match(line)
            mean = mean_step(progress) if progress and released_at is None else None
            if mean is None:
                continue
            trained = float(progress.group(3))  # type: ignore[union-attr]
            steps.append(trained - sum(steps))
            # On a busy machine steps vary, and train.py may stop (its slowest recent step would not
            # fit) before the moment above: the hogs go in no later than the line after which one
            # more step may be its last.
            last_chance = trained + 2 * max(steps[-RECENT_STEPS:]) >= budget
            if late_enough(trained, mean, budget, hogs) or last_chance:
                for hog in hog_procs:
                    os.kill(hog.pid, signal.SIGCONT)
                released_at = trained
        train.wait()
        hog_cpu = sum(sum(psutil.Process(hog.pid).cpu_times()[:2]) for hog in hog_procs)
    finally:
        watchdog.cancel()
        for hog in hog_procs:
            hog.kill()
            hog.wait()
    out = "".join(lines)
    assert train.returncode == 0 and released_at is not None, out[-2000:]
    summary = parse_summary(out)
    assert out.strip().splitlines()[-len(SUMMARY_KEYS) - 1] == "---"
    assert summary["training_seconds"] <= budget * (1 + TOLERANCE), out[-2000:]
    # The hogs did take the core from training for the rest of its budget (5/6 of it when alone).
    assert hog_cpu > (budget - released_at) / 2, (hog_cpu, released_at, out[-2000:])


def test_seeds_from_the_environment(tmp_path: Path, prepared_cache: Path) -> None:
    """Same AUTORESEARCH_SEED: the same initial weights, random draws (python, numpy, torch) and
    loss at step 0; another seed: different weights and draws. (Later losses also depend on the
    clock, through the learning-rate schedule over the time budget.)"""
    anchor = "    step_model = torch.compile(model) if COMPILE else model\n"
    draws = (anchor, anchor + "    print('draws', random.random(), np.random.rand(), torch.rand(1).item(), "
                              "float(model.embed.weight.sum()), flush=True)\n")
    work = fresh_copy(tmp_path, draws)

    def run(seed: int) -> tuple[list[str], str]:
        env = {**os.environ, **ONE_THREAD, "AUTORESEARCH_CACHE": str(prepared_cache), "AUTORESEARCH_TIME_BUDGET": "1",
               "AUTORESEARCH_SEED": str(seed)}
        done = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        draw = next(line for line in done.stdout.splitlines() if line.startswith("draws "))
        first = PROGRESS.search(done.stdout)
        assert first is not None and first.group(1) == "0", done.stdout[-2000:]
        return draw.split()[1:], first.group(2)

    (draws_a, loss_a), (draws_b, loss_b), (draws_c, _) = run(1), run(1), run(2)
    assert draws_a == draws_b and loss_a == loss_b
    assert all(x != y for x, y in zip(draws_a, draws_c)) and len(draws_c) == 4


def test_aborts_on_divergence(tmp_path: Path, prepared_cache: Path) -> None:
    work = fresh_copy(tmp_path, ("ADAM_LR = 0.004 if ON_GPU else 0.006", "ADAM_LR = 0.004 if ON_GPU else 1e9"))
    env = {**os.environ, **ONE_THREAD, "AUTORESEARCH_CACHE": str(prepared_cache), "AUTORESEARCH_TIME_BUDGET": "20"}
    train = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 1
    assert "abort: loss is" in train.stdout.strip().splitlines()[-1]


def test_train_py_passes_the_guard() -> None:
    assert lint_train_py((MAIN / "train.py").read_text()) == []
