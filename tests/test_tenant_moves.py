"""Points that change tenant while units have different owners.

Before: a unit's applier re-read a logged id from the unit's owner and, finding it absent,
deleted it by id on the other side, where it was the live point of its new tenant (6 to 11
acknowledged writes lost per run); and an upsert that moved an id to another tenant left the
old copy in the old unit. Now appliers are unit-scoped and an upsert moves the point under
leases on both units.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from test_live import DIM, check, live_config, other_side, read_side, seed
from truth import read_lance, read_qdrant

from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.backends.qdrant import QdrantBackend
from ray_migrate.catchup import apply_units
from ray_migrate.config import LanceEndpoint, QdrantEndpoint, TransformConfig
from ray_migrate.schema import CollectionInfo, VectorSpec, infer_payload_schema, make_batch
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

A = UnitSpec("tenant=a", "tenant", field="tenant", value="a")
B = UnitSpec("tenant=b", "tenant", field="tenant", value="b")


# --- unit level: the applier, with both engines on either side ------------------------------
def open_side(kind: str, root, field: str, filtered: bool = False) -> tuple[Any, dict]:
    """An empty collection whose tenant field is ``field``; ``filtered``: a Qdrant backend
    that deletes as against a server (a FilterSelector), on a local folder."""
    payloads = [{field: "a", "v": 0}]
    info = CollectionInfo("docs", (VectorSpec("vector", DIM, "dot"),), "int",
                          payload_schema=infer_payload_schema(payloads), unnamed_vector=True)
    if kind == "qdrant":
        ep = {"kind": "qdrant", "path": str(root), "collection": "docs"}
        b: Any = QdrantBackend(QdrantEndpoint(**ep))
    else:
        ep = {"kind": "lancedb", "uri": str(root), "table": "docs"}
        b = LanceBackend(LanceEndpoint(**ep))
    b.create(info)
    if filtered:
        b.local = False
    return b, {"info": info, "field": field, "ep": ep}


def put(b: Any, meta: dict, rows: dict[int, tuple[str, int]]) -> None:
    ids = sorted(rows)
    vecs = np.array([[pid + v / 10] * DIM for pid, (_, v) in
                     sorted(rows.items())], np.float32)
    b.upsert(make_batch(meta["info"], ids, {"vector": vecs},
                        [{meta["field"]: rows[i][0], "v": rows[i][1]} for i in ids]))


def read(b: Any, meta: dict) -> dict[int, tuple[str, int]]:
    b.close()
    ep = meta["ep"]
    found = read_qdrant(ep["path"], "docs") if ep["kind"] == "qdrant" else \
        read_lance(ep["uri"], "docs")
    return {pid: (p[meta["field"]], p["v"]) for pid, (_, p) in found.items()}


@pytest.mark.parametrize("owner_kind, other_kind, filtered", [
    ("lancedb", "qdrant", False), ("qdrant", "lancedb", False), ("lancedb", "qdrant", True)],
    ids=["lancedb-owner", "qdrant-owner", "qdrant-server-delete"])
def test_an_apply_counts_and_deletes_an_id_only_within_its_unit(tmp_path, owner_kind,
                                                                 other_kind, filtered):
    """The owner holds the units in the source's field names (``tenant``), the other side in
    its own (``org``, renamed by the transform). Logged: unit a [1, 2, 3, 4], unit b [1].
    1 moved from a to b on the owner; 2 was deleted; 3 was updated in a; 4 moved to b on the
    other side, where b is owned (its live copy): it must stay."""
    owner, om = open_side(owner_kind, tmp_path / "owner", "tenant")
    other, xm = open_side(other_kind, tmp_path / "other", "org", filtered)
    put(owner, om, {1: ("b", 1), 3: ("a", 1)})
    put(other, xm, {1: ("a", 0), 2: ("a", 0), 3: ("a", 0), 4: ("b", 1)})
    transform = Transform(TransformConfig(rename_fields={"tenant": "org"}))
    seen: list = []
    up, gone = apply_units([(A, [1, 2, 3, 4], None), (B, [1], None)], owner, other,
                           transform, seen)
    assert (up, gone) == (2, 3), "1 in b and 3 upserted; 1, 2 and 4 deleted from a"
    in_scope = {u: {pid for pid in rows.column("id").to_pylist()} for u, (_, rows) in
                zip("ab", seen, strict=True)}
    assert in_scope == {"a": {3}, "b": {1}}, "the owner's rows count only in their unit"
    assert read(other, xm) == {1: ("b", 1), 3: ("a", 1), 4: ("b", 1)}


@pytest.mark.parametrize("other_kind, filtered", [
    ("qdrant", False), ("qdrant", True), ("lancedb", False)],
    ids=["qdrant", "qdrant-server-upsert", "lancedb"])
def test_an_apply_never_replaces_a_point_of_another_tenant_and_hands_its_id_back(
        tmp_path, other_kind, filtered):
    """Between an applier's read of the owner and its write, a point may move to a tenant
    whose owner is the other side: that live point must stay. Here the owner read 1, 2 and 3
    in unit a; on the other side 1 is now in b (not applied: owned there), 2 in a (replaced)
    and 3 absent (inserted). The ids left are handed back, to be logged again."""
    owner, om = open_side("lancedb", tmp_path / "owner", "tenant")
    other, xm = open_side(other_kind, tmp_path / "other", "org", filtered)
    put(owner, om, {1: ("a", 5), 2: ("a", 5), 3: ("a", 5)})
    put(other, xm, {1: ("b", 9), 2: ("a", 0)})
    transform = Transform(TransformConfig(rename_fields={"tenant": "org"}))
    kept: dict = {}
    up, gone = apply_units([(A, [1, 2, 3], None)], owner, other, transform, kept=kept)
    assert (up, gone, kept) == (2, 0, {"tenant=a": [1]})
    assert read(other, xm) == {1: ("b", 9), 2: ("a", 5), 3: ("a", 5)}


def test_an_id_whose_blocking_point_is_deleted_after_the_write_is_still_handed_back(tmp_path):
    """LanceDB: the upsert of 1 in unit b meets 1's old copy in unit a and leaves it; before
    it looks which ids it left, a's applier deletes that old copy (the move's delete). Found
    then neither in b nor anywhere, 1 must still be handed back, or its new copy never
    arrives (seen in the multi-process test: an acknowledged re-insert lost)."""
    owner, om = open_side("lancedb", tmp_path / "owner", "tenant")
    other, xm = open_side("lancedb", tmp_path / "other", "tenant")
    put(owner, om, {1: ("b", 5)})
    put(other, xm, {1: ("a", 0)})
    real_fetch = other.fetch

    def a_applier_deletes_first(ids: Any) -> Any:
        other.delete([1], A)
        return real_fetch(ids)

    other.fetch = a_applier_deletes_first
    kept: dict = {}
    apply_units([(B, [1], None)], owner, other, Transform(TransformConfig()), kept=kept)
    assert kept == {"tenant=b": [1]}, "handed back, to be applied again"
    other.fetch = real_fetch
    apply_units([(B, kept["tenant=b"], None)], owner, other, Transform(TransformConfig()))
    assert read(other, xm) == {1: ("b", 5)}


def test_a_server_upsert_hands_back_an_id_a_point_took_after_its_look(tmp_path):
    """A Qdrant server: the upsert of 1 in unit b looks first (1 absent), then another writer
    puts 1 in unit a before the write, whose update filter then skips it without a word. The
    look after the write hands 1 back; once a's applier has removed that copy, 1 arrives."""
    owner, om = open_side("lancedb", tmp_path / "owner", "tenant")
    other, xm = open_side("qdrant", tmp_path / "other", "tenant", filtered=True)
    put(owner, om, {1: ("b", 5)})
    real = other.client
    looks = []

    class Client:  # the real client; another writer acts right after the first look
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def retrieve(self, *args: Any, **kwargs: Any) -> Any:
            out = real.retrieve(*args, **kwargs)
            looks.append(1)
            if len(looks) == 1:
                other.client = real
                put(other, xm, {1: ("a", 0)})
                other.client = self
            return out

    other.client = Client()
    kept: dict = {}
    apply_units([(B, [1], None)], owner, other, Transform(TransformConfig()), kept=kept)
    other.client = real
    assert kept == {"tenant=b": [1]}, "handed back, to be applied again"
    assert read(other, xm) == {1: ("a", 0)}, "the filter kept the other tenant's point"
    other, xm = open_side_again(xm)
    other.delete([1], A)
    apply_units([(B, kept["tenant=b"], None)], owner, other, Transform(TransformConfig()))
    assert read(other, xm) == {1: ("b", 5)}


