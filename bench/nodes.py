"""The copy over a 3-node Ray cluster (one machine): 1, 2 and 4 unit workers, where each ran.

    python bench/nodes.py [--points 600000] [--dim 64] [--workers 1,2,4] [--quick] [--write]

A ``ray.cluster_utils.Cluster`` of a head and two worker nodes (2 logical CPUs and 2
``unit_slot`` each; the scheduler's spread threshold at 0 so workers go to the least loaded
node) in this process, which is the driver. One LanceDB source table (id_range units), copied
to a new LanceDB target once per worker count by ``run_migration`` (verify off, no
compaction or index: the copy phase alone). The baseline is the 1-worker run of the same
script run; the source's scan rate (one process, no writes) is its read limit. All nodes
share this machine's cores, so the ratios show what the cores bound, not what more machines
would give: docs/SCALING.md models that. Exits 0 whatever the numbers are.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

# bench/ holds copy.py: keep it off the front of sys.path so `import copy` finds the stdlib.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]  # last

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from _common import copy_window, lance_source, md_table, run_script
from _scale import footer, write_result

SLOT, UNITS, BATCH = "unit_slot", 8, 10_000


def start_cluster(temp_dir: str) -> tuple[Any, dict[str, str]]:
    """Head and two worker nodes; node id -> its name in the table."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_scheduler_spread_threshold"] = "0"  # spread: least loaded node first
    args = {"num_cpus": 2, "resources": {SLOT: 2}}
    cluster = Cluster(initialize_head=True, head_node_args={
        **args, "temp_dir": temp_dir, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(**args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="ray_migrate", log_to_driver=False,
             configure_logging=False)
    names = {cluster.head_node.node_id: "head"}
    for i, node in enumerate(cluster.worker_nodes, start=2):
        names[node.node_id] = f"node{i}"
    return cluster, names


def config(mid: str, source: Path, work: Path, workers: int) -> Any:
    from ray_migrate.config import parse_config

    return parse_config({
        "migration_id": mid,
        "source": {"kind": "lancedb", "uri": str(source), "table": "src"},
        "target": {"kind": "lancedb", "uri": str(work / "target"), "table": "docs"},
        "units": {"by": "id_range", "count": UNITS},
        "copy": {"batch_size": BATCH, "workers": workers,
                 "worker_resources": {"num_cpus": 1, "resources": {SLOT: 1}}},
        "lance": {"compact": False, "index_min_rows": 10**9}, "verify": {"enabled": False},
        "state_uri": str(work / "state")})


def placement(mid: str, names: dict[str, str]) -> dict[str, str]:
    """worker actor name -> the node it ran on (live or ended), from the GCS."""
    from ray._private.state import actors

    out = {}
    for a in actors().values():
        name = a.get("Name") or ""
        if name.startswith(f"rm:{mid}:worker:"):
            node = a["Address"]["NodeID"]
            out[name.rsplit(":", 1)[1]] = names.get(node, node[:8])
    return dict(sorted(out.items()))


def copy_run(cfg: Any, names: dict[str, str]) -> dict[str, Any]:
    """run_migration; the copy phase from the first unit's start to the last unit's end (the
    units' final checkpoints and report seconds, as bench/copy.py measures it)."""
    from ray_migrate.driver import run_migration

    t0 = time.perf_counter()
    rep = run_migration(cfg)
    total = time.perf_counter() - t0
    window, store = copy_window(cfg, rep)
    unit_rates = [u.points_per_s for u in rep.units if u.points_per_s]
    return {"points": rep.total_copied_now, "copy_s": window, "total_s": total,
            "unit_rate": sum(unit_rates) / max(1, len(unit_rates)),
            "where": placement(cfg.migration_id, names)}


def scan_rate(source: Path) -> float:
    """The source's read limit: one process scanning every unit's batches, no writes."""
    from ray_migrate.backends.lancedb import LanceBackend
    from ray_migrate.config import LanceEndpoint
    from ray_migrate.units import UnitSpec

    src = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(source), table="src"))
    t0, n = time.perf_counter(), 0
    for batch, _ in src.scan(UnitSpec("all", "all"), BATCH):
        n += batch.num_rows
    return n / (time.perf_counter() - t0)


