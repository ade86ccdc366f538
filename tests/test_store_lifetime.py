"""The hosted Qdrant store's lifetime, as users run things: the driver in one process, the
application in another. The store lives while any unit may route to it and a client may
call it; the router releases it once no driver runs and no live client needs it; a client
closes with a goodbye that frees the folder at once, and a crashed one lapses.

The policy itself (``routing.presence``) is tested without Ray, with an injected clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from app_writer import AFTER_RUN_OPS
from test_live import DIM, check, live_config, other_side, read_side, seed

from ray_migrate.routing.actor import RELEASE_EVERY_S
from ray_migrate.routing.presence import LAPSE_S, Presence

APP = Path(__file__).resolve().parent / "app_writer.py"
FREE_BOUND_S = 2.0  # after a client's close returns, its folder opens within this


# --- the policy, without Ray ----------------------------------------------------------------
SRC = "/data/src"
ON_SOURCE = {"u1": ("source", "ready"), "u2": ("source", "catching_up")}
ALL_DONE = {"u1": ("target", "done"), "u2": ("target", "done")}


def client(cid: str, job: str = "02") -> dict:
    return {"client_id": cid, "job_id": job, "pid": 7, "host": "h"}


def test_nothing_is_released_while_a_driver_runs():
    p = Presence({SRC: {"source"}})
    p.driver_started({"job_id": "01", "pid": 1})
    assert p.to_release(ALL_DONE, 5, now=100.0) == []
    p.driver_started({"job_id": "01", "pid": 1})  # a second command in the same process
    p.driver_exited({"job_id": "01", "pid": 1})
    assert p.to_release(ALL_DONE, 5, now=100.0) == [], "one of the two still runs"
    p.driver_exited({"job_id": "01", "pid": 1})
    assert p.to_release(ALL_DONE, 5, now=100.0) == [SRC]


def test_a_live_client_keeps_the_sides_units_route_to_and_a_lapsed_one_does_not():
    p = Presence({SRC: {"source"}})
    p.watch_began(client("a"), epoch=3, now=100.0)
    assert p.to_release(ON_SOURCE, 3, now=101.0) == [], "units route to the source"
    p.watch_ended("a", now=110.0)  # a crashed client's last watch timed out
    assert p.to_release(ON_SOURCE, 3, now=110.0 + LAPSE_S / 2) == []
    assert p.to_release(ON_SOURCE, 3, now=110.0 + LAPSE_S + 0.01) == [SRC], "lapsed"


def test_a_side_no_unit_routes_to_is_kept_only_for_clients_with_older_routes():
    p = Presence({SRC: {"source"}})
    p.watch_began(client("a"), epoch=3, now=100.0)
    assert p.to_release({"u1": ("target", "target")}, 4, now=100.0) == [], \
        "a unit on the target may still roll back to the source"
    assert p.to_release(ALL_DONE, 5, now=100.0) == [], "client a may hold epoch 3's routes"
    p.watch_began(client("a"), epoch=5, now=100.5)  # its watch now has the new table
    assert p.to_release(ALL_DONE, 6, now=101.0) == [SRC]


def test_clients_of_the_exiting_drivers_job_do_not_count_and_a_goodbye_counts_at_once():
    p = Presence({SRC: {"source", "target"}})
    p.watch_began(client("own", job="01"), epoch=5, now=100.0)
    p.watch_began(client("app", job="02"), epoch=5, now=100.0)
    assert p.to_release(ALL_DONE, 5, now=100.0, ignore_jobs=["01"]) == [], "app needs target"
    p.goodbye("app")
    assert p.to_release(ALL_DONE, 5, now=100.0, ignore_jobs=["01"]) == [SRC]


# --- the proxy outlives its actor -----------------------------------------------------------
def test_hosted_backend_comes_back_after_its_actor_is_released_or_killed(ray_cluster, tmp_path):
    """Before: every call after a release raised TransientError('hosted Qdrant actor
    unavailable'), for good."""
    from qdrant_client import QdrantClient
    from test_qdrant_backend import ALL, batch, endpoint, info_of

    from ray_migrate.backends.qdrant_host import actor_name, hosted_qdrant, release_hosted_qdrant

    ray = ray_cluster
    ep = endpoint(tmp_path)
    store = hosted_qdrant(ep)
    info = info_of()
    store.create(info)
    store.upsert(batch(info, list(range(10))))
    try:
        assert release_hosted_qdrant(ep.path)
        assert store.count(ALL) == 10, "a call after a release makes the actor again"
        assert store.node_id == ray.get_runtime_context().get_node_id(), "where it was"
        ray.kill(ray.get_actor(actor_name(ep.path), namespace="ray_migrate"), no_restart=True)
        store.upsert(batch(info, [10, 11]))
        assert store.count(ALL) == 12, "and after a kill"
    finally:
        assert release_hosted_qdrant(ep.path)
    QdrantClient(path=ep.path).close()  # free once released


# --- clients in other processes -------------------------------------------------------------
def start_app(tmp_path: Path, mid: str, n: int, *extra: str) -> tuple[subprocess.Popen, Path]:
    """The application (tests/app_writer.py) in a process of its own, joined to the session's
    cluster; returns once it has connected."""
    import ray

    work = tmp_path / "app"
    work.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(APP), "--address", ray.get_runtime_context().gcs_address,
         "--migration", mid, "--workdir", str(work), "--seeded", str(n), "--dim", str(DIM),
         *extra], stdout=subprocess.DEVNULL, stderr=open(work / "stderr", "w"))  # noqa: SIM115
    deadline = time.monotonic() + 120
    while not (work / "connected").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the application did not connect:\n{(work / 'stderr').read_text()}")
        time.sleep(0.05)
    return proc, work


