"""The routed write path does only what the guarantee needs (issue 15, client latency).

Before: every upsert with tenant units first fetched its ids from every owning side (one engine
read per write, which the engine write waited for), and waited for the router to end its lease.
Now the look-up is skipped while the router grants wide leases (no unit captures, one owner:
P2a), and the end of a lease on a unit that cannot flip is sent off the write's path (P9a).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
from test_live import DIM, live_config, other_side, read_side, seed

from ray_migrate.client import RoutedCollection
from ray_migrate.migration import Migration
from ray_migrate.placement import InPlaceOdds
from ray_migrate.routing.table import RoutingTable
from ray_migrate.schema import ID, payload_dicts

UNITS = ["tenant=a", "tenant=b"]
PREPARE = ("capturing", "copying", "catching_up", "ready", "frozen", "target")


def test_a_wide_lease_is_granted_only_while_quiet_and_every_capture_waits_for_it():
    t = RoutingTable(UNITS, lease_s=30.0)
    [narrow] = t.begin_writes([("tenant=b", [1], "b")], now=0)
    [wide] = t.begin_writes([("tenant=b", [2], "b")], now=0, wide=True)
    assert wide["wide"] and "wide" not in narrow
    t.set_phase("tenant=a", "capturing", now=1)
    capture_epoch = t.unit("tenant=a").capture_epoch
    # A wide write may have moved a point out of a unnoticed: a's copy waits for it (P2);
    # an ordinary lease on b does not hold a's copy back.
    assert t.open_leases("tenant=a", capture_epoch, now=1) == 1
    [again] = t.begin_writes([("tenant=b", [3], "b")], now=1, wide=True)
    assert "wide" not in again, "a unit captures: the client must look its ids up"
    t.end_write(wide["token"])
    assert t.open_leases("tenant=a", capture_epoch, now=1) == 0
    for phase in (*PREPARE[1:], "done"):
        t.set_phase("tenant=a", phase, now=2)
    [mixed] = t.begin_writes([("tenant=b", [4], "b")], now=2, wide=True)
    assert "wide" not in mixed, "two owners: a move must delete the old copy on the other"
    for phase in (*PREPARE, "done"):
        t.set_phase("tenant=b", phase, now=3)
    [done] = t.begin_writes([("tenant=b", [5], "b")], now=3, wide=True)
    assert done["wide"]
    [new] = t.begin_writes([("tenant=c", [6], "c")], now=3, wide=True)
    assert "wide" not in new, "a new tenant starts on the source: two owners again"


def test_a_quiet_upsert_skips_the_look_up_and_a_capturing_one_logs_the_move(ray_cluster,
                                                                           tmp_path):
    """No unit captures: an upsert moving point 1 from t1 to t0 reads nothing and leaves one
    copy. Then t1 captures, but the client's cached routes still say quiet (a stale cache,
    injected): the router refuses wide leases, the client looks the ids up, and moving point
    5 from t1 to t0 logs it in t1's log (its copy on the target must go)."""
    m, coll = started(tmp_path, "wpath")
    try:
        reads: Counter[str] = Counter()
        backend = coll.backends["source"]
        real_fetch = backend.fetch

        def counted(ids: Any) -> Any:
            reads["fetch"] += 1
            return real_fetch(ids)

        backend.fetch = counted  # type: ignore[method-assign]
        coll.upsert([point(1, "t0")])
        assert reads["fetch"] == 0, "quiet: no look-up before the write"
        assert tenants(coll, [1]) == {1: "t0"}
        m.router.call("set_phase", "tenant=t1", "capturing")
        coll._quiet = lambda: True  # type: ignore[method-assign]
        coll.upsert([point(5, "t0")])
        assert reads["fetch"] >= 1, "the router said a unit captures: looked up"
        assert 5 in m.router.call("peek_changes", "tenant=t1"), "the move is logged in t1"
        assert tenants(coll, [5]) == {5: "t0"}
    finally:
        coll.close()
        m.router.kill()


def test_a_lease_ended_off_the_write_path_still_holds_back_a_capture(ray_cluster, tmp_path):
    """The write returns before its lease's end reaches the router (P9a); a capture that
    begins meanwhile waits for that end (P2), and ``close`` sends every pending end."""
    m, coll = started(tmp_path, "wend")
    gate, sent = threading.Event(), []
    real_end = coll._end_later

    def late(tokens: list[int]) -> None:
        assert gate.wait(60)
        sent.extend(tokens)
        real_end(tokens)

    coll._end_later = late  # type: ignore[method-assign]
    try:
        coll.upsert([point(2, "t2")])  # returned: its end is held back by the gate
        epoch = m.router.call("set_phase", "tenant=t3", "capturing")
        assert not m.router.call("wait_leases", "tenant=t3", epoch, 0.2), \
            "the wide lease of the write to t2 holds t3's copy back"
        gate.set()
    finally:
        gate.set()
        coll.close()
    try:
        assert sent, "close sent the pending end"
        assert m.router.call("wait_leases", "tenant=t3", epoch, 5.0)
    finally:
        m.router.kill()


