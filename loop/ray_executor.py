"""Runs on a Ray cluster: one Ray task per run, on whichever node has a free GPU.

`RayExecutor` speaks the same protocol as the local executor (loop/executor.py): the controller
submits Jobs and hears `Started`, `TrainingEnded`, `Finished` or `Lost` on its queue. Each run is
one Ray generator task asking for one GPU (one CPU on CPU clusters) with Ray's own retries off: a
run that dies with its node comes back as `Lost`, so the controller (which journals) re-queues it,
and no experiment is ever run twice behind the journal's back.

On the node, the task runs the same contained Runner as a local slot, in a node-local scratch
directory, with the harness's pinned bytes shipped with the task; the node's training data is
prepared once per node under a file lock. The task yields three times: where it runs, training's
outcome, and the whole result (outcome, compressed logs, where the checkpoint stayed).

A checkpoint that stayed on its node is used there: a kept commit's holdout is scored by a task
pinned to that node (or, when checkpoints are fetched, by a task that carries it), and one the
controller no longer wants (--keep-checkpoints) is deleted there, so a night of runs does not fill
the nodes' disks.

Compiled kernels travel too: the node that runs the baseline sends its kernels back with the result,
the controller keeps them as a local run would (runner.py), and every later task carries them (by
reference, unpacked once per node), so a cluster's runs start from them as a local slot's do.

Slots follow the cluster: nodes that join add GPUs, nodes that leave take theirs away. Nothing of
Ray is imported until this module is used, and this module only when `--ray` is given.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import queue
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import loop
from loop import gpu as gpu_query
from loop.errors import SetupError
from loop.executor import Finished, Job, Lost, Started, TrainingEnded
from loop.procs import Cancel
from loop.runner import Runner, RunOutcome, RunSpec, data_dir, keep_kernels
from loop.trees import remove_tree

INSTALL_HINT = "pip install -e '.[ray]'"
HARDWARE_PREFIX = "hw:"  # a node's custom resource "hw:H100" labels its hardware
LABEL_SHARE = 0.001  # of a hardware label each task asks for: a label routes tasks, it never limits them
WAIT_S = 0.2  # the longest the watcher blocks on in-flight tasks before checking cancel and new tasks
CLUSTER_VIEW_S = 1.0  # how long a read of the cluster's nodes and free resources is reused
CANCEL_POLL_S = 1.0  # how often a task on a node asks whether a stop --now was requested
CANCEL_GRACE_S = 20.0  # after a stop --now, time for runs to kill their own processes before Ray kills them
DROP_WAIT_S = 30.0  # at shutdown, how long checkpoint deletions on nodes may take to finish
SCRATCH_ENV = "AUTORESEARCH_SCRATCH"  # a node's folder for runs; default: next to its data cache
PREPARED_MARK = ".prepared-"  # + the pinned prepare.py's hash: this node's data is ready
LOST_ERRORS = ("NodeDiedError", "WorkerCrashedError", "OwnerDiedError", "ObjectLostError", "ActorDiedError",
               "RaySystemError", "LocalRayletDiedError", "ObjectFetchTimedOutError", "ReferenceCountingAssertionError")


def import_ray() -> Any:
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SetupError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class NodeTask:
    """What a node needs for one run besides the pinned harness (shipped once, by reference)."""

    n: int
    run: int
    train_py: bytes
    budget: float
    timeout: float
    seed: int
    startup_allowance: float
    splits: tuple[str, ...]
    fetch_checkpoint: bool
    keep_kernels: bool = False  # the baseline, with no kernels kept yet: send its kernels back
    checkpoint: str = ""  # score this checkpoint, left on this node by an earlier run: no training
    checkpoint_tar: bytes = b""  # score this checkpoint, carried from the controller: no training


@dataclass
class NodeResult:
    outcome: RunOutcome
    logs: dict[str, bytes]  # file name -> zlib-compressed bytes
    checkpoint: str  # "<node-ip>:<path>" where the checkpoint stayed; "" when fetched or absent
    checkpoint_tar: bytes = b""  # the checkpoint folder as a gzipped tar, when fetched
    kernels_tar: bytes = b""  # the baseline's compiled kernels as a gzipped tar, when asked to keep them


@dataclass
class _Flight:
    job: Job
    label: str | None
    slot: str = ""
    node_id: str = ""
    host: str = ""
    hardware: dict[str, Any] = field(default_factory=dict)


# --- on the node ------------------------------------------------------------------------------------------
def run_on_node(task: NodeTask, pinned: dict[str, bytes], stop_flag: Any, kernels: bytes | None = None) -> Any:
    """The Ray task (a generator): ("started", where), ("trained", outcome), ("finished", NodeResult).
    `kernels`: the kept compiled kernels as a gzipped tar, or None while there are none."""
    import ray

    context = ray.get_runtime_context()
    gpus = [str(g) for g in context.get_accelerator_ids().get("GPU", [])]
    where = {"node_id": context.get_node_id(), "host": ray.util.get_node_ip_address(), "gpu_ids": gpus,
             "gpu_model": _gpu_model(gpus)}
    yield ("started", where)
    cancel = Cancel()
    watching = threading.Event()
    threading.Thread(target=_watch_stop, args=(stop_flag, cancel, watching), daemon=True).start()
    try:
        if task.checkpoint or task.checkpoint_tar:
            yield ("finished", score_checkpoint(task, pinned, cancel, where["host"]))
            return
        failure = prepare_node(pinned["prepare.py"])
        scratch = scratch_root() / uuid.uuid4().hex  # named by no experiment or run: see Daemon.job
        keep = task.keep_kernels and not kernels
        kept = node_kernels(kernels) if kernels else scratch / "kernels" if keep else None
        spec = RunSpec(train_py=task.train_py, exp_dir=scratch, budget=task.budget, timeout=task.timeout,
                       seed=task.seed, device=None, startup_allowance=task.startup_allowance, splits=task.splits,
                       kernels=kept, keep_kernels=keep)
        if failure:
            yield ("finished", NodeResult(RunOutcome(reason=failure), {}, ""))
            return
        # device=None: the run inherits CUDA_VISIBLE_DEVICES, which Ray set to this task's GPU.
        runner = Runner(scratch_root(), pinned, cancel)
        trained = runner.train(spec)
        yield ("trained", trained)
        outcome = trained if trained.reason else runner.evaluate(spec, trained)
        packed = pack(kept, "kernels") if keep and kept is not None and kept.is_dir() else b""
        result = _collect(spec.exp_dir, outcome, where["host"], task.fetch_checkpoint)
        result.kernels_tar = packed
        yield ("finished", result)
    finally:
        watching.set()


def score_checkpoint(task: NodeTask, pinned: dict[str, bytes], cancel: Cancel, host: str) -> NodeResult:
    """Score a checkpoint without training (a kept commit's holdout): the one an earlier run left in
    its folder on this node, or one carried with the task (scored in a folder removed after)."""
    root = scratch_root()
    carried = bool(task.checkpoint_tar)
    if carried:
        exp_dir = root / uuid.uuid4().hex
        unpack(task.checkpoint_tar, exp_dir)
    else:
        exp_dir = Path(task.checkpoint).parent
        if not _run_folder(exp_dir) or not (exp_dir / "ckpt").is_dir():
            return NodeResult(RunOutcome(reason=f"eval: the checkpoint is no longer at {host}:{task.checkpoint}"),
                              {}, "")
    spec = RunSpec(train_py=task.train_py, exp_dir=exp_dir, budget=task.budget, timeout=task.timeout,
                   seed=task.seed, splits=task.splits)
    outcome = Runner(root, pinned, cancel).evaluate(spec, RunOutcome())
    result = _collect(exp_dir, outcome, host, fetch=False)
    if carried:
        remove_tree(exp_dir)
        result.checkpoint = ""
    return result


def drop_checkpoints(paths: list[str]) -> None:
    """Delete checkpoints earlier runs left on this node, each with its run's folder. Only run
    folders (straight under this node's scratch root) are touched, whatever a path says."""
    for path in map(Path, paths):
        if path.name == "ckpt" and _run_folder(path.parent):
            remove_tree(path.parent)


def _run_folder(folder: Path) -> bool:
    """A run's folder on this node: a real directory straight under the scratch root."""
    return folder.parent == scratch_root() and folder.is_dir() and not folder.is_symlink()


def _watch_stop(stop_flag: Any, cancel: Cancel, done: threading.Event) -> None:
    """Turn the controller's stop --now into this run's Cancel, so the Runner kills its own tree."""
    import ray

    while not done.wait(CANCEL_POLL_S):
        try:
            if ray.get(stop_flag.is_set.remote(), timeout=30):
                cancel.set()
                return
        except Exception:  # the controller is gone or busy: the next poll asks again
            continue


def _gpu_model(gpu_ids: list[str]) -> str:
    if not gpu_ids:
        return ""
    names = gpu_query._smi("--query-gpu=name", "-i", gpu_ids[0])
    return names[0] if names else ""


def scratch_root() -> Path:
    """This node's folder for runs: $AUTORESEARCH_SCRATCH, else beside the data cache."""
    root = Path(os.environ[SCRATCH_ENV]) if os.environ.get(SCRATCH_ENV) else data_dir().parent / "autoresearch-runs"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def prepare_node(prepare_py: bytes) -> str:
    """Prepare this node's training data once (for this prepare.py), under a lock; '' or why it failed."""
    cache = data_dir()
    cache.mkdir(parents=True, exist_ok=True)
    mark = cache / (PREPARED_MARK + hashlib.sha256(prepare_py).hexdigest()[:16])
    with open(cache / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one run per node prepares; the others wait and find it done
        if mark.exists():
            return ""
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "prepare.py").write_bytes(prepare_py)
            env = {**os.environ, "AUTORESEARCH_CACHE": str(cache)}
            done = subprocess.run([sys.executable, "prepare.py"], cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stdout + done.stderr).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            return f"prepare.py failed on node {os.uname().nodename}: {last[0][:200]}"
        mark.touch()
        return ""


def node_kernels(tar: bytes) -> Path | None:
    """The kept kernels, unpacked once on this node (named by their hash); None if they cannot be
    (the run then compiles from nothing)."""
    target = scratch_root() / f"kernels-{hashlib.sha256(tar).hexdigest()[:16]}"
    keep_unpacked(tar, target)
    return target if target.is_dir() else None


def keep_unpacked(tar: bytes, kept: Path) -> None:
    """Kernels packed by `pack(folder, "kernels")` become `kept`, as runner.keep_kernels keeps them."""
    if kept.exists():
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            unpack(tar, Path(tmp))
            keep_kernels(Path(tmp) / "kernels", kept)
    except (OSError, tarfile.TarError):
        pass  # the speed-up is lost, never the run


def pack(folder: Path, name: str, files_only: bool = False) -> bytes:
    """A folder as a gzipped tar whose one top entry is `name`. files_only: only the plain files
    straight in it, for what a run wrote (a checkpoint is model.pt): a run then cannot make the walk
    deep or send a link along."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname=name, recursive=not files_only)
        for item in sorted(folder.iterdir()) if files_only else ():
            if item.is_file() and not item.is_symlink():
                archive.add(item, arcname=f"{name}/{item.name}", recursive=False)
    return buffer.getvalue()


def unpack(tar: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:gz") as archive:
        archive.extractall(into, filter="data")


def _collect(exp_dir: Path, outcome: RunOutcome, host: str, fetch: bool) -> NodeResult:
    """Logs as compressed bytes, the checkpoint fetched or left in place, scratch copies removed."""
    logs = {log.name: zlib.compress(log.read_bytes()) for log in sorted(exp_dir.glob("*.log")) if log.is_file()}
    for sub in exp_dir.iterdir():  # scratch copies: everything but the checkpoint
        if sub.is_dir() and sub.name != "ckpt":
            remove_tree(sub)
    for name in logs:
        (exp_dir / name).unlink(missing_ok=True)
    ckpt = exp_dir / "ckpt"
    location, tar = "", b""
    if ckpt.is_dir() and any(ckpt.iterdir()):
        if fetch:
            tar = pack(ckpt, "ckpt", files_only=True)
        else:
            location = f"{host}:{ckpt}"
    if not location:
        remove_tree(exp_dir)
    return NodeResult(outcome, logs, location, tar)


class StopFlag:
    """A tiny actor the tasks poll: set once by the controller on stop --now."""

    def __init__(self) -> None:
        self.flag = False

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag


# --- on the controller ------------------------------------------------------------------------------------
class RayExecutor:
    """Slots are the cluster's GPUs, one a run; on a cluster without GPUs, its nodes' CPUs, a node's
    worth a run (the smallest node's count), so that a run trains beside none as
    on one machine. One Ray task per run; events on `events`."""

    def __init__(self, address: str, pinned: dict[str, bytes], events: queue.Queue, cancel: Cancel,
                 gpu: bool | None = None, *, screen_on: str | None = None, confirm_on: str | None = None,
                 fetch_checkpoints: bool = False) -> None:
        if "prepare.py" not in pinned:
            raise SetupError("the Ray executor needs the harness's prepare.py: run from the experiment's repository")
        self.ray = import_ray()
        self.events, self.cancel = events, cancel
        self.screen_on, self.confirm_on, self.fetch_checkpoints = screen_on, confirm_on, fetch_checkpoints
        self._view: tuple[float, list[dict], dict[str, float]] = (0.0, [], {})
        self._connect(address)
        self.gpu = gpu if gpu is not None else self.ray.cluster_resources().get("GPU", 0) > 0
        self.resource = "GPU" if self.gpu else "CPU"
        self.per_run = 1 if self.gpu else self._smallest_node_cpus()
        self._pinned = self.ray.put(dict(pinned))
        self._stop_flag = self.ray.remote(num_cpus=0, max_restarts=0)(StopFlag).remote()
        # max_calls=0 keeps a node's worker for the next run (Ray starts a fresh one per GPU task by
        # default, for CUDA memory the worker holds; ours holds none: the runs are its subprocesses).
        options: dict[str, Any] = {"max_retries": 0, "retry_exceptions": False,
                                   "num_cpus": 0 if self.gpu else self.per_run, "max_calls": 0}
        if self.gpu:
            options["num_gpus"] = 1
        self._task = self.ray.remote(**options)(run_on_node)
        self._drop = self.ray.remote(num_cpus=0, max_retries=0)(drop_checkpoints)
        self._drops: list[Any] = []  # deletions sent to nodes, collected as they end
        self._kernels: Any = None  # the kept kernels in the object store, once there are some
        self._flights: dict[Any, _Flight] = {}  # generator -> its run
        self._lock = threading.Lock()
        self._cancelled_at: float | None = None
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="ray-watcher", daemon=True)
        self._watcher.start()

    def _connect(self, address: str) -> None:
        self._owns_connection = not self.ray.is_initialized()
        if not self._owns_connection:
            return
        # The nodes run this very `loop` package, shipped with the job, so a node needs Ray and the
        # experiment's libraries but not a matching checkout of this project.
        package = Path(loop.__file__).resolve().parent
        try:
            self.ray.init(address=address, namespace="autoresearch", log_to_driver=False, logging_level="warning",
                          runtime_env={"py_modules": [str(package)], "excludes": ["__pycache__"]})
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SetupError(f"--ray {address}: cannot join the Ray cluster ({first}); start one with "
                             "`ray start --head` or pass the head's address (host:6379)") from None

    def _smallest_node_cpus(self) -> int:
        nodes, _ = self._cluster(fresh=True)
        return min((int(n["Resources"].get("CPU", 0)) for n in nodes if n["Resources"].get("CPU", 0) >= 1), default=1)

    def describe(self) -> str:
        """One line on what a slot is on this cluster, and how many it has now."""
        slots = len(self.slot_names())
        what = "a GPU each" if self.gpu else f"no GPU in the cluster: {self.per_run} CPU(s) each"
        line = f"Ray cluster: {slots} slot(s), {what}"
        return line if slots else line + "; runs wait for a node with room for one to join (`ray status`)"

    # --- the protocol -------------------------------------------------------------------------------------
    def slot_names(self) -> list[str]:
        nodes, _ = self._cluster()
        return [self._slot_name(node["NodeManagerAddress"], node["NodeID"], i, nodes)
                for node in nodes for i in range(int(node["Resources"].get(self.resource, 0)) // self.per_run)]

    def free_slots(self) -> int:
        """Free slots in the cluster now, less the runs submitted here that have not taken theirs yet."""
        if self.cancel.is_set():
            return 0
        nodes, available = self._cluster()
        total = sum(int(node["Resources"].get(self.resource, 0)) // self.per_run for node in nodes)
        with self._lock:
            mine, waiting = len(self._flights), sum(1 for f in self._flights.values() if not f.node_id)
        # Ours are counted exactly; `available` also sees other users of a shared cluster, a moment late.
        return max(0, min(total - mine, int(available.get(self.resource, 0)) // self.per_run - waiting))

    def submit(self, job: Job, hardware: str | None = None) -> None:
        """Run `job` on any node, or on a node labelled `hardware` (its resource `hw:<label>`). A
        score-only job runs where its checkpoint stayed (job.ran_on), or carries it from here."""
        label = hardware or (self.confirm_on if job.run > 0 else self.screen_on)
        spec = job.spec
        if self._kernels is None and spec.kernels is not None and spec.kernels.is_dir():  # kept before a resume
            self._kernels = self.ray.put(pack(spec.kernels, "kernels"))
        task = NodeTask(job.n, job.run, spec.train_py, spec.budget, spec.timeout, spec.seed, spec.startup_allowance,
                        tuple(spec.splits), self.fetch_checkpoints,
                        keep_kernels=spec.keep_kernels and spec.kernels is not None and self._kernels is None)
        options: dict[str, Any] = {"resources": {HARDWARE_PREFIX + label: LABEL_SHARE}} if label else {}
        if job.score_only:
            task, options = self._scoring(job, task)
        generator = self._task.options(**options).remote(task, self._pinned, self._stop_flag, self._kernels)
        with self._lock:
            self._flights[generator] = _Flight(job, label)
        self._view = (0.0, *self._view[1:])  # the next free_slots reads the cluster afresh

    def _scoring(self, job: Job, task: NodeTask) -> tuple[NodeTask, dict[str, Any]]:
        """A score-only task: pinned to the node that holds the checkpoint, or carrying it."""
        node, where = job.ran_on.get("node_id", ""), job.ran_on.get("checkpoint", "")
        if node and ":/" in where:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # Not soft: on another node the path means nothing. A node gone fails the task, which
            # reaches the controller as the score's crash (a holdout never decides anything).
            task = replace(task, checkpoint=_path_of(where))
            return task, {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
        ckpt = job.spec.exp_dir / "ckpt"
        return replace(task, checkpoint_tar=pack(ckpt, "ckpt", files_only=True) if ckpt.is_dir() else b""), {}

    def discard_checkpoints(self, ran_on: list[dict[str, Any]]) -> None:
        """Delete, on their nodes, the checkpoints these runs left there (a node gone took its own)."""
        by_node: dict[str, list[str]] = {}
        for hardware in ran_on:
            if (node := hardware.get("node_id")) and ":/" in (where := hardware.get("checkpoint") or ""):
                by_node.setdefault(node, []).append(_path_of(where))
        if not by_node:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for node, paths in by_node.items():
            strategy = NodeAffinitySchedulingStrategy(node, soft=False)
            with self._lock:
                self._drops.append(self._drop.options(scheduling_strategy=strategy).remote(paths))

    def shutdown(self) -> None:
        """Stop watching; runs still in flight are killed (the controller cancels them first to stop now)."""
        self._closing.set()
        self._watcher.join(timeout=30)
        with self._lock:
            left, drops = list(self._flights), list(self._drops)
        for generator in left:
            self._kill(generator)
        if drops:  # deletions still on their way: a task whose owner is gone never runs
            self.ray.wait(drops, num_returns=len(drops), timeout=DROP_WAIT_S)
        if self._owns_connection and self.ray.is_initialized():
            self.ray.shutdown()

    def where(self, job: Job) -> str:
        """The node id a job runs on ('' before it starts), for tests and the live view."""
        with self._lock:
            return next((f.node_id for f in self._flights.values() if f.job.key == job.key), "")

    # --- watching in-flight tasks ---------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._closing.is_set():
            if self.cancel.is_set():
                self._stop_now()
            self._collect_drops()
            with self._lock:
                generators = list(self._flights)
            if not generators:
                time.sleep(WAIT_S / 4)
                continue
            try:
                ready, _ = self.ray.wait(generators, num_returns=1, timeout=WAIT_S)
            except Exception as e:  # the cluster connection itself failed: every run is lost
                for generator in generators:
                    self._end(generator, lost=f"Ray connection failed: {type(e).__name__}")
                continue
            for generator in ready:
                self._advance(generator)

    def _collect_drops(self) -> None:
        """Deletions that ended are let go of; one that failed (its node gone) had nothing left to do."""
        with self._lock:
            drops = list(self._drops)
        if not drops:
            return
        done, _ = self.ray.wait(drops, num_returns=len(drops), timeout=0)
        for ref in done:
            try:
                self.ray.get(ref)
            except Exception:
                pass
        with self._lock:
            self._drops = [ref for ref in self._drops if ref not in done]

    def _advance(self, generator: Any) -> None:
        with self._lock:
            flight = self._flights.get(generator)
        if flight is None:
            return
        try:
            kind, value = self.ray.get(next(generator))
        except StopIteration:
            self._end(generator, lost="the task ended without a result")
            return
        except Exception as e:
            self._failed(generator, flight, e)
            return
        if kind == "started":
            self._started(flight, value)
        elif kind == "trained":
            value.hardware = dict(flight.hardware)
            self.events.put(TrainingEnded(flight.job, flight.slot, value))
        else:
            self._finished(generator, flight, value)

    def _started(self, flight: _Flight, where: dict[str, Any]) -> None:
        nodes, _ = self._cluster(fresh=True)
        node = next((n for n in nodes if n["NodeID"] == where["node_id"]), {})
        label = _label_of(node)
        with self._lock:
            flight.node_id, flight.host = where["node_id"], where["host"]
            if where["gpu_ids"]:
                index = int(where["gpu_ids"][0])
            else:  # CPU slots carry no ids: the lowest index this node has free
                taken = {f.slot for f in self._flights.values() if f.node_id == flight.node_id and f is not flight}
                index = next(i for i in range(len(taken) + 1)
                             if self._slot_name(flight.host, flight.node_id, i, nodes) not in taken)
            flight.slot = self._slot_name(flight.host, flight.node_id, index, nodes)
            flight.hardware = {"gpu": where["gpu_model"] or label, "label": label, "host": flight.host,
                               "node_id": flight.node_id, "gpu_ids": where["gpu_ids"]}
        device = ",".join(where["gpu_ids"]) or None
        if not flight.job.score_only:  # scoring a checkpoint is no run of the experiment
            self.events.put(Started(flight.job, flight.slot, device, flight.host))

    def _finished(self, generator: Any, flight: _Flight, result: NodeResult) -> None:
        outcome = result.outcome
        outcome.hardware = dict(flight.hardware)
        exp_dir = flight.job.spec.exp_dir
        try:
            exp_dir.mkdir(parents=True, exist_ok=True)
            for name, data in result.logs.items():
                (exp_dir / name).write_bytes(zlib.decompress(data))
            if result.checkpoint_tar:
                unpack(result.checkpoint_tar, exp_dir)
        except (OSError, zlib.error, tarfile.TarError) as e:
            outcome.reason = outcome.reason or f"could not store the run's files in {exp_dir}: {e}"
        if result.kernels_tar:
            self._keep_kernels(result.kernels_tar, flight.job.spec.kernels)
        if result.checkpoint:
            outcome.hardware["checkpoint"] = result.checkpoint
        self._end(generator, finished=outcome)

    def _keep_kernels(self, tar: bytes, kept: Path | None) -> None:
        """The baseline's kernels, from its node: kept where a local run keeps them (so a resumed
        controller has them), and sent with every later task. The first to come back wins."""
        if self._kernels is not None or kept is None or kept.exists():
            return
        keep_unpacked(tar, kept)
        if kept.is_dir():
            self._kernels = self.ray.put(tar)

    def _failed(self, generator: Any, flight: _Flight, error: Exception) -> None:
        name = type(error).__name__
        if self.cancel.is_set() or name == "TaskCancelledError":
            self._end(generator, finished=_interrupted())
        elif name == "OutOfMemoryError":  # Ray's memory monitor killed it: the run's own doing, not the node's
            self._end(generator, finished=RunOutcome(reason=f"out of host memory on node {flight.host}"))
        elif name in LOST_ERRORS or isinstance(error, getattr(self.ray.exceptions, "RaySystemError", ())):
            first = (str(error).strip().splitlines() or [name])[0]
            self._end(generator, lost=f"{name}: {first[:200]}")
        else:  # our own code failed on the node: the run's crash, never the daemon's
            last = (str(error).strip().splitlines() or [name])[-1]
            self._end(generator, finished=RunOutcome(reason=f"internal error on node {flight.host}: {last[:200]}"))

    def _end(self, generator: Any, *, finished: RunOutcome | None = None, lost: str = "") -> None:
        with self._lock:
            flight = self._flights.pop(generator, None)
        if flight is None:
            return
        self._view = (0.0, *self._view[1:])
        if finished is not None:
            finished.hardware = finished.hardware or dict(flight.hardware)
            self.events.put(Finished(flight.job, flight.slot, finished))
        else:
            self.events.put(Lost(flight.job, flight.slot, lost))

    def _stop_now(self) -> None:
        """A stop --now: runs kill their own processes; after a grace, Ray kills what is left."""
        if self._cancelled_at is None:
            self._cancelled_at = time.monotonic()
            self._stop_flag.set.remote()
            with self._lock:
                waiting = [g for g, f in self._flights.items() if not f.node_id]
            for generator in waiting:  # not started anywhere yet: nothing of it runs
                self._kill(generator)
        elif time.monotonic() - self._cancelled_at > CANCEL_GRACE_S:
            with self._lock:
                left = list(self._flights)
            for generator in left:
                self._kill(generator)

    def _kill(self, generator: Any) -> None:
        try:
            self.ray.cancel(generator, force=True)
        except Exception:  # already finished or its node is gone: it ends either way
            pass
        self._end(generator, finished=_interrupted())

    # --- the cluster ---------------------------------------------------------------------------------------
    def _cluster(self, fresh: bool = False) -> tuple[list[dict], dict[str, float]]:
        """Alive nodes and free resources, read at most once a second (each read asks the head)."""
        read_at, nodes, available = self._view
        if fresh or time.monotonic() - read_at > CLUSTER_VIEW_S:
            nodes = [n for n in self.ray.nodes() if n.get("Alive")]
            available = self.ray.available_resources()
            self._view = (time.monotonic(), nodes, available)
        return nodes, available

    def _slot_name(self, ip: str, node_id: str, index: int, nodes: list[dict]) -> str:
        """"<ip>:gpu<i>", with the node's id when one address hosts several nodes (test clusters)."""
        shared = sum(1 for n in nodes if n.get("NodeManagerAddress") == ip) > 1
        where = f"{ip}#{node_id[:6]}" if shared else ip
        return f"{where}:{self.resource.lower()}{index}"


def _path_of(location: str) -> str:
    """The path of a "<node-ip>:<path>" location; the ip may be IPv6 (colons), the path is absolute."""
    return location[location.index(":/") + 1:]


def _label_of(node: dict) -> str:
    labels = sorted(k.removeprefix(HARDWARE_PREFIX) for k in node.get("Resources", {}) if k.startswith(HARDWARE_PREFIX))
    return ",".join(labels)


def _interrupted() -> RunOutcome:
    return RunOutcome(reason="interrupted", interrupted=True, killed=True)