def folder_opens(path: str, within_s: float) -> float:
    """Seconds until ``QdrantClient(path=...)`` opens the folder; fails after ``within_s``."""
    from qdrant_client import QdrantClient

    began = time.monotonic()
    while True:
        try:
            QdrantClient(path=path).close()
            return time.monotonic() - began
        except RuntimeError as err:  # held by another process
            if time.monotonic() - began > within_s:
                pytest.fail(f"{path} still held {within_s}s later: {err}")
            time.sleep(0.05)


def truth_after(seeded: dict, outcome: dict) -> dict:
    truth = dict(seeded)
    for pid, p in outcome.items():
        truth[int(pid)] = None if p is None else (
            np.asarray(p[0], np.float32).tobytes(), p[1])
    return truth


@pytest.mark.parametrize("direction", ["qdrant->lancedb", "lancedb->qdrant"])
def test_an_application_in_another_process_outlives_the_driver(ray_cluster, tmp_path,
                                                                direction):
    """Before: once the driver exited it released the hosted store; the application's
    reads and deletes (qdrant->lancedb) or every call (lancedb->qdrant) failed with
    TransientError('hosted Qdrant actor unavailable')."""
    from ray_migrate.driver import run_migration

    src_kind, dst_kind = direction.split("->")
    n = 200
    source, seeded = seed(src_kind, tmp_path, n=n)
    target = other_side(dst_kind, tmp_path)
    mid = f"life-{src_kind[0]}{dst_kind[0]}-{tmp_path.name}"
    cfg = live_config(tmp_path, mid, source, target,
                      cutover={"waves": [1, "100%"], "pause_s": 0.5},
                      rollback={"window_s": 0})
    app: dict = {}
    report = run_migration(cfg, on_started=lambda m: app.update(
        zip(("proc", "work"), start_app(tmp_path, mid, n), strict=True)))
    proc, work = app["proc"], app["work"]
    try:
        assert report.ok, report.to_table()
        (work / "run_ended").touch()
        if src_kind == "qdrant":  # the source is no unit's owner: released for the asking
            folder_opens(source["path"], within_s=FREE_BOUND_S)
        # The application goes on after the run, as users' do: until it has made
        # AFTER_RUN_OPS operations since (a count, not a time: a busy machine is slower).
        deadline = time.monotonic() + 120
        while not (work / "after_run_done").exists():
            assert proc.poll() is None, (work / "stderr").read_text()[-3000:]
            assert time.monotonic() < deadline, "the application made too few operations"
            time.sleep(0.05)
        if dst_kind == "qdrant":  # every unit lives there now: held while the client lives
            from qdrant_client import QdrantClient

            with pytest.raises(RuntimeError):
                QdrantClient(path=target["path"])
        (work / "stop").touch()
        assert proc.wait(120) == 0, (work / "stderr").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    result = json.loads((work / "result.json").read_text())
    print(f"{direction}: {result['ops']} operations, {result['after_run']} after the run; "
          f"close() took {result['close_s']:.2f}s")
    assert result["errors"] == [], result["errors"][:5]
    assert result["after_run"] >= AFTER_RUN_OPS, f"only {result['after_run']} operations after the run"
    if dst_kind == "qdrant":
        folder_opens(target["path"], within_s=FREE_BOUND_S)  # released at its goodbye
    check(read_side(target), truth_after(seeded, result["outcome"]), {"t0", "t1", "t2", "t3"},
          "target")


def test_a_crashed_application_lapses_and_its_store_is_released(ray_cluster, tmp_path):
    """A client killed without a goodbye keeps the store only until its watch lapses."""
    from ray_migrate.driver import Migration

    source, _ = seed("qdrant", tmp_path, n=40)
    mid = f"crash-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, other_side("lancedb", tmp_path),
                              cutover={"mode": "manual"}))
    m.start(workers=False)
    m.close()  # the driver exits: every unit stays on the source
    folder_opens(source["path"], within_s=FREE_BOUND_S)
    watch_s = 1.0
    proc, work = start_app(tmp_path, mid, 40, "--crash", "--watch-s", str(watch_s))
    assert proc.wait(60) == -9
    assert (work / "read").exists(), "it read the source (the store came back) and died"
    from qdrant_client import QdrantClient

    with pytest.raises(RuntimeError):  # held for the client, which may still call it
        QdrantClient(path=source["path"])
    # The last watch ends within watch_s, the client lapses LAPSE_S later, and the router
    # looks every RELEASE_EVERY_S.
    folder_opens(source["path"], within_s=watch_s + LAPSE_S + RELEASE_EVERY_S + 2.0)


