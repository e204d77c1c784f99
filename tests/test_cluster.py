"""The Ray executor on a real Ray cluster on this machine: two nodes with fake GPUs and hardware labels.

Jobs are built the way the controller builds them and driven straight through RayExecutor; the
runs are the fake harness's, in the real contained Runner on the nodes.
"""
from __future__ import annotations

import hashlib
import queue
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

ray = pytest.importorskip("ray")
from daemon_kit import FAKE_TRAIN, compiling, make_repo  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray_kit import local_cluster  # noqa: E402

from loop.executor import Finished, Job, Lost, Started, TrainingEnded  # noqa: E402
from loop.procs import Cancel  # noqa: E402
from loop.ray_executor import PREPARED_MARK, RayExecutor  # noqa: E402
from loop.runner import RunSpec  # noqa: E402

LABELS = ("H100", "A10")
WAIT_S = 90.0  # a generous ceiling for events on a busy machine; tests never depend on it being tight


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[str, object], Path]]:
    """A head without GPUs and two nodes with two fake GPUs each, one labelled per hardware kind."""
    base = tmp_path_factory.mktemp("cluster")
    gpu_nodes = {label: {"num_cpus": 2, "num_gpus": 2, "resources": {f"hw:{label}": 1}} for label in LABELS}
    with local_cluster(base, 1, gpu_nodes) as (c, nodes):
        yield c, nodes, base


