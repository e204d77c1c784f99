"""Benchmark the Ray executor on a local Ray cluster with fake GPUs and the tests' fake harness.

Prints two figures:
  overhead    per experiment with 16 slots (two nodes of 8 fake GPUs): the wall time from submit to
              the Finished event, less the run's own training and evaluation processes; the median,
              with the median time the controller's thread spends in submit()
  throughput  experiments per minute with 8 slots against 1, each run training for a fixed sleep
              (and the overhead of a run alone, without the others contending for the CPU)

Usage: python scripts/bench_cluster.py [--sleep 10] [--jobs-per-slot 2]
Each cluster is warmed up first (one wave), so Ray's worker start-up is not counted.
"""
from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from daemon_kit import FAKE_TRAIN, make_repo  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from loop.executor import Finished, Job, Lost  # noqa: E402
from loop.procs import Cancel  # noqa: E402
from loop.ray_executor import RayExecutor  # noqa: E402
from loop.runner import RunSpec  # noqa: E402

NODE_MEMORY = 80 << 20


def start_cluster(gpus_per_node: list[int]) -> Cluster:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                                                             "object_store_memory": NODE_MEMORY})
    for i, gpus in enumerate(gpus_per_node):
        cluster.add_node(num_cpus=gpus, num_gpus=gpus, resources={f"hw:fake{i}": 1}, object_store_memory=NODE_MEMORY)
    cluster.wait_for_nodes()
    return cluster


def job(repo: Path, n: int, sleep: float) -> Job:
    exp_dir = repo / ".autoresearch" / "runs" / "bench" / f"{n:04d}"
    exp_dir.mkdir(parents=True, exist_ok=True)
    train_py = FAKE_TRAIN.format(sleep=sleep, eval_sleep=0.0).encode()
    return Job(n, 0, "0" * 40, RunSpec(train_py=train_py, exp_dir=exp_dir, budget=600.0, timeout=900.0, seed=n))


def run_jobs(executor: RayExecutor, events: queue.Queue, jobs: list[Job], slots: int) -> dict[str, object]:
    """Dispatch as the controller does, at most `slots` at once; wall time and per-job figures."""
    pending, running, submitted_at, overheads, submit_costs, failed = list(jobs), 0, {}, [], [], []
    start = time.monotonic()
    done = 0
    while done < len(jobs):
        while pending and running < slots and executor.free_slots() > 0:
            item = pending.pop(0)
            t0 = time.monotonic()
            executor.submit(item)
            submit_costs.append(time.monotonic() - t0)
            submitted_at[item.key] = t0
            running += 1
        event = events.get(timeout=600)
        if isinstance(event, Lost):
            raise SystemExit(f"a run was lost: {event.why}")
        if isinstance(event, Finished):
            running, done = running - 1, done + 1
            if event.outcome.reason:  # counted and shown: a failed run's timings are not a run's
                failed.append(f"{event.job.n}: {event.outcome.reason}")
                continue
            own = event.outcome.train_seconds + event.outcome.eval_seconds
            overheads.append(time.monotonic() - submitted_at[event.job.key] - own)
    for line in failed:
        print(f"  failed run {line}")
    return {"wall": time.monotonic() - start, "overheads": overheads, "submit": submit_costs, "failed": failed}


def with_executor(cluster: Cluster, pinned: dict[str, bytes], body):  # noqa: ANN001, ANN201
    events: queue.Queue = queue.Queue()
    executor = RayExecutor(cluster.address, pinned, events, Cancel())
    try:
        return body(executor, events)
    finally:
        executor.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sleep", type=float, default=10.0, help="seconds each fake run trains")
    parser.add_argument("--jobs-per-slot", type=int, default=2, help="runs per slot in the throughput figure")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    os.environ["AUTORESEARCH_CACHE"] = str(base / "node-cache")
    os.environ["AUTORESEARCH_SCRATCH"] = str(base / "node-scratch")
    repo, _ = make_repo(base)
    pinned = {name: (repo / name).read_bytes() for name in ("prepare.py", "val.txt")}

    cluster = start_cluster([8, 8])
    try:
        def overhead(executor: RayExecutor, events: queue.Queue) -> dict[str, object]:
            run_jobs(executor, events, [job(repo, n, 0.0) for n in range(16)], 16)  # warm-up: start the workers
            return run_jobs(executor, events, [job(repo, 100 + n, args.sleep) for n in range(16)], 16)
        figures = with_executor(cluster, pinned, overhead)
    finally:
        cluster.shutdown()
    overheads, submits = figures["overheads"], figures["submit"]
    print(f"overhead, 16 slots: median {statistics.median(overheads):.3f} s per experiment "
          f"(max {max(overheads):.3f} s); submit() median {statistics.median(submits) * 1e3:.2f} ms")

    cluster = start_cluster([8])
    try:
        def throughput(executor: RayExecutor, events: queue.Queue) -> tuple[float, float]:
            run_jobs(executor, events, [job(repo, 200 + n, 0.0) for n in range(8)], 8)  # warm-up
            one = run_jobs(executor, events, [job(repo, 300 + n, args.sleep) for n in range(args.jobs_per_slot)], 1)
            many = [job(repo, 400 + n, args.sleep) for n in range(8 * args.jobs_per_slot)]
            eight = run_jobs(executor, events, many, 8)
            alone = statistics.median(one["overheads"])
            return args.jobs_per_slot / one["wall"] * 60, 8 * args.jobs_per_slot / eight["wall"] * 60, alone
        per_min_1, per_min_8, alone = with_executor(cluster, pinned, throughput)
    finally:
        cluster.shutdown()
    print(f"throughput: 1 slot {per_min_1:.2f}/min, 8 slots {per_min_8:.2f}/min: {per_min_8 / per_min_1:.2f}x "
          f"(runs of {args.sleep:g} s, {args.jobs_per_slot} per slot, {os.cpu_count()} CPU cores)")
    print(f"overhead, one run at a time: median {alone:.3f} s per experiment")


if __name__ == "__main__":
    main()