def test_a_client_is_known_to_the_router_from_connect_until_close(ray_cluster, tmp_path):
    """Before: a client had no presence at the router, and no watch before its first read."""
    from ray_migrate import RoutedCollection
    from ray_migrate.driver import Migration

    source, _ = seed("lancedb", tmp_path, n=20)
    mid = f"hello-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, other_side("lancedb", tmp_path),
                              cutover={"mode": "manual"}))
    m.start(workers=False)
    try:
        coll = RoutedCollection.connect(mid)
        seen = {c["client_id"]: c for c in m.router.call("presence")["clients"]}
        me = seen[coll.cache.client_id]
        assert (me["pid"], me["job_id"]) == (os.getpid(), coll.cache.me["job_id"])
        assert coll.cache._watcher.is_alive(), "the watch runs from connect, before any read"
        done = threading.Event()
        threading.Thread(target=lambda: (coll.close(), done.set()), daemon=True).start()
        assert done.wait(30), "close returns"
        ids = [c["client_id"] for c in m.router.call("presence")["clients"]]
        assert coll.cache.client_id not in ids, "gone at its goodbye"
    finally:
        m.close()


KILLED_DRIVER = """
import json, os, signal, sys
import ray
from ray_migrate.backends import open_backend
from ray_migrate.config import MigrationConfig
from ray_migrate.driver import Migration

ray.init(address=sys.argv[1], namespace="ray_migrate", log_to_driver=False)
m = Migration(MigrationConfig.model_validate(json.loads(open(sys.argv[2]).read())))
m.start(workers=False)
assert open_backend(m.cfg.source).count(m.plan.units[0]) >= 0  # the store is in use
open(sys.argv[3], "w").close()
os.kill(os.getpid(), signal.SIGKILL)  # no word to the router, no lease released
"""


def test_a_store_held_by_a_killed_driver_is_released(ray_cluster, tmp_path):
    """A driver (or command) killed with SIGKILL never tells the router it exited; before,
    the router kept its hosted stores for good. Its Ray job is seen dead instead."""
    import ray

    source, _ = seed("qdrant", tmp_path, n=20)
    mid = f"killed-{tmp_path.name}"
    cfg = live_config(tmp_path, mid, source, other_side("lancedb", tmp_path),
                      cutover={"mode": "manual"})
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json(by_alias=True))
    started = tmp_path / "started"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_DRIVER, ray.get_runtime_context().gcs_address,
         str(tmp_path / "cfg.json"), str(started)], capture_output=True, text=True,
        timeout=180)
    assert proc.returncode == -9 and started.exists(), proc.stderr[-3000:]
    # The GCS marks the job dead once its driver is gone; the router looks every
    # RELEASE_EVERY_S.
    folder_opens(source["path"], within_s=RELEASE_EVERY_S + 15.0)


def test_a_release_waits_for_a_write_under_way_on_the_store(ray_cluster, tmp_path):
    """A client's write begun on a unit's source just before its flip (fenced, still under
    way there) when the driver exits and no unit routes to the source any more. Before, the
    router released the store under the call: Ray's retries of it met a dead actor and the
    client's store proxy hosted the folder again (a write held 10-17 s in the two-migrations
    test). Now the release waits for the lease (bounded by RELEASE_DRAIN_S)."""
    from ray_migrate.backends.qdrant_host import hosted_path
    from ray_migrate.driver import Migration

    source, _ = seed("qdrant", tmp_path, n=20)
    mid = f"drain-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, other_side("lancedb", tmp_path),
                              cutover={"mode": "manual", "write_lease_s": 60.0}))
    m.start(workers=False)
    units = [u.unit_id for u in m.plan.units]
    for phase in ("capturing", "copying", "catching_up", "ready"):
        m.router.call("set_phases", units, phase)
    lease = m.router.call("begin_writes", [(units[0], [1], None)])[0]
    assert lease["owner"] == "source"
    m.router.call("set_phases", units, "frozen")
    for u in units:
        assert m.router.call("flip", u, "target")
    m.router.call("set_phases", units, "done")
    assert hosted_path(source["path"])
    closer = threading.Thread(target=m.close, daemon=True)
    closer.start()
    closer.join(3.0)
    assert closer.is_alive() and hosted_path(source["path"]), \
        "the store was released under a write still under way on it"
    m.router.call("end_writes", [lease["token"]])  # fenced: held for the client's retry
    retry = m.router.call("begin_writes", [(units[0], [1], None)])[0]
    assert retry["owner"] == "target"
    m.router.call("end_writes", [retry["token"], lease["token"]])
    closer.join(30)
    assert not closer.is_alive()
    folder_opens(source["path"], within_s=FREE_BOUND_S)