def open_side_again(meta: dict) -> tuple[Any, dict]:
    """The Qdrant side again, after ``read`` closed it (as against a server)."""
    b = QdrantBackend(QdrantEndpoint(**meta["ep"]))
    b.local = False
    return b, meta


class HeldUpsert:
    """The real backend, whose next upsert waits until the test lets it go on."""

    def __init__(self, real: Any):
        self.real, self.reached, self.go = real, threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def upsert(self, table: Any, within: Any = None) -> Any:
        self.reached.set()
        assert self.go.wait(30)
        return self.real.upsert(table) if within is None else self.real.upsert(table, within)


def test_an_applier_that_read_a_point_before_it_moved_leaves_its_new_copy(ray_cluster,
                                                                         tmp_path):
    """Unit a is on the source, b on the target. The applier of a reads point 1 (in a) from
    the source; before it writes, a client moves 1 to b: its new copy on the target is b's
    live point. Before: the applier wrote the old copy over it, and its next step, finding 1
    gone from a on the source, deleted it from the target."""
    from ray_migrate.catchup import UnitSync
    from ray_migrate.routing.actor import start_router

    source, sm = open_side("lancedb", tmp_path / "src", "tenant")
    target, tm = open_side("qdrant", tmp_path / "dst", "tenant")
    put(source, sm, {1: ("a", 5)})
    put(target, tm, {1: ("a", 0)})
    h = start_router(f"rt-move-{tmp_path.name}", str(tmp_path / "state"),
                     ["tenant=a", "tenant=b"], {}, lease_s=5.0)
    try:
        for phase in ("capturing", "copying", "catching_up", "ready"):
            h.call("set_phases", ["tenant=a", "tenant=b"], phase)
        for phase in ("frozen", "target"):
            h.call("set_phase", "tenant=b", phase)
        [lease] = h.call("begin_writes", [("tenant=a", [1], "a")])  # a client's update of 1
        h.call("end_writes", [lease["token"]])
        held = HeldUpsert(target)
        sync = UnitSync(A, h, source, held, Transform(TransformConfig()))
        stepping = threading.Thread(target=sync.step, daemon=True)
        stepping.start()
        assert held.reached.wait(30), "the applier read the source and is about to write"
        leases = h.call("begin_writes", [("tenant=b", [1], "b"), ("tenant=a", [1], "a")], True)
        assert [le["owner"] for le in leases] == ["target", "source"]
        put(target, tm, {1: ("b", 9)})  # the move, as RoutedCollection.upsert makes it
        source.delete([1], A)
        h.call("end_writes", [le["token"] for le in leases])
        held.go.set()
        stepping.join(30)
        sync.other = target
        assert sync.until(0, timeout_s=30)[0] == 0
    finally:
        h.kill()
    assert read(target, tm) == {1: ("b", 9)}, "b's point, as the client wrote it"
    assert read(source, sm) == {}


