"""Where runs execute: slots, each running one experiment's training at a time on its own device.

The controller hands an Executor a `Job` (everything one run needs) and hears back through one
queue of events: `Started` (the run has a slot), `TrainingEnded` (the slot's device is free for
the next run while this one is evaluated), `Finished` (the outcome) or `Lost` (the worker vanished:
not the experiment's fault, it goes back in the queue). `LocalExecutor` runs slots as threads on
this machine; a cluster executor implements the same protocol.

On a GPU slot, the next run may start while the previous one is being evaluated: evaluation
happens on a thread of its own, so the GPU trains all the time the controller has work for it. On
a CPU slot the two would share the same cores: the next run waits for the evaluation instead.
"""
from __future__ import annotations

import errno
import os
import queue
import socket
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Union

from loop import gpu
from loop.errors import UsageError
from loop.patience import host_refused_start, patiently, start_thread
from loop.procs import Cancel
from loop.runner import Runner, RunOutcome, RunSpec
from loop.target_runner import TargetRunner

HARDWARE_LABEL_ENV = "AUTORESEARCH_HARDWARE_LABEL"  # names this machine's hardware where models alone do not


@dataclass(frozen=True)
class Job:
    """One run of one experiment: the experiment's number, which repeat, and the run's spec."""

    n: int
    run: int  # 0 for the first run of a commit; repeats (confirmations, baseline runs) count up
    commit: str
    spec: RunSpec
    score_only: bool = False  # score an existing checkpoint (the holdout of a kept commit): no training
    # With score_only: the hardware record of the run whose checkpoint is scored. A cluster finds
    # there the node that kept it; a local run's is in spec.exp_dir.
    ran_on: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.n, self.run)


@dataclass(frozen=True)
class Started:
    job: Job
    slot: str
    device: str | None
    host: str


@dataclass(frozen=True)
class TrainingEnded:
    job: Job
    slot: str
    outcome: RunOutcome  # training's part: summary, train_seconds, reason if training failed


@dataclass(frozen=True)
class Finished:
    job: Job
    slot: str
    outcome: RunOutcome


@dataclass(frozen=True)
class Lost:
    job: Job
    slot: str
    why: str


RunEvent = Union[Started, TrainingEnded, Finished, Lost]


class Executor(Protocol):
    def free_slots(self) -> int: ...

    def slot_names(self) -> list[str]: ...

    def submit(self, job: Job, hardware: str | None = None) -> None: ...

    def discard_checkpoints(self, ran_on: list[dict[str, Any]]) -> None:
        """Delete the checkpoints these runs (by their hardware records) left away from their folders."""
        ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class Slot:
    name: str  # "gpu0", "cpu0"
    device: str | None  # CUDA device index, None on CPU

    @property
    def evaluations_beside_training(self) -> int:
        """How many of its runs may be scored while this slot trains the next. A GPU trains beside
        one (scoring is short next to training), never two, or evaluations that outlast short
        trainings pile up without end. A CPU beside none: training and scoring share
        the same cores, so the next run would be starved (a budget's steps halved, a step so slow the
        untouched baseline overran its budget) and score worse for a reason that is not its change."""
        return 1 if self.device is not None else 0


