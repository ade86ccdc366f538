"""A unit worker killed while it holds something on the router (a follower's turn and a unit's
log) takes it back once Ray restarts it, instead of every follower waiting a lease time
(``cutover.write_lease_s``, 30 s) for the dead holder's hold to lapse. The kill is the fail
point ``catchup.applied`` (a step applied, not acknowledged), given to the worker actor alone
through its runtime environment."""

from __future__ import annotations

import json
import time

import numpy as np
from truth import read_lance, seed_lance_native

from ray_migrate import RoutedCollection
from ray_migrate.config import parse_config
from ray_migrate.driver import Migration
from ray_migrate.failpoints import ENV
from ray_migrate.worker import UnitWorker

LEASE_S = 30.0  # the default write_lease_s: how long a dead holder's hold lasted


def wait_for(what: str, ok, timeout_s: float) -> float:
    """Seconds until ``ok()``; fails naming ``what`` after ``timeout_s``."""
    t0 = time.monotonic()
    while not ok():
        assert time.monotonic() - t0 < timeout_s, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(0.05)  # polling the router's state for the outcome
    return time.monotonic() - t0


def test_a_follower_killed_mid_step_takes_its_holds_back_when_restarted(ray_cluster, tmp_path):
    import ray

    seed_lance_native(str(tmp_path / "src"), "docs", list(range(40)))  # t0 even, t1 odd ids
    cfg = parse_config({
        "migration_id": f"holds-{tmp_path.name}",
        "source": {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"},
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 50, "workers": 1},
        "cutover": {"mode": "manual", "write_lease_s": LEASE_S},
        "state_uri": str(tmp_path / "state")})
    marker = tmp_path / "fired"
    m = Migration(cfg)
    m.start(workers=False)  # no worker actors but the one below
    worker = None
    try:
        plan = m.plan.to_dict()
        for unit in m.units():
            assert UnitWorker(cfg, plan).prepare(unit.to_dict())["phase"] == "ready"
        coll = RoutedCollection.connect(cfg.migration_id)
        vec = np.full(8, 0.5, np.float32).tolist()
        coll.upsert([{"id": 1000, "vector": vec, "payload": {"tenant": "t0"}}])
        env = {ENV: json.dumps({"catchup.applied": {"action": "kill", "unit": "tenant=t0",
                                                    "once": str(marker)}})}
        worker = ray.remote(UnitWorker).options(
            num_cpus=0, max_restarts=1, runtime_env={"env_vars": env}).remote(
            cfg, plan, 0, follow=True)
        wait_for("the follower's kill", marker.exists, 60)
        coll.upsert([{"id": 1002, "vector": vec, "payload": {"tenant": "t0"}}])
        took = wait_for("the restarted follower's catch-up", lambda: m.router.call(
            "unit", "tenant=t0")["lag"] == 0, LEASE_S / 2)
        print(f"caught up {took:.1f}s after the kill")
        assert {1000, 1002} <= set(read_lance(str(tmp_path / "dst"), "docs"))
        assert ray.get(worker.ready.remote())["pid"] != json.loads(marker.read_text())["pid"]
        coll.close()
    finally:
        if worker is not None:
            ray.kill(worker, no_restart=True)
        m.close()