def test_a_scoped_delete_leaves_points_of_other_tenants(tmp_path):
    lance, lm = open_side("lancedb", tmp_path / "l", "tenant")
    qdrant, qm = open_side("qdrant", tmp_path / "q", "tenant")
    for b, m in ((lance, lm), (qdrant, qm)):
        put(b, m, {1: ("a", 0), 2: ("b", 0), 3: ("a", 0), 4: ("b", 0), 5: ("c", 0)})
        b.delete([1, 2], A)
        b.delete_many([([3, 4], B), ([5], None)])
        assert read(b, m) == {2: ("b", 0), 3: ("a", 0)}, m["ep"]["kind"]


# --- live: a client moves points while one unit is on the source and one on the target ------
class Mover:
    """Moves points between t0 (on the source) and t1 (on the target) through the client
    and records the last acknowledged state of every id it touched."""

    def __init__(self, coll: Any, truth: dict[int, Any]):
        self.coll, self.truth = coll, truth
        self.rng = np.random.default_rng(17)
        self.n = 0

    def upsert(self, pid: int, tenant: str) -> None:
        self.n += 1
        vec = self.rng.standard_normal(DIM).astype(np.float32)
        payload = {"tenant": tenant, "v": 1000 + self.n}
        self.coll.upsert([{"id": pid, "vector": vec.tolist(), "payload": payload}])
        self.truth[pid] = (vec.tobytes(), payload)

    def delete(self, pid: int) -> None:
        self.coll.delete([pid])
        self.truth[pid] = None


