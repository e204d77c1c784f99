"""The daemon on a real Ray cluster without GPUs, as `ray start` on CPU machines makes one: its
slots are found on their own (a node's CPUs a run), and the flags that pick this machine's slots
are refused with --ray.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

ray = pytest.importorskip("ray")
from daemon_kit import assert_invariants, git, journal_events, make_repo, read_results, run_cli  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray_kit import local_cluster  # noqa: E402

NODE_CPUS = 2


@pytest.fixture(scope="module")
def cpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head that runs nothing (the controller's machine) and two nodes of two CPUs, no GPU anywhere."""
    nodes = {f"cpu{i}": {"num_cpus": NODE_CPUS, "num_gpus": 0} for i in range(2)}
    with local_cluster(tmp_path_factory.mktemp("cpu-cluster"), 0, nodes) as (c, _):
        yield c


def test_a_cluster_without_gpus_runs_a_node_a_run(cpu_cluster: Cluster, tmp_path: Path) -> None:
    """No --slots needed: with no GPU in the cluster a run takes a node's CPUs, so two nodes are two
    slots, each run training beside none, and the start says so in one line."""
    repo, env = make_repo(tmp_path, sleep=0.5)
    done = run_cli(repo, "start", "--tag", "cpu", "--ray", cpu_cluster.address, "--budget", "2", "--timeout", "60",
                   "--max-experiments", "2", env=env, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"Ray cluster: 2 slot(s), no GPU in the cluster: {NODE_CPUS} CPU(s) each" in done.stdout, done.stdout
    started = next(e for e in journal_events(repo, "cpu") if e["event"] == "run_started")
    assert len(started["slots"]) == 2 and all(":cpu" in name for name in started["slots"]), started["slots"]
    assert len(read_results(repo)) == 3
    assert_invariants(repo, "cpu")


@pytest.mark.parametrize("flags", [("--slots", "2"), ("--gpus", "1")])
def test_this_machines_slot_flags_are_refused_with_ray(tmp_path: Path, flags: tuple[str, str]) -> None:
    repo, env = make_repo(tmp_path)
    done = run_cli(repo, "start", "--tag", "x", "--ray", "auto", *flags, env=env)
    assert done.returncode == 2 and f"{flags[0]} choose this machine's slots" in done.stderr + done.stdout, done
    assert git(repo, "branch", "--list", "autoresearch/x") == ""  # refused before anything was made