def phase_rates(cfg: Any, sample: int) -> dict[str, float]:
    """Points/s of one process for the other phases, on the 1-worker run's target: verify
    (``verify_migration``, every unit, both sides), catch-up (``catchup.apply_ids`` of
    ``sample`` scattered ids, 1,000 a step: re-read from the owner, upsert to the other), and
    finalize (compaction and the IVF_PQ index, ``LanceBackend.finalize``)."""
    import numpy as np

    from ray_migrate.backends.lancedb import LanceBackend
    from ray_migrate.catchup import apply_ids
    from ray_migrate.config import LanceTargetOptions
    from ray_migrate.driver import verify_migration
    from ray_migrate.transform import Transform

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    rep = verify_migration(cfg)
    out["verify"] = sum(u.source_count or 0 for u in rep.units) / (time.perf_counter() - t0)
    src, dst = LanceBackend(cfg.source), LanceBackend(cfg.target)
    n = sum(u.source_count or 0 for u in rep.units)
    ids = np.random.default_rng(3).choice(n, size=min(sample, n), replace=False).tolist()
    forward = Transform(cfg.transform)
    t0 = time.perf_counter()
    for lo in range(0, len(ids), 1000):
        apply_ids(ids[lo:lo + 1000], src, dst, forward)
    out["catch-up"] = len(ids) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    dst.finalize(LanceTargetOptions(index_min_rows=1000))
    out["finalize"] = n / (time.perf_counter() - t0)
    return out


def report(points: int, dim: int, scan: float, runs: dict[int, dict[str, Any]],
           phases: dict[str, float]) -> str:
    base = runs[min(runs)]["points"] / runs[min(runs)]["copy_s"]
    rows, summary = [], []
    for k, r in runs.items():
        rate = r["points"] / r["copy_s"]
        where = ", ".join(f"w{w}: {n}" for w, n in r["where"].items())
        rows.append((str(k), f"{r['points']:,}", f"{r['copy_s']:.1f}", f"{rate:,.0f}",
                     f"{rate / k:,.0f}", f"{r['unit_rate']:,.0f}", f"{rate / base:.2f}",
                     f"{rate / scan:.2f}", where))
        summary.append((f"copy rate, {k} workers / 1 worker", f"{rate / base:.2f}",
                        "measured (2 shared cores)", "yes"))
    per_worker = runs[min(runs)]["points"] / runs[min(runs)]["copy_s"] / min(runs)
    phase_rows = [("copy (1 worker, copy phase)", f"{per_worker:,.0f}"), *(
        (name, f"{rate:,.0f}") for name, rate in phases.items())]
    nodes = {n for r in runs.values() for n in r["where"].values()}
    summary.append(("nodes that ran a worker", str(len(nodes)), ">= 2 (4 workers)",
                    "yes" if len(nodes) >= 2 else "no"))
    return "\n".join([
        "## Past one node: the copy on a 3-node cluster (one machine)", "",
        md_table(("metric", "value", "target", "pass"), summary), "",
        md_table(("workers", "points", "copy s", "points/s", "per worker", "unit rate (mean)",
                  "ratio to 1 worker", "ratio to scan-only", "worker: node"), rows), "",
        "One process's rate per phase (the model's inputs, docs/SCALING.md):", "",
        md_table(("phase", "points/s"), phase_rows), "",
        f"LanceDB → LanceDB, {points:,} × {dim} float32, {UNITS} id_range units, batch "
        f"{BATCH:,}, verify off, no compaction or index. Source scan-only (1 process, no "
        f"writes): {scan:,.0f} points/s. `ray.cluster_utils.Cluster`: a head and 2 worker "
        "nodes in one process tree on ONE machine: every node shares its 2 cores (and other "
        "helpers' jobs ran meanwhile), so more workers add no cores: the ratios bound what "
        "the cores give, and the model in docs/SCALING.md uses the per-worker rate.", "",
        *footer()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=600_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--quick", action="store_true", help="20k points, 1 and 4 workers")
    ap.add_argument("--write", action="store_true", help="write bench/results/nodes.md")
    args = ap.parse_args()
    points = 20_000 if args.quick else args.points
    counts = [1, 4] if args.quick else [int(x) for x in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rmbench-nodes-", dir="/tmp"))
    cluster = None
    try:
        lance_source(work / "source", points, args.dim)
        scan = scan_rate(work / "source")
        cluster, names = start_cluster(str(work / "ray"))
        runs, runs_mid = {}, {}
        for k in counts:
            runs_mid[k] = f"nodes-{k}w-{int(time.time())}"
            cfg = config(runs_mid[k], work / "source", work / f"w{k}", k)
            runs[k] = copy_run(cfg, names)
            r = runs[k]
            print(f"{k} workers: {r['points'] / r['copy_s']:,.0f} points/s, "
                  f"copy {r['copy_s']:.1f}s, run {r['total_s']:.1f}s, {r['where']}", flush=True)
        k = min(counts)
        phases = phase_rates(config(runs_mid[k], work / "source", work / f"w{k}", k),
                             2_000 if args.quick else 20_000)
        print(f"phases: {phases}", flush=True)
        write_result("nodes", report(points, args.dim, scan, runs, phases), args.write)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_script(main)
