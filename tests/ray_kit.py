"""A real Ray cluster of processes on this machine, for the cluster tests."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import ray
from ray.cluster_utils import Cluster

NODE_MEMORY = 80 << 20  # object store bytes per node: the machine is small and shared
NODE_ENV = ("AUTORESEARCH_CACHE", "AUTORESEARCH_SCRATCH")


@contextmanager
def local_cluster(base: Path, head_cpus: int, nodes: dict[str, dict[str, Any]]) -> Iterator[tuple[Cluster, dict]]:
    """A head without GPUs and the named nodes (add_node's arguments), all up; each node's data
    cache and run scratch under base. Yields the cluster and its nodes by name; shut down after."""
    saved = {k: os.environ.get(k) for k in NODE_ENV}
    # The nodes' processes inherit these: each node's data cache and run scratch live here.
    os.environ["AUTORESEARCH_CACHE"] = str(base / "node-cache")
    os.environ["AUTORESEARCH_SCRATCH"] = str(base / "node-scratch")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "num_gpus": 0, "include_dashboard": False,
                                                       "object_store_memory": NODE_MEMORY})
    added = {name: c.add_node(object_store_memory=NODE_MEMORY, **args) for name, args in nodes.items()}
    c.wait_for_nodes()
    try:
        yield c, added
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