def visible_gpus() -> list[str]:
    """GPU indices this process may use: CUDA_VISIBLE_DEVICES if set, else the GPUs nvidia-smi lists."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(gpu.count())]


def plan_slots(gpus: str, slots: int | None) -> list[Slot]:
    """The slots for `--gpus all|N|0,2,5` (N alone is a count, but 0 alone is GPU 0: a count of none
    means nothing) and `--slots N` (CPU machines, tests)."""
    available = visible_gpus()
    if slots is None and not available and gpus != "all":
        raise UsageError(f"--gpus {gpus}: no GPU is visible here; use --slots N for CPU slots")
    if slots is not None or not available:
        return [Slot(f"cpu{i}", None) for i in range(slots or 1)]
    if gpus == "all":
        chosen = available
    elif gpus.isdigit() and int(gpus) > 0:
        if int(gpus) > len(available):
            raise UsageError(f"--gpus {gpus}: {len(available)} GPU(s) are visible here")
        chosen = available[: int(gpus)]
    else:
        chosen = [g.strip() for g in gpus.split(",") if g.strip()]
        if unknown := [g for g in chosen if g not in available]:
            raise UsageError(f"--gpus {gpus}: no GPU {', '.join(unknown)} here (visible: {', '.join(available)})")
    return [Slot(f"gpu{d}", d) for d in chosen]


class LocalExecutor:
    """Slots as threads on this machine; every run goes through the contained Runner."""

    def __init__(self, slots: list[Slot], make_runner: Callable[[Job], Runner | TargetRunner], events: queue.Queue,
                 cancel: Cancel) -> None:
        self.slots, self.make_runner, self.events, self.cancel = slots, make_runner, events, cancel
        self.host = socket.gethostname()
        self._free = list(slots)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._killed: set[str] = set()  # slots whose last run was killed: wait for their GPU memory
        # A slot trains its next run while the last is scored only as far as
        # Slot.evaluations_beside_training allows: beyond it the slot is held.
        self._scoring: dict[str, int] = {}  # slot -> its runs being scored
        self._held: set[str] = set()  # slots waiting for an earlier evaluation before the next run
        # Scoring alone (a kept commit's holdout) trains nothing. Where slots train beside no
        # evaluation (CPU) it takes a free slot like a run, so no training shares its cores; the
        # controller sees those slots as taken from the moment it asks.
        self._scores_take_slots = any(s.evaluations_beside_training == 0 for s in slots)
        self._waiting_scores: list[Job] = []

    def slot_names(self) -> list[str]:
        return [s.name for s in self.slots]

    def free_slots(self) -> int:
        with self._lock:
            return max(0, len(self._free) - len(self._waiting_scores))

    def submit(self, job: Job, hardware: str | None = None) -> None:
        """Run `job` on a free slot (one machine: its hardware is the only hardware there is)."""
        if job.score_only:
            if self._scores_take_slots:
                with self._lock:
                    self._waiting_scores.append(job)
                self._start_waiting_scores()
            else:
                self._start(self._score, job, None)
            return
        with self._lock:
            slot = self._free.pop(0)
        self._start(self._run, job, slot)

    def _start(self, target: Callable[..., None], job: Job, slot: Slot | None) -> None:
        name = f"slot-{slot.name}" if slot else f"score-{job.n}"
        thread = threading.Thread(target=target, args=(job, slot), name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        start_thread(thread)

    def _start_waiting_scores(self) -> None:
        while True:
            with self._lock:
                if not (self._waiting_scores and self._free):
                    return
                job, slot = self._waiting_scores.pop(0), self._free.pop(0)
            self._start(self._score, job, slot)

    def _run(self, job: Job, slot: Slot) -> None:
        spec = replace(job.spec, device=slot.device)
        evaluating = False
        try:
            if slot.name in self._killed and slot.device is not None:
                gpu.wait_for_free_memory(device=slot.device)
            self._killed.discard(slot.name)
            runner = self.make_runner(job)
            self.events.put(Started(job, slot.name, slot.device, self.host))
            trained = patiently(lambda: runner.train(spec))
            if label := os.environ.get(HARDWARE_LABEL_ENV):
                trained.hardware = {**trained.hardware, "label": label}
            if trained.killed:
                self._killed.add(slot.name)
            # The device is free for the next run while this one is scored: free it before the
            # controller hears, so it can dispatch at once.
            if trained.reason:
                self._release(slot)
            else:
                self._scored(slot)
                evaluating = True
            self.events.put(TrainingEnded(job, slot.name, trained))
            if trained.reason:
                self.events.put(Finished(job, slot.name, trained))
                return
            outcome = patiently(lambda: runner.evaluate(spec, trained))
            if outcome.killed:
                self._killed.add(slot.name)
            self.events.put(Finished(job, slot.name, outcome))
        except Exception as e:  # nothing a run does may end the daemon: a bug here is the run's crash
            if not evaluating:
                self._release(slot)
            if host_refused_start(e):  # the host stayed full past all patience: not this experiment's doing
                self.events.put(Lost(job, slot.name, f"the host could not start a process ({e})"))
                return
            reason = f"internal error in slot {slot.name}: {e!r}"
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # the run filled it, most likely
                reason = f"disk: the disk filled while it ran ({e.strerror}), and it was ended"
            self.events.put(Finished(job, slot.name, RunOutcome(reason=reason)))
        finally:
            if evaluating:
                self._scored(slot, done=True)

    def _score(self, job: Job, slot: Slot | None) -> None:
        """Score a checkpoint alone, on `slot` when scores take one (it is freed before the
        controller hears, as after a run's training)."""
        try:
            outcome = patiently(lambda: self.make_runner(job).evaluate(job.spec, RunOutcome()))
        except Exception as e:  # a bug here must not end the daemon
            outcome = RunOutcome(reason=f"internal error while scoring: {e!r}")
        if slot is not None:
            self._release(slot)
        self.events.put(Finished(job, "", outcome))

    def _scored(self, slot: Slot, done: bool = False) -> None:
        """A run of `slot` starts (or, done, ends) being scored. The slot is free for its next run
        once no more of its runs are being scored than it may train beside."""
        with self._lock:
            self._scoring[slot.name] = scoring = self._scoring.get(slot.name, 0) + (-1 if done else 1)
            beside = slot.evaluations_beside_training
            if not done and scoring > beside:
                self._held.add(slot.name)
                return
            if done and (slot.name not in self._held or scoring > beside):
                return
            self._held.discard(slot.name)
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if slot not in self._free:
                self._free.append(slot)
                self._free.sort(key=self.slots.index)
        self._start_waiting_scores()

    def discard_checkpoints(self, ran_on: list[dict[str, Any]]) -> None:
        """Nothing to do: a local run's checkpoint is in its folder, which the controller tidies."""

    def shutdown(self) -> None:
        """Wait for the slots' threads (the caller cancels runs first when it must stop now)."""
        for t in self._threads:
            t.join(timeout=60)