def in_tenant(truth: dict[int, Any], tenant: str, k: int, skip: set[int]) -> list[int]:
    return [pid for pid, p in sorted(truth.items())
            if p is not None and p[1]["tenant"] == tenant and pid not in skip][:k]


def wait_caught_up(router: Any, units: list[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(router.call("lags")[u][1] for u in units):
        assert time.monotonic() < deadline, router.call("lags")
        time.sleep(0.1)


@pytest.mark.parametrize("direction", ["qdrant->lancedb", "lancedb->qdrant", "lancedb->lancedb"])
def test_points_moved_between_tenants_on_different_owners_exist_once(ray_cluster, tmp_path,
                                                                      direction):
    """LanceDB on both sides: the client's upserts try an update in place first (P2b): the
    moves below replace nothing there and are found by the look-up; the updates that stay
    in their tenant are replaced in place."""
    from ray_migrate import RoutedCollection
    from ray_migrate.driver import Migration
    from ray_migrate.waves import switch_units

    src_kind, dst_kind = direction.split("->")
    source, truth = seed(src_kind, tmp_path, n=120)
    target = other_side(dst_kind, tmp_path)
    mid = f"moves-{src_kind[0]}{dst_kind[0]}-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, target, cutover={"mode": "manual"}))
    m.start()
    try:
        m.prepare_units()
        assert switch_units(m, ["tenant=t1"], "cutover")["tenant=t1"]["ok"]
        coll = RoutedCollection.connect(mid)
        mover = Mover(coll, truth)
        m.router.call("pause_followers", 120)  # nothing applies until every move is made
        used: set[int] = set()
        for src, dst in (("t0", "t1"), ("t1", "t0")):
            for pid in in_tenant(truth, src, 2, used):  # updated in its tenant
                used.add(pid)
                mover.upsert(pid, src)
            for pid in in_tenant(truth, src, 4, used):  # moved by an upsert
                used.add(pid)
                mover.upsert(pid, dst)
            for pid in in_tenant(truth, src, 4, used):  # deleted, then re-inserted elsewhere
                used.add(pid)
                mover.delete(pid)
                mover.upsert(pid, dst)
            for pid in in_tenant(truth, src, 2, used):  # there and back again
                used.add(pid)
                mover.upsert(pid, dst)
                mover.upsert(pid, src)
        moved = {pid for pid in used if truth[pid] is not None}
        assert len(moved) == 24
        # Before any applier ran: the owners hold each moved id once (the LanceDB side can
        # be read while the migration runs).
        for side, owned, kind in ((source, {"t0", "t2", "t3"}, src_kind),
                                  (target, {"t1"}, dst_kind)):
            if kind == "lancedb":
                check(read_side(side), truth, owned, f"{side['uri']} before the appliers ran")
        if direction == "lancedb->lancedb":
            # t0's two, in place; after the misses of the moves, t1's are looked up first
            assert coll._odds.counts["replaced"] >= 2, coll._odds.counts
        m.router.call("pause_followers", 0)
        wait_caught_up(m.router, ["tenant=t0", "tenant=t1"])
        coll.close()
    finally:
        m.close()
    # The owners (source: t0, t2, t3; target: t1), read with the engines' own clients: each
    # moved id once, in its new tenant, with its last value; and each side a full copy, since
    # t0 is synced to the target and t1 back to the source.
    found_source, found_target = read_side(source), read_side(target)
    check(found_source, truth, {"t0", "t2", "t3"}, "source (owner)")
    check(found_target, truth, {"t1"}, "target (owner)")
    check(found_source, truth, {"t0", "t1", "t2", "t3"}, "source")
    check(found_target, truth, {"t0", "t1", "t2", "t3"}, "target")


def test_a_local_qdrant_scan_leaves_out_a_point_that_left_its_unit_meanwhile(tmp_path):
    """Local mode lists a unit's ids once per scan and reads the pages by id later. Point 3
    moves from a to b between the two: read with b's payload, it was copied as a's point and
    then again by b's copy, into a fresh target that appends (seen in the multi-process
    test: an id stored twice in the target)."""
    source, sm = open_side("qdrant", tmp_path / "src", "tenant")
    put(source, sm, {1: ("a", 0), 2: ("a", 0), 3: ("a", 0), 4: ("a", 0)})
    pages = source.scan(A, batch_size=2)
    first, _ = next(pages)
    assert first.column("id").to_pylist() == [1, 2]
    put(source, sm, {3: ("b", 1)})  # a client moves 3 to b
    rest = [pid for batch, _ in pages for pid in batch.column("id").to_pylist()]
    assert rest == [4], "3 is b's now: b's copy takes it"


def test_a_move_within_one_owner_never_deletes_a_write_made_since_its_look_up(ray_cluster,
                                                                                tmp_path):
    """P5a. Client M moves point 4 from t0 to t2, both on the source; client W writes 4 to
    t0 again right after M's upsert has landed (M's look-up found 4 in t0). Before: M then
    deleted 4 "where it is still in t0", W's acknowledged write, and 4 was gone. Now M's
    upsert by id replaced the old copy and M deletes nothing there: 4 is W's point in t0,
    once. Read with LanceDB's own client."""
    from test_client_write_path import point, started

    from ray_migrate import RoutedCollection

    m, mover = started(tmp_path, "movew")
    writer = RoutedCollection.connect(m.cfg.migration_id)
    backend = mover.backends["source"]
    real_upsert, raced = backend.upsert, []

    def then_w_writes(*args: Any) -> Any:
        out = real_upsert(*args)
        if not raced:  # M's upsert of 4 in t2 has landed; W writes 4 to t0 now
            raced.append(True)
            writer.upsert([{**point(4, "t0"), "payload": {"tenant": "t0", "v": 2}}])
        return out

    backend.upsert = then_w_writes  # type: ignore[method-assign]
    try:
        m.router.call("set_phase", "tenant=t1", "capturing")  # no wide leases: look-ups
        for c in (mover, writer):
            c._quiet = lambda: False  # type: ignore[method-assign] # the cache may lag
        mover.upsert([point(4, "t2")])
        assert raced, "W wrote between M's upsert and the end of M's write"
    finally:
        writer.close()
        mover.close()
        m.router.kill()
    src = m.cfg.source
    found = read_side({"kind": "lancedb", "uri": src.uri, "table": src.table})
    assert found[4][1] == {"tenant": "t0", "v": 2}, "W's acknowledged write, the last one"
    assert len(found) == 40, "every point once"
