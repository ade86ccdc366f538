"""A 3-node ``ray.cluster_utils.Cluster`` in a process of its own, one node of which a test
removes on cue.

    python tests/reliability/cluster_nodes.py --temp-dir DIR --node-resource unit_slot=2

Starts a head (1 CPU) and two worker nodes (2 CPUs each, and ``--node-resource`` so that unit
workers asking for it run on them only), prints ``{"address": ...}`` as one JSON line, then
reads commands on stdin, each answered with one JSON line:

- ``remove MIGRATION_ID``: remove a worker node that hosts a live unit worker of that
  migration and not its router (graceful, as cluster_utils does); answers with the node's id
  and the workers it held;
- ``nodes``: the live nodes; ``stop`` (or end of stdin): shut the cluster down and exit.

Why a process of its own: the test process already runs the session's in-process Ray, and
cluster_utils writes ``ray_current_cluster`` under the default temp dir; here RAY_TMPDIR (set
by the caller) and ``--temp-dir`` keep both apart. cluster_utils in Ray 2.60 does nothing about
authentication: its nodes take RAY_AUTH_MODE and RAY_AUTH_TOKEN from this process's
environment, as the test's other processes (driver, writer, CLI) do from the same one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def answer(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def actors_by_node(migration_id: str) -> dict[str, list[str]]:
    """node id -> names of the migration's live actors on it."""
    from ray._private.state import actors  # from the GCS: no dashboard needed

    out: dict[str, list[str]] = {}
    for a in actors().values():
        if a["State"] == "ALIVE" and (a["Name"] or "").startswith(f"rm:{migration_id}:"):
            out.setdefault(a["Address"]["NodeID"], []).append(a["Name"])
    return out


def remove(cluster: Any, migration_id: str) -> dict[str, Any]:
    by_node = actors_by_node(migration_id)
    for node in list(cluster.worker_nodes):
        names = by_node.get(node.node_id, [])
        workers = [n for n in names if ":worker:" in n]
        if workers and not any(n.endswith(":router") for n in names):
            cluster.remove_node(node)
            return {"removed": node.node_id, "workers": workers, "actors": by_node}
    return {"removed": None, "actors": by_node}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--temp-dir", required=True)
    ap.add_argument("--node-resource", required=True, help="NAME=AMOUNT on each worker node")
    args = ap.parse_args()
    name, _, amount = args.node_resource.partition("=")

    import ray
    from ray._common.utils import get_default_ray_temp_dir
    from ray.cluster_utils import Cluster

    os.makedirs(get_default_ray_temp_dir(), exist_ok=True)  # its ray_current_cluster goes there

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "temp_dir": args.temp_dir, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2, resources={name: float(amount)})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="ray_migrate", log_to_driver=False,
             configure_logging=False)
    answer({"address": cluster.address})
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "remove":
                answer(remove(cluster, cmd[1]))
            elif cmd[0] == "nodes":
                answer({"nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]]})
            elif cmd[0] == "stop":
                break
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
