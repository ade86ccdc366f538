"""One driver per migration: the driver lease, with the router as witness, and the commands
that run beside a driver without touching its actors. (Two real processes: test_drivers.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from truth import seed_lance_native

from ray_migrate.cli import main
from ray_migrate.config import parse_config
from ray_migrate.driver import Migration, verify_migration
from ray_migrate.lease import LEASE_KEY, DriverBusyError, DriverLease
from ray_migrate.worker import NAMESPACE, worker_name


def lance_config(tmp_path, mid: str, **over):
    return parse_config({
        "migration_id": f"{mid}-{tmp_path.name}",
        "source": {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"},
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 50, "workers": 2, "worker_resources": {"num_cpus": 0.5}},
        "cutover": {"mode": "manual", "pause_s": 0}, "state_uri": str(tmp_path / "state"),
        **over})


def actor_ids(cfg, n: int = 2) -> list[str]:
    import ray

    return [ray.get_actor(worker_name(cfg.migration_id, i), namespace=NAMESPACE)._actor_id.hex()
            for i in range(n)]


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_driver_is_refused_and_verify_leaves_the_running_workers(
        ray_cluster, tmp_path, capsys):
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(120)))
    cfg = lance_config(tmp_path, "one-driver")
    first = Migration(cfg)
    first.start()
    try:
        held = first.store.read(LEASE_KEY)
        assert held["pid"] == first.lease.info["pid"] and held["released_at"] is None
        workers = actor_ids(cfg)
        with pytest.raises(DriverBusyError) as busy:
            Migration(cfg).start()
        msg = str(busy.value)
        assert f"pid {held['pid']} on host {socket.gethostname()}" in msg, msg
        assert "since " in msg and "ray-migrate status" in msg and f"kill {held['pid']}" in msg
        assert first.router.call("running_driver", 6.0)["token"] == first.lease.token
        # verify beside a driver: no lease, no actor started or killed
        report = verify_migration(cfg)
        assert {u.unit_id for u in report.units} == {"tenant=t0", "tenant=t1"}
        assert actor_ids(cfg) == workers, "verify replaced the running driver's workers"
        capsys.readouterr()
        assert main(["status", str(cfg_file(tmp_path, cfg)), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["driver"]["pid"] == held["pid"]
        first.prepare_units()  # the first driver's workers still work
        assert all(r.ok and r.equal for r in first.rows.values())
    finally:
        first.close()
    assert first.store.read(LEASE_KEY)["released_at"] is not None
    assert first.router.call("running_driver", 6.0) is None
    again = Migration(cfg)
    again.start()  # free again once the first let go
    again.close()


def cfg_file(tmp_path, cfg):
    import yaml

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
    return path


def test_a_dead_driver_on_this_host_is_taken_over_at_once(ray_cluster, tmp_path):
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(40)))
    cfg = lance_config(tmp_path, "takeover")
    m = Migration(cfg)
    m.start(workers=False)  # the router, as a crashed run leaves it
    now = time.time()
    dead = {"token": "dead", "host": socket.gethostname(), "pid": dead_pid(), "command": "run",
            "started_at": now - 60, "renewed_at": now, "ray_job_id": None,
            "ray_node_id": None}
    assert m.router.call("claim_driver", dead, 6.0) is None
    m.store.write(LEASE_KEY, dead)  # renewed just now, but its pid is gone
    m.close()
    resumed = Migration(cfg)
    resumed.start()
    try:
        assert resumed.lease.replaced["pid"] == dead["pid"]
        assert resumed.router.call("running_driver", 6.0)["token"] == resumed.lease.token
        resumed.prepare_units()
        assert all(r.ok for r in resumed.rows.values())
    finally:
        resumed.close()


def test_a_driver_elsewhere_is_waited_for_until_its_lease_lapses(ray_cluster, tmp_path):
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(20)))
    cfg = lance_config(tmp_path, "elsewhere")
    m = Migration(cfg)
    m.start(workers=False)
    try:
        now = time.time()
        other = {"token": "other", "host": "elsewhere", "pid": 4242, "command": "run",
                 "started_at": now - 5, "renewed_at": now, "ray_job_id": "03000000",
                 "ray_node_id": None}
        assert m.router.call("claim_driver", other, 6.0) is None
        m.store.write(LEASE_KEY, other)
        with pytest.raises(DriverBusyError, match="pid 4242 on host elsewhere .*Ray job "
                                                  "03000000"):
            DriverLease(m.store).check()
        # Past its expiry by this host's clock, but the router heard from it just now: the
        # witness refuses (clocks of two hosts may disagree).
        later = DriverLease(m.store, clock=lambda: now + 7)
        later.check()
        with pytest.raises(DriverBusyError, match="pid 4242"):
            later.acquire(m.router)
        # Not heard of by the router either: taken over.
        lapsed = DriverLease(m.store, clock=lambda: now + 7, expire_s=0.0)
        lapsed.acquire(m.router)
        try:
            assert lapsed.replaced["pid"] == 4242
            assert m.store.read(LEASE_KEY)["token"] == lapsed.token
            # The other one comes back and renews: the router answers that it lost.
            assert m.router.call("claim_driver", other, 6.0)["token"] == lapsed.token
        finally:
            lapsed.release()
    finally:
        m.close()


def test_a_driver_taken_for_dead_learns_it_lost_its_lease(ray_cluster, tmp_path):
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(20)))
    cfg = lance_config(tmp_path, "lost")
    m = Migration(cfg)
    m.start(workers=False)
    try:
        slow = DriverLease(m.store, heartbeat_s=3600)
        slow.acquire(m.router)
        winner = DriverLease(m.store, expire_s=0.0, clock=lambda: time.time() + 60)
        winner.acquire(m.router)  # took the slow one for dead
        assert not slow.renew() and slow.lost["token"] == winner.token
        slow.release()  # must not release the winner's lease
        assert m.store.read(LEASE_KEY)["token"] == winner.token
        assert m.router.call("running_driver", 6.0)["token"] == winner.token
        m.lease = slow
        with pytest.raises(Exception, match="lost the lease"):
            m.check_lease()
        m.lease = None
        winner.release()
    finally:
        m.close()
