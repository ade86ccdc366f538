"""What the Qdrant-API gateway costs an application: per operation, p50/p99 through the gateway
(the real qdrant-client over REST -> Serve's HTTP proxy -> a replica's RoutedCollection)
against the same RoutedCollection calls made directly in the application's process, in the
same run, interleaved call by call so both see the same machine load.

    python bench/gateway.py [--points 20000] [--calls 400] [--quick] [--write]

A LanceDB -> LanceDB migration (dim 64, 8 tenants) in manual mode with half of the tenants cut
over, so reads merge both owners and writes go to both. Operations: upsert of one point,
retrieve of one id, search k=10 filtered on the tenant, count. Exits 0 whatever the numbers.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # last on sys.path: bench/copy.py != copy
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]
sys.path.append(os.path.join(os.path.dirname(_HERE), "tests"))

import argparse
import logging
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
from _common import ROOT, lance_source, machine, md_table, publish, run_script

DIM = 64
TENANTS = 8


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def setup(root: Path, n: int) -> tuple[Any, Any]:
    """(migration, config): L->L by tenant, manual mode, every unit ready, half on the target."""
    from ray_migrate.config import parse_config
    from ray_migrate.driver import Migration
    from ray_migrate.waves import switch_units

    lance_source(root / "src", n, DIM, TENANTS, table="docs")
    cfg = parse_config({
        "migration_id": f"bench-gw-{os.getpid()}",
        "source": {"kind": "lancedb", "uri": str(root / "src"), "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(root / "dst"), "table": "docs"},
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 5000, "workers": 2},
        "cutover": {"mode": "manual", "max_freeze_ms": 3000},
        "gateway": {"num_cpus": 0, "max_ongoing_requests": 4},
        "state_uri": str(root / "state")})
    m = Migration(cfg)
    m.start()
    m.prepare_units()
    switch_units(m, [f"tenant=t{i}" for i in range(0, TENANTS, 2)], "cutover")
    return m, cfg


def cases(coll: Any, client: Any, rng: np.random.Generator, n: int
          ) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """op -> (direct call, gateway call), each drawing its own arguments."""
    from qdrant_client import models

    def point() -> dict[str, Any]:
        pid = int(rng.integers(n))
        return {"id": pid, "vector": rng.standard_normal(DIM).astype(np.float32).tolist(),
                "payload": {"tenant": f"t{pid % TENANTS}", "title": "x", "rank": 1}}

    def tenant_filter(t: str) -> Any:
        return models.Filter(must=[models.FieldCondition(key="tenant",
                                                         match=models.MatchValue(value=t))])

    def q() -> list[float]:
        return rng.standard_normal(DIM).astype(np.float32).tolist()

    def tenant() -> str:
        return f"t{int(rng.integers(TENANTS))}"

    return {
        "upsert 1 point": (lambda: coll.upsert([point()]),
                           lambda: client.upsert("docs", [models.PointStruct(**point())])),
        "retrieve 1 id": (lambda: coll.retrieve([int(rng.integers(n))]),
                          lambda: client.retrieve("docs", [int(rng.integers(n))])),
        "search k=10, tenant filter": (
            lambda: coll.search(q(), k=10, filter={"tenant": tenant()}),
            lambda: client.query_points("docs", query=q(), limit=10,
                                        query_filter=tenant_filter(tenant()))),
        "count": (lambda: coll.count(), lambda: client.count("docs")),
    }


def measure(pair: tuple[Callable[[], Any], Callable[[], Any]], calls: int
            ) -> tuple[list[float], list[float]]:
    """ms per call, direct and through the gateway, alternating (after 10 warm-up calls)."""
    direct, gateway = [], []
    for i in range(calls + 10):
        for fn, out in ((pair[0], direct), (pair[1], gateway))[:: 1 if i % 2 else -1]:
            t0 = time.perf_counter()
            fn()
            if i >= 10:
                out.append((time.perf_counter() - t0) * 1000)
    return direct, gateway


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="2000 points, 40 calls per op")
    ap.add_argument("--write", action="store_true", help="write bench/results/gateway.md")
    args = ap.parse_args()
    n, calls = (2000, 40) if args.quick else (args.points, args.calls)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    root = Path(tempfile.mkdtemp(prefix="rm-bench-gw-"))
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="ray_migrate",
             log_to_driver=False, configure_logging=False)
    from gwserve import free_port
    from qdrant_client import QdrantClient
    from ray import serve

    from ray_migrate import RoutedCollection
    from ray_migrate.gateway.app import bind

    m, cfg = setup(root, n)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(bind(cfg), name="bench-gw", route_prefix="/")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = QdrantClient(url=f"http://127.0.0.1:{port}", timeout=60)
        coll = RoutedCollection.connect(cfg.migration_id)
        rows, verdict = [], []
        for name, pair in cases(coll, client, np.random.default_rng(3), n).items():
            direct, gateway = measure(pair, calls)
            ratio = pct(gateway, 99) / pct(direct, 99)
            rows.append((name, f"{pct(direct, 50):.2f}", f"{pct(direct, 99):.2f}",
                         f"{pct(gateway, 50):.2f}", f"{pct(gateway, 99):.2f}",
                         f"{pct(gateway, 50) - pct(direct, 50):.2f}", f"{ratio:.2f}",
                         str(len(direct))))
            verdict.append((f"p99 gateway / direct: {name}", f"{ratio:.2f}", "measured",
                            "yes"))
        coll.close()
        client.close()
    finally:
        serve.shutdown()
        m.close()
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    text = "\n\n".join([
        "## Gateway: latency through the Qdrant-API gateway",
        md_table(("metric", "value", "target", "pass"), verdict),
        md_table(("operation", "direct p50 ms", "direct p99 ms", "gateway p50 ms",
                  "gateway p99 ms", "added p50 ms", "p99 ratio", "calls"), rows),
        f"{n} points x {DIM}, {TENANTS} tenants, half on the target (L->L); one replica; "
        "direct and gateway calls alternate in one process.",
        f"Machine: {machine()}. Commit {commit}. Command: `python bench/gateway.py "
        f"{' '.join(sys.argv[1:])}`.",
    ])
    publish("Gateway", text, args.write, "gateway")
    return 0


if __name__ == "__main__":
    run_script(main)
