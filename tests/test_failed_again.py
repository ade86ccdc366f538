"""A unit that failed and is prepared again: writes made while it was failed were logged
nowhere (failed does not capture) and its copy checkpoint says copied, so the new run diffs and
repairs it before it is ready, also with verify off. Real router and workers, real LanceDB on
both sides, the target read back with lancedb."""

from __future__ import annotations

import threading
import time

import numpy as np
from test_unit_outcomes import RefusesIds, config
from truth import read_lance, seed_lance_native

from ray_migrate import RoutedCollection
from ray_migrate.driver import Migration, run_migration
from ray_migrate.worker import UnitWorker


def fail_by_follower(m: Migration, worker: UnitWorker, unit_id: str) -> None:
    """Run ``worker``'s follower until it has failed ``unit_id``; then stop it."""
    thread = threading.Thread(target=worker._follow, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while m.router.call("unit", unit_id)["phase"] != "failed":
        assert time.monotonic() < deadline, m.router.call("status")
        time.sleep(0.05)
    worker.stop_following()
    thread.join(30)


def test_a_unit_prepared_again_after_failing_gets_the_writes_made_meanwhile(
        ray_cluster, tmp_path):
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(60)))  # t0 even, t1 odd ids
    cfg = config(tmp_path, "failed-again", verify={"enabled": False})
    m = Migration(cfg)
    m.start(workers=False)  # no worker actors: the units are prepared and followed below
    try:
        plan = m.plan.to_dict()
        preparer = UnitWorker(cfg, plan)
        for unit in m.units():
            assert preparer.prepare(unit.to_dict())["phase"] == "ready"
        assert m.store.load_checkpoint("tenant=t1")["status"] == "copied"
        coll = RoutedCollection.connect(cfg.migration_id)
        vec = np.full(8, 0.25, np.float32).tolist()
        coll.upsert([{"id": 1001, "vector": vec, "payload": {"tenant": "t1"}}])
        follower = UnitWorker(cfg, plan)
        follower._target = RefusesIds(follower.target, {1001})  # its catch-up fails t1
        fail_by_follower(m, follower, "tenant=t1")
        coll.delete([7])  # while t1 is failed: on the source, in no log
        coll.close()
    finally:
        m.close()
    report = run_migration(cfg)
    assert report.ok, report.to_table()
    dst = read_lance(str(tmp_path / "dst"), "docs")
    assert 7 not in dst, "the point deleted while its unit was failed came back"
    assert 1001 in dst, "the write its follower failed on never reached the target"
    assert dst == read_lance(str(tmp_path / "src"), "docs")