@pytest.fixture
def harness(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    repo, _ = make_repo(tmp_path)
    pinned = {name: (repo / name).read_bytes() for name in ("prepare.py", "val.txt")}
    return repo, pinned


def make_job(repo: Path, n: int, sleep: float = 0.0, run: int = 0) -> Job:
    """A Job as the controller makes one: the commit's train.py bytes, the experiment's folder."""
    exp_dir = repo / ".autoresearch" / "runs" / "t" / f"{n:04d}"
    exp_dir.mkdir(parents=True, exist_ok=True)
    train_py = FAKE_TRAIN.format(sleep=sleep, eval_sleep=0.0).replace("LR = 0.02", f"LR = {0.001 * (n + 1)}")
    spec = RunSpec(train_py=train_py.encode(), exp_dir=exp_dir, budget=60.0, timeout=120.0, seed=n,
                   startup_allowance=60.0)
    return Job(n, run, hashlib.sha1(train_py.encode()).hexdigest(), spec)


def next_event(events: queue.Queue) -> object:
    try:
        return events.get(timeout=WAIT_S)
    except queue.Empty:
        raise AssertionError(f"no event from the executor within {WAIT_S:.0f}s") from None


def drain_until(events: queue.Queue, done: callable) -> list[object]:
    seen: list[object] = []
    while not done(seen):
        seen.append(next_event(events))
    return seen


def finished(seen: list[object]) -> list[Finished]:
    return [e for e in seen if isinstance(e, Finished)]


def test_twenty_jobs_spread_over_both_nodes(cluster, harness) -> None:
    c, nodes, base = cluster
    repo, pinned = harness
    events: queue.Queue = queue.Queue()
    executor = RayExecutor(c.address, pinned, events, Cancel())
    try:
        assert len(executor.slot_names()) == 4 and executor.free_slots() == 4
        jobs, seen = [make_job(repo, n) for n in range(20)], []
        pending = list(jobs)
        while len(finished(seen)) < len(jobs):
            while pending and executor.free_slots() > 0:  # the controller's dispatch loop
                executor.submit(pending.pop(0))
            try:
                seen.append(events.get(timeout=WAIT_S if not pending else 0.5))
            except queue.Empty:
                assert pending, "no event while runs were in flight"
        slots = executor.slot_names()
    finally:
        executor.shutdown()
    done = finished(seen)
    assert sorted(e.job.n for e in done) == list(range(20))  # every job once, none twice
    assert not [e for e in seen if isinstance(e, Lost)]
    assert all(not e.outcome.reason and e.outcome.val_bpb is not None for e in done), [e.outcome.reason for e in done]
    assert {e.outcome.hardware["node_id"] for e in done} == {node.node_id for node in nodes.values()}
    assert {e.outcome.hardware["gpu"] for e in done} == set(LABELS)
    started = {e.job.n: e for e in seen if isinstance(e, Started)}
    assert sorted(started) == list(range(20)) and all(e.slot in slots for e in started.values())
    assert len([e for e in seen if isinstance(e, TrainingEnded)]) == 20
    # Scores differ with each job's LR, so each result is its own run's; logs came back to the controller.
    assert len({e.outcome.val_bpb for e in done}) == 20
    assert all("val_bpb:" in (e.job.spec.exp_dir / "eval-val.log").read_text() for e in done)
    assert all(":" in e.outcome.hardware["checkpoint"] for e in done)
    assert len(list((base / "node-cache").glob(PREPARED_MARK + "*"))) == 1  # prepared once, shared here


def test_runs_on_every_node_start_from_the_baselines_kernels(cluster, harness) -> None:
    """The baseline's node sends its compiled kernels back; the controller keeps them where a local
    run would, and every later run, on either node, starts from them and from nothing of another's."""
    c, nodes, _ = cluster
    repo, pinned = harness
    kept = repo / ".autoresearch" / "runs" / "t" / "kernels"

    def job(n: int) -> Job:
        made = make_job(repo, n)
        train_py = compiling(made.spec.train_py.decode(), "baseline" if n == 0 else f"experiment{n}")
        spec = replace(made.spec, train_py=train_py.encode(), kernels=kept, keep_kernels=n == 0)
        return replace(made, spec=spec)

    def seen(done: Finished) -> str:
        log = (done.job.spec.exp_dir / "train.log").read_text()
        return next(line for line in log.splitlines() if line.startswith("kernels seen:"))

    events: queue.Queue = queue.Queue()
    executor = RayExecutor(c.address, pinned, events, Cancel())
    try:
        executor.submit(job(0))
        baseline = finished(drain_until(events, lambda s: finished(s)))[0]
        assert not baseline.outcome.reason and seen(baseline) == "kernels seen: []"
        assert sorted(p.name for p in (kept / "inductor").iterdir()) == ["baseline"]
        for n in range(1, 5):
            executor.submit(job(n))
        done = finished(drain_until(events, lambda s: len(finished(s)) == 4))
    finally:
        executor.shutdown()
    assert all(not e.outcome.reason for e in done), [e.outcome.reason for e in done]
    assert {seen(e) for e in done} == {"kernels seen: ['baseline']"}
    assert {e.outcome.hardware["node_id"] for e in done} == {node.node_id for node in nodes.values()}
    assert sorted(p.name for p in (kept / "inductor").iterdir()) == ["baseline"]


def test_hardware_labels_route_and_report(cluster, harness) -> None:
    c, nodes, _ = cluster
    repo, pinned = harness
    events: queue.Queue = queue.Queue()
    executor = RayExecutor(c.address, pinned, events, Cancel(), screen_on="A10", confirm_on="H100",
                           fetch_checkpoints=True)
    try:
        screen, confirm = make_job(repo, 1), make_job(repo, 1, run=1)
        executor.submit(screen)
        executor.submit(confirm)
        done = finished(drain_until(events, lambda seen: len(finished(seen)) == 2))
    finally:
        executor.shutdown()
    by_run = {e.job.run: e.outcome for e in done}
    assert by_run[0].hardware["gpu"] == "A10" and by_run[0].hardware["node_id"] == nodes["A10"].node_id
    assert by_run[1].hardware["gpu"] == "H100" and by_run[1].hardware["node_id"] == nodes["H100"].node_id
    assert (screen.spec.exp_dir / "ckpt" / "model.pt").is_file() and "checkpoint" not in by_run[0].hardware


def wait_until_gone(path: Path) -> bool:
    deadline = time.monotonic() + WAIT_S
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not path.exists()


def test_a_checkpoint_left_on_its_node_is_scored_there_then_deleted(cluster, tmp_path: Path) -> None:
    """A kept commit's holdout is scored where its checkpoint stayed (the node that trained it, not
    any node); a checkpoint the controller no longer wants is deleted on its node."""
    c, nodes, _ = cluster
    repo, _ = make_repo(tmp_path, holdout=True)
    pinned = {name: (repo / name).read_bytes() for name in ("prepare.py", "val.txt", "holdout.txt")}
    events: queue.Queue = queue.Queue()
    executor = RayExecutor(c.address, pinned, events, Cancel())
    try:
        trained = [make_job(repo, n) for n in range(4)]  # on both nodes
        for job in trained:
            executor.submit(job)
        runs = {e.job.n: e.outcome for e in finished(drain_until(events, lambda s: len(finished(s)) == 4))}
        assert all(not o.reason for o in runs.values()), [o.reason for o in runs.values()]
        assert {o.hardware["node_id"] for o in runs.values()} == {node.node_id for node in nodes.values()}
        for n, job in enumerate(trained):
            score = replace(job, spec=replace(job.spec, splits=("holdout",)), score_only=True, ran_on=runs[n].hardware)
            executor.submit(score)
        seen = drain_until(events, lambda s: len(finished(s)) == 4)
        assert not [e for e in seen if isinstance(e, (Started, TrainingEnded))]  # scoring is no run
        scored = finished(seen)
        for event in scored:
            ran_on = runs[event.job.n].hardware
            assert not event.outcome.reason, event.outcome.reason
            assert event.outcome.scores.get("holdout", 0) > 0 and "val" not in event.outcome.scores
            assert event.outcome.hardware["node_id"] == ran_on["node_id"]  # scored where it lay
            assert "holdout_bpb:" in (event.job.spec.exp_dir / "eval-holdout.log").read_text()
        where = {n: Path(o.hardware["checkpoint"].split(":", 1)[1]) for n, o in runs.items()}
        assert all(path.is_dir() for path in where.values())  # scoring left them in place
        executor.discard_checkpoints([runs[0].hardware, runs[1].hardware])
        assert wait_until_gone(where[0].parent) and wait_until_gone(where[1].parent)
        assert where[2].is_dir() and where[3].is_dir()
        gone = replace(trained[0], spec=replace(trained[0].spec, splits=("holdout",)), score_only=True,
                       ran_on=runs[0].hardware)
        executor.submit(gone)
        missing = finished(drain_until(events, lambda s: len(finished(s)) == 1))[0]
        assert "no longer" in missing.outcome.reason and not missing.outcome.scores
    finally:
        executor.shutdown()


def test_cancel_interrupts_runs_in_flight(cluster, harness) -> None:
    c, _, _ = cluster
    repo, pinned = harness
    events: queue.Queue = queue.Queue()
    cancel = Cancel()
    executor = RayExecutor(c.address, pinned, events, cancel)
    try:
        jobs = [make_job(repo, n, sleep=600.0) for n in range(3)]
        for job in jobs:
            executor.submit(job)
        drain_until(events, lambda seen: len([e for e in seen if isinstance(e, Started)]) == 3)
        stopped_at = time.monotonic()
        cancel.set()
        done = finished(drain_until(events, lambda seen: len(finished(seen)) == 3))
        assert executor.free_slots() == 0  # stopping: nothing new is taken
    finally:
        executor.shutdown()
    assert sorted(e.job.n for e in done) == [0, 1, 2]
    assert all(e.outcome.interrupted and e.outcome.reason == "interrupted" for e in done)
    assert time.monotonic() - stopped_at < 600  # far sooner than the runs' own sleep


def test_cpu_slots_when_the_cluster_has_no_gpus_to_give(cluster, harness) -> None:
    c, _, _ = cluster
    repo, pinned = harness
    events: queue.Queue = queue.Queue()
    executor = RayExecutor(c.address, pinned, events, Cancel(), gpu=False)
    try:
        cpus = int(ray.cluster_resources()["CPU"])
        assert len(executor.slot_names()) == cpus and all(":cpu" in name for name in executor.slot_names())
        for n in range(2):  # each trains long enough that the two are surely in flight together
            executor.submit(make_job(repo, n, sleep=5.0))
        seen = drain_until(events, lambda s: len(finished(s)) == 2)
    finally:
        executor.shutdown()
    assert all(not e.outcome.reason for e in finished(seen)), [e.outcome.reason for e in finished(seen)]
    assert len({e.slot for e in seen if isinstance(e, Started)}) == 2  # two runs at once: two slots


def test_without_ray_one_line_says_how_to_install(tmp_path: Path) -> None:
    # A fresh interpreter in which `import ray` fails, as on a machine without the extra.
    code = ("import sys, queue; sys.modules['ray'] = None\n"
            "from loop.errors import SetupError\nfrom loop.procs import Cancel\n"
            "from loop.ray_executor import RayExecutor\n"
            "try:\n    RayExecutor('auto', {'prepare.py': b''}, queue.Queue(), Cancel())\n"
            "except SetupError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip().splitlines() == ["--ray needs Ray, which is not installed here: pip install -e '.[ray]'"]


def test_node_killed_mid_run_is_lost_then_runs_elsewhere(cluster, harness) -> None:
    c, nodes, _ = cluster
    repo, pinned = harness
    events: queue.Queue = queue.Queue()
    executor = RayExecutor(c.address, pinned, events, Cancel())
    seen: list[object] = []
    try:
        jobs = {n: make_job(repo, n, sleep=8.0) for n in range(4)}
        for job in jobs.values():
            executor.submit(job)
        seen += drain_until(events, lambda s: len([e for e in s if isinstance(e, Started)]) == 4)
        victim = next(node for node in nodes.values() if node.node_id == executor.where(jobs[0]))
        on_victim = {n for n, job in jobs.items() if executor.where(job) == victim.node_id}
        c.remove_node(victim)
        while len(finished(seen)) < len(jobs):  # the controller's part: a lost run goes back in the queue
            event = next_event(events)
            seen.append(event)
            if isinstance(event, Lost):
                assert not [e for e in finished(seen) if e.job.key == event.job.key]
                executor.submit(event.job)
        assert len(executor.slot_names()) == 2  # the slots left with the node
    finally:
        executor.shutdown()
    lost = sorted(e.job.n for e in seen if isinstance(e, Lost))
    assert lost == sorted(on_victim) and lost
    done = finished(seen)
    assert sorted(e.job.n for e in done) == [0, 1, 2, 3]  # none lost, none twice
    assert all(not e.outcome.reason for e in done), [e.outcome.reason for e in done]
    assert all(e.outcome.hardware["node_id"] != victim.node_id for e in done if e.job.n in on_victim)


def test_daemon_on_the_cluster_then_killed_and_resumed(cluster, tmp_path: Path) -> None:
    """The whole daemon with --ray: runs spread over both nodes, every invariant of a local run
    holds; the controller killed with runs in flight resumes them, none lost or run twice."""
    from daemon_kit import assert_invariants, folded, journal_events, read_results, run_cli, start_background

    c, _, _ = cluster
    if ray.is_initialized():
        ray.shutdown()  # the controller process connects on its own
    repo, env = make_repo(tmp_path, sleep=1.0, holdout=True)
    args = ("--ray", c.address, "--budget", "5", "--timeout", "60")
    daemon = start_background(repo, "start", "--tag", "rc", "--max-experiments", "8", *args, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if len({e["n"] for e in journal_events(repo, "rc") if e["event"] == "started" and e["n"] > 0}) >= 3:
            break
        time.sleep(0.1)
    daemon.kill()
    daemon.wait()
    in_flight = {e.n for e in folded(journal_events(repo, "rc")).experiments if e.status is None and e.commit}
    done = run_cli(repo, "resume", "--tag", "rc", env=env, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    for n in in_flight:
        assert f"resuming experiment {n} from its commit" in done.stdout
    assert len(read_results(repo)) == 9
    assert_invariants(repo, "rc")
    events = journal_events(repo, "rc")
    runs = [e for e in events if e["event"] == "evaluated"]
    assert all((e.get("hardware") or {}).get("label") in LABELS for e in runs)  # each run names its node's hardware
    # Every kept commit's holdout was scored where its checkpoint lay; a discarded experiment's
    # checkpoint was deleted on its node (--keep-checkpoints kept), a kept one's stays there.
    status = {e["n"]: e["status"] for e in events if e["event"] == "decided"}
    kept = {n for n, s in status.items() if s == "keep"}
    holdouts = {e["n"]: e for e in events if e["event"] == "holdout"}
    assert kept and set(holdouts) >= kept - in_flight, (kept, sorted(holdouts))
    assert all(holdouts[n]["scores"]["holdout"] > 0 for n in kept & set(holdouts)), holdouts
    for run in runs:
        if where := (run.get("hardware") or {}).get("checkpoint"):
            folder = Path(where.split(":", 1)[1]).parent
            assert folder.exists() == (status.get(run["n"]) == "keep"), (run["n"], status.get(run["n"]), folder)