def test_a_look_up_reads_both_owners_at_once(ray_cluster, tmp_path):
    """With units on both owners, an upsert's look-up reads the source and the target at the
    same time (its cost is the slower read, not the sum): each side's read waits at a barrier
    for the other's, which a look-up reading one side after the other never passes."""
    m, coll = started(tmp_path, "wboth")
    both = threading.Barrier(2, timeout=30)
    sides: list[str] = []
    try:
        for side in ("source", "target"):
            real = coll.backends[side].fetch_values

            def met(ids: Any, name: str, real: Any = real, side: str = side) -> Any:
                sides.append(side)
                if len(sides) <= 2:  # the first look: both sides
                    both.wait()  # BrokenBarrierError after 30 s unless the other side reads
                return real(ids, name)

            coll.backends[side].fetch_values = met  # type: ignore[method-assign]
        routes = {**coll.routes(), "tenant=t1": ("target", "done")}
        coll.routes = lambda: routes  # type: ignore[method-assign]
        # id 0 stays in t0 (on the source), id 1 stays in t1 (now the target's, which holds
        # no copy yet: the second look reads the source alone)
        moved, _ = coll._moves({0: "tenant=t0", 1: "tenant=t1"})
        assert sorted(sides[:2]) == ["source", "target"] and sides[2:] == ["source"], sides
        assert moved == {}, "ids 0 and 1 stay in their tenants"
    finally:
        coll.close()
        m.router.kill()


def test_an_update_in_its_tenant_is_written_in_place_and_only_a_miss_looks_up(ray_cluster,
                                                                              tmp_path):
    """P2b. t1 captures (no wide leases): an upsert of point 1 in its own tenant replaces it
    in place, with no look-up and no other write; one moving point 5 from t1 to t0 replaces
    nothing, looks up and logs the move in t1's log; one of a new id replaces nothing, looks
    up and inserts it. Read with LanceDB's own client."""
    m, coll = started(tmp_path, "winplace")
    calls: Counter[str] = Counter()
    backend = coll.backends["source"]

    def counted(name: str, real: Any) -> Any:
        def call(*args: Any) -> Any:
            calls[name] += 1
            return real(*args)
        return call

    for name in ("update_in_place", "fetch_values", "fetch", "upsert"):
        setattr(backend, name, counted(name, getattr(backend, name)))
    try:
        m.router.call("set_phase", "tenant=t1", "capturing")
        coll._quiet = lambda: False  # type: ignore[method-assign] # the cache may lag
        coll.upsert([point(1, "t1")])
        assert calls == {"update_in_place": 1}, calls
        coll.upsert([point(5, "t0")])
        assert calls["update_in_place"] == 2 and calls["fetch_values"] >= 1, calls
        assert calls["upsert"] == 1, "written again after the look-up"
        assert 5 in m.router.call("peek_changes", "tenant=t1"), "the move is logged in t1"
        coll.upsert([point(900, "t2")])
        assert calls["update_in_place"] == 3 and calls["upsert"] == 2, calls
        assert coll._odds.counts == {"replaced": 1, "missed": 2}
    finally:
        coll.close()
        m.router.kill()
    src = m.cfg.source
    found = read_side({"kind": "lancedb", "uri": src.uri, "table": src.table})
    assert {pid: found[pid][1] for pid in (1, 5, 900)} == {
        1: {"tenant": "t1", "v": 1}, 5: {"tenant": "t0", "v": 1}, 900: {"tenant": "t2", "v": 1}}
    assert all(found[pid][0] == np.full(DIM, 0.5, np.float32).tobytes() for pid in (1, 5, 900))
    assert len(found) == 41, "40 seeded points and the new one, each once"


def test_in_place_odds_look_up_first_after_mostly_misses_and_try_again_later():
    """An application that mostly writes new ids stops paying a merge that replaces nothing
    before each look-up, and tries in place once every WINDOW writes to notice a change."""
    odds, half = InPlaceOdds(), InPlaceOdds.WINDOW // 2
    for _ in range(half + 1):
        assert odds.worth(), "at most half of the last tries missed"
        odds.record(False)
    tries = [odds.worth() for _ in range(2 * InPlaceOdds.WINDOW)]
    assert tries.count(True) == 2 and tries[InPlaceOdds.WINDOW - 1], tries
    for _ in range(InPlaceOdds.WINDOW - half - 1):  # the periodic tries replaced all
        odds.record(True)
    assert not odds.worth(), "9 of the last 16 tries missed"
    odds.record(True)
    assert odds.worth(), "8 of the last 16 tries missed: in place again"


def started(tmp_path, prefix: str) -> tuple[Migration, RoutedCollection]:
    """A LanceDB source of 40 points, its router and target up (no workers, manual cutover),
    and a client connected to it."""
    source, _ = seed("lancedb", tmp_path, n=40)
    mid = f"{prefix}-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, other_side("lancedb", tmp_path),
                              cutover={"mode": "manual"}))
    m.start(workers=False)
    return m, RoutedCollection.connect(mid)


def point(pid: int, tenant: str) -> dict[str, Any]:
    return {"id": pid, "vector": [0.5] * DIM, "payload": {"tenant": tenant, "v": 1}}


def tenants(coll: RoutedCollection, ids: list[int]) -> dict[int, str]:
    """Every copy of these ids on the source, straight from the engine."""
    t = coll.backends["source"].fetch(ids)
    found = list(zip(t.column(ID).to_pylist(), payload_dicts(t), strict=True))
    assert len(found) == len({pid for pid, _ in found}), "one copy per id"
    return {pid: p["tenant"] for pid, p in found}
