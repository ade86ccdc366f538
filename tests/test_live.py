"""The key test: a live writer through RoutedCollection during copy, catch-up, every cutover
wave and a rollback, then every side read with the engine's own client and compared with what
the writer itself recorded. Both directions; once more with the router killed mid-way."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ray_migrate import RoutedCollection
from ray_migrate.config import parse_config
from ray_migrate.driver import Migration, release_local_stores, run_migration
from ray_migrate.waves import switch_units

DIM = 8
TENANTS = ["t0", "t1", "t2", "t3"]


def seed(kind: str, root, n: int = 300) -> tuple[dict, dict[int, Any]]:
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    payloads = [{"tenant": TENANTS[i % 4], "v": 0} for i in range(n)]
    if kind == "qdrant":
        from qdrant_client import QdrantClient, models

        ep = {"kind": "qdrant", "path": str(root / "src"), "collection": "docs"}
        client = QdrantClient(path=ep["path"])
        client.create_collection("docs", vectors_config=models.VectorParams(
            size=DIM, distance=models.Distance.DOT))
        client.upsert("docs", [models.PointStruct(id=i, vector=vecs[i].tolist(),
                                                  payload=payloads[i]) for i in range(n)])
        client.close()
    else:
        import lancedb

        ep = {"kind": "lancedb", "uri": str(root / "src"), "table": "docs"}
        lancedb.connect(ep["uri"]).create_table("docs", pa.table({
            "id": pa.array(range(n), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM),
            "tenant": [p["tenant"] for p in payloads], "v": [0] * n}), mode="create")
        ep["distance"] = "dot"
    truth = {i: (vecs[i].tobytes(), payloads[i]) for i in range(n)}
    return ep, truth


def other_side(kind: str, root) -> dict:
    if kind == "qdrant":
        return {"kind": "qdrant", "path": str(root / "dst"), "collection": "docs"}
    return {"kind": "lancedb", "uri": str(root / "dst"), "table": "docs"}


@contextmanager
def prepared(tmp_path, prefix: str, n: int, **cutover: Any) -> Iterator[tuple]:
    """A LanceDB-to-LanceDB migration of ``n`` seeded points in manual cutover mode, every
    unit copied, verified and ready: (migration, its id, source, target, truth of the seeded
    points); closed afterwards. ``cutover``: more cutover settings."""
    source, truth = seed("lancedb", tmp_path, n=n)
    target = other_side("lancedb", tmp_path)
    mid = f"{prefix}-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, target,
                              cutover={"mode": "manual", **cutover}))
    m.start()
    try:
        m.prepare_units()
        yield m, mid, source, target, truth
    finally:
        m.close()


class Writer(threading.Thread):
    """Inserts, updates, deletes and re-inserts in every unit; records every acknowledged op."""

    def __init__(self, coll: RoutedCollection, truth: dict[int, Any], seed: int = 11):
        super().__init__(daemon=True)
        self.coll, self.truth = coll, truth
        self.rng = np.random.default_rng(seed)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.ops = 0
        self.next_id = max(truth) + 1
        self.lock = threading.Lock()  # held during one op, so a reader can take a still moment
        self.history: dict[int, list[tuple[float, str]]] = {}  # what happened to each id

    def point(self, pid: int) -> dict[str, Any]:
        vec = self.rng.standard_normal(DIM).astype(np.float32)
        return {"id": pid, "vector": vec.tolist(),
                "payload": {"tenant": TENANTS[pid % 4], "v": self.ops}}

    def one(self) -> None:
        live = [i for i, p in self.truth.items() if p is not None]
        dead = [i for i, p in self.truth.items() if p is None]
        kind = self.rng.choice(["insert", "update", "update", "delete", "reinsert"])
        if kind == "delete" and live:
            pid = int(self.rng.choice(live))
            self.coll.delete([pid])
            self.truth[pid] = None
            self.history.setdefault(pid, []).append((time.time(), "delete"))
            return
        if kind == "reinsert" and dead:
            pid = int(self.rng.choice(dead))
        elif kind == "update" and live:
            pid = int(self.rng.choice(live))
        else:
            pid, self.next_id = self.next_id, self.next_id + 1
        p = self.point(pid)
        self.coll.upsert([p])
        self.truth[pid] = (np.asarray(p["vector"], np.float32).tobytes(), p["payload"])
        self.history.setdefault(pid, []).append((time.time(), f"{kind} v={self.ops}"))

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                try:
                    self.one()
                    self.ops += 1
                except BaseException as err:  # noqa: BLE001 - every client error counts
                    self.errors.append(err)
            time.sleep(0.001)


def brute_force(truth: dict[int, Any], q: np.ndarray, k: int, tenant: str | None) -> list:
    live = [(pid, p) for pid, p in truth.items()
            if p is not None and (tenant is None or p[1]["tenant"] == tenant)]
    scores = [(float(np.frombuffer(vec, np.float32) @ q), pid) for pid, (vec, _) in live]
    return sorted(scores, key=lambda s: -s[0])[:k]


def search_mismatch(coll: RoutedCollection, truth: dict[int, Any], rng: Any) -> str | None:
    """Exact search through the client against brute force over the recorded truth."""
    q = rng.standard_normal(DIM).astype(np.float32)
    for tenant in (None, "t1"):
        flt = {"tenant": tenant} if tenant else None
        got = coll.search(q.tolist(), k=10, filter=flt)
        want = brute_force(truth, q, 10, tenant)
        if [h["id"] for h in got] != [pid for _, pid in want]:
            lost = sorted({p for _, p in want} - {h["id"] for h in got})
            units = {u["unit_id"]: (u["phase"], u["owner"])
                     for u in coll.router.call("status")["units"]}
            return (f"filter {flt}: got {[h['id'] for h in got]}, want {[p for _, p in want]}; "
                    f"retrieve({lost}) -> {[r['id'] for r in coll.retrieve(lost)]}; {units}")
        if not np.allclose([h["score"] for h in got], [s for s, _ in want], rtol=1e-4,
                           atol=1e-4):
            return f"filter {flt}: scores differ"
        if any(h["payload"] != truth[h["id"]][1] for h in got):
            return f"filter {flt}: a payload differs"
    return None


def read_side(ep: dict) -> dict[int, Any]:
    from truth import read_lance, read_qdrant

    if ep["kind"] == "qdrant":
        found = read_qdrant(ep["path"], ep["collection"])
    else:
        found = read_lance(ep["uri"], ep["table"])
    return {pid: (vecs["vector"], payload) for pid, (vecs, payload) in found.items()}


def check(found: dict[int, Any], truth: dict[int, Any], tenants: set[str], where: str) -> None:
    want = {pid: p for pid, p in truth.items() if p is not None and p[1]["tenant"] in tenants}
    got = {pid: p for pid, p in found.items() if p[1]["tenant"] in tenants}
    deleted = {pid for pid, p in truth.items() if p is None}
    assert not (set(got) & deleted), f"{where}: deleted ids came back: {sorted(set(got) & deleted)[:10]}"
    assert set(got) == set(want), (f"{where}: missing {sorted(set(want) - set(got))[:10]}, "
                                   f"extra {sorted(set(got) - set(want))[:10]}")
    for pid, (vec, payload) in want.items():
        assert got[pid][0] == vec, f"{where}: point {pid} vector differs"
        assert got[pid][1] == payload, f"{where}: point {pid} payload {got[pid][1]} != {payload}"


WINDOW_AFTER_ROLLBACK_S = 1.0


def live_config(root, mid: str, source: dict, target: dict, **over) -> Any:
    return parse_config({
        "migration_id": mid, "source": source, "target": target,
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 40, "workers": 2},
        "cutover": {"waves": [1, "50%", "100%"], "pause_s": 1.0, "max_freeze_ms": 3000,
                    "write_lease_s": 3.0, **over.pop("cutover", {})},
        "rollback": {"window_s": 6.0},
        "state_uri": str(root / "state"), **over})


@pytest.mark.parametrize("direction, kill_router", [
    ("qdrant->lancedb", False), ("lancedb->qdrant", False), ("qdrant->lancedb", True)])
def test_live_migration_loses_nothing(ray_cluster, tmp_path, direction, kill_router,
                                     monkeypatch):
    import ray

    from ray_migrate import driver

    src_kind, dst_kind = direction.split("->")
    source, truth = seed(src_kind, tmp_path)
    target = other_side(dst_kind, tmp_path)
    mid = f"live-{src_kind[0]}{dst_kind[0]}-{int(kill_router)}-{tmp_path.name}"
    # The rollback window is held open until the test's rollback has ended, then lasts
    # WINDOW_AFTER_ROLLBACK_S more (the writer writing): before, a fixed 6 s window had to
    # outlast the rollback on a loaded machine, and was waited out whole.
    cfg = live_config(tmp_path, mid, source, target,
                      rollback={"window_s": WINDOW_AFTER_ROLLBACK_S})
    rolled_back = threading.Event()
    window = driver.hold_rollback_window

    def held(m: Migration) -> None:
        rolled_back.wait(240)
        window(m)

    monkeypatch.setattr(driver, "hold_rollback_window", held)
    started = threading.Event()
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(
        report=run_migration(cfg, release_stores=False, on_started=lambda m: started.set())))
    runner.start()
    assert started.wait(120), "the migration did not start"
    coll = RoutedCollection.connect(mid)
    writer = Writer(coll, truth)
    writer.start()
    mismatches: list[str] = []
    seen_phases: set[str] = set()

    def check_search() -> None:  # in still moments between two writes, in whatever phase
        rng = np.random.default_rng(3)
        while not writer.stop.is_set():
            with writer.lock:
                seen_phases.update(phases().values())
                bad = search_mismatch(coll, truth, rng)
            if bad:
                mismatches.append(bad)
            time.sleep(0.2)

    searcher = threading.Thread(target=check_search, daemon=True)
    searcher.start()

    def phases() -> dict[str, str]:
        return {u["unit_id"]: u["phase"] for u in coll.router.call("status")["units"]}

    deadline = time.monotonic() + 240
    killed = False
    try:
        while time.monotonic() < deadline and set(phases().values()) != {"target"}:
            if kill_router and not killed and "copying" in phases().values():
                ray.kill(coll.router.actor, no_restart=False)
                killed = True
            time.sleep(0.05)
        assert set(phases().values()) == {"target"}, phases()
        assert killed or not kill_router
        # Inside the rollback window: flip one unit back while the writer goes on.
        back = Migration(cfg, command="rollback")
        back.start(workers=False)
        res = switch_units(back, ["tenant=t1"], "rollback")
        back.close(release_stores=False)
    finally:
        rolled_back.set()
    assert res["tenant=t1"]["ok"], res
    runner.join(240)
    time.sleep(0.5)
    writer.stop.set()
    writer.join(30)
    searcher.join(30)
    report = result["report"]
    if mismatches:
        pytest.fail("search differs from brute force:\n" + "\n".join(mismatches[:3]))
    # Search was checked while units moved (copying lasts a fraction of a second per unit,
    # so any phase before ready counts), while they waited, and after cutover.
    assert seen_phases & {"capturing", "copying", "catching_up"}, seen_phases
    assert {"ready", "target"} <= seen_phases, seen_phases
    rows = {u.unit_id: u for u in report.units}
    assert writer.errors == [], writer.errors[:3]
    assert writer.ops > 100, f"the writer made only {writer.ops} operations"
    assert {rows[u].phase for u in rows if u != "tenant=t1"} == {"done"}, report.to_table()
    assert rows["tenant=t1"].phase == "rolled_back"
    assert all(r.equal for r in rows.values()), report.to_table()
    release_local_stores(cfg)
    try:
        check(read_side(target), truth, {"t0", "t2", "t3"}, "target")
        check(read_side(source), truth, {"t1"}, "source after rollback")
    except AssertionError:  # what the writer did to each id, to trace a loss
        import json

        (tmp_path / "history.json").write_text(json.dumps(writer.history))
        print("writer history:", tmp_path / "history.json")
        raise


def test_search_equals_brute_force_in_every_phase(ray_cluster, tmp_path):
    source, truth = seed("qdrant", tmp_path, n=200)
    target = other_side("lancedb", tmp_path)
    mid = f"search-{tmp_path.name}"
    cfg = live_config(tmp_path, mid, source, target, cutover={"mode": "manual"})
    m = Migration(cfg)
    m.start()
    try:
        coll = RoutedCollection.connect(mid)
        writer = Writer(coll, truth)
        rng = np.random.default_rng(8)

        def step(what: str) -> None:
            for _ in range(15):
                writer.one()
            for _ in range(3):
                assert search_mismatch(coll, truth, rng) is None, what

        step("all units on the source")
        fresh = {"id": 5000, "vector": [0.5] * DIM, "payload": {"tenant": "t9", "v": 1}}
        coll.upsert([fresh])  # a tenant the plan did not know: the router adds its unit
        truth[5000] = (np.asarray(fresh["vector"], np.float32).tobytes(), fresh["payload"])
        assert "tenant=t9" in {u.unit_id for u in m.new_units()}
        m.prepare_units()
        step("every unit copied, the source still owns them")
        switch_units(m, ["tenant=t0"], "cutover")
        step("one unit on the target")
        switch_units(m, None, "cutover")
        step("every unit on the target")
        owners = {u["unit_id"]: u["owner"] for u in coll.router.call("status")["units"]}
        assert set(owners.values()) == {"target"} and "tenant=t9" in owners
        switch_units(m, ["tenant=t2"], "rollback")
        step("one unit rolled back")
        assert coll.count() == sum(p is not None for p in truth.values())
        got = coll.retrieve([0, 1, 2, 10_000])
        assert [r["id"] for r in got] == [i for i in (0, 1, 2) if truth[i] is not None]
        for r in got:
            assert np.asarray(r["vector"], np.float32).tobytes() == truth[r["id"]][0]
    finally:
        m.close()


@pytest.mark.parametrize("point, message", [
    ({"id": 1, "vector": [0.0] * (DIM - 1), "payload": {"tenant": "t1"}}, "shape (7,); expected (8,)"),
    ({"id": 1, "vector": [float("nan")] * DIM, "payload": {"tenant": "t1"}}, "NaN or infinity"),
    ({"id": 1, "vector": [float("inf")] * DIM, "payload": {"tenant": "t1"}}, "NaN or infinity"),
    ({"id": "abc", "vector": [0.0] * DIM, "payload": {"tenant": "t1"}}, "unsigned integer ids"),
    ({"id": -4, "vector": [0.0] * DIM, "payload": {"tenant": "t1"}}, "ids must be in 0..2**64-1"),
    ({"id": 1, "payload": {"tenant": "t1"}}, "vector 'vector' is missing"),
    ({"id": 1, "vector": [0.0] * DIM, "payload": {"tenant": ["t1"]}}, "must hold one scalar"),
    ({"vector": [0.0] * DIM}, "must be a dict with 'id'"),
])
def test_client_refuses_bad_points_and_writes_nothing(ray_cluster, tmp_path, point, message):
    from ray_migrate.errors import InvalidDataError

    source, truth = seed("qdrant", tmp_path, n=20)
    cfg = live_config(tmp_path, f"bad-{tmp_path.name}", source, other_side("lancedb", tmp_path),
                      cutover={"mode": "manual"})
    m = Migration(cfg)
    m.start(workers=False)
    try:
        coll = RoutedCollection.connect(cfg.migration_id)
        good = {"id": 999, "vector": [1.0] * DIM, "payload": {"tenant": "t1"}}
        with pytest.raises(InvalidDataError, match=re.escape(message)):
            coll.upsert([good, point])  # one bad point: the good one is not written either
        assert coll.count() == 20
        assert coll.retrieve([999]) == []
    finally:
        m.close()


def test_followers_keep_waiting_units_caught_up(ray_cluster, tmp_path):
    """After prepare, nothing but the workers' followers applies the change logs: writes made
    while units wait for their wave (one upsert spanning every unit among them) reach the
    target on their own."""
    with prepared(tmp_path, "follow", 200) as (m, mid, source, target, truth):
        coll = RoutedCollection.connect(mid)
        assert {u["phase"] for u in coll.router.call("status")["units"]} == {"ready"}
        writer = Writer(coll, truth)
        for _ in range(40):
            writer.one()
        rng = np.random.default_rng(4)
        batch = [{"id": 900 + i, "vector": rng.standard_normal(DIM).tolist(),
                  "payload": {"tenant": TENANTS[i % 4], "v": 7}} for i in range(8)]
        coll.upsert(batch)
        for p in batch:
            truth[p["id"]] = (np.asarray(p["vector"], np.float32).tobytes(), p["payload"])
        deadline = time.monotonic() + 60
        while any(lag for _, lag, _, _ in coll.router.call("lags").values()):
            assert time.monotonic() < deadline, coll.router.call("lags")
            time.sleep(0.1)
        check(read_side(target), truth, set(TENANTS), "target while units wait")


def test_upkeep_compacts_both_sides_while_live_but_never_during_a_cutover(ray_cluster,
                                                                          tmp_path):
    import lancedb

    from ray_migrate.upkeep import LiveUpkeep

    source, truth = seed("lancedb", tmp_path, n=200)
    target = other_side("lancedb", tmp_path)
    mid = f"upkeep-{tmp_path.name}"
    cfg = live_config(tmp_path, mid, source, target, cutover={"mode": "manual"},
                      lance={"compact_min_fragments": 16, "compact_source": True})
    unasked = live_config(tmp_path, mid, source, target, lance={"compact_min_fragments": 16})
    assert LiveUpkeep(SimpleNamespace(cfg=unasked))._sides() == ["target"], \
        "a source is altered only when asked"
    m = Migration(cfg)
    m.start()
    try:
        m.prepare_units()
        for side in (target, source):
            tbl = lancedb.connect(side["uri"]).open_table(side["table"])
            rows = tbl.to_arrow()
            for i in range(0, 40 * 5, 5):  # 40 small rewrites of the same rows: 40 fragments
                tbl.merge_insert("id").when_matched_update_all() \
                    .when_not_matched_insert_all().execute(rows.slice(i, 5))

        def fragments(side: dict) -> int:
            return lancedb.connect(side["uri"]).open_table(side["table"]).stats()[
                "fragment_stats"]["num_fragments"]

        def versions(side: dict) -> int:
            return len(lancedb.connect(side["uri"]).open_table(side["table"]).list_versions())

        piled = {"target": fragments(target), "source": fragments(source)}
        assert min(piled.values()) >= 40
        source_versions = versions(source)
        m.router.call("reserve", "tenant=t0", "a-cutover")  # a cutover is about to run
        with LiveUpkeep(m, every_s=0.1) as upkeep:
            time.sleep(1.0)
            assert upkeep.compactions == [] and fragments(target) >= piled["target"]
            m.router.call("release", "tenant=t0", "a-cutover")
            deadline = time.monotonic() + 30
            while fragments(target) >= 16 or fragments(source) >= 16:
                assert time.monotonic() < deadline, "the sides were not compacted"
                time.sleep(0.1)
        assert {c["side"] for c in upkeep.compactions} == {"source", "target"}
        assert all(c["fragments_before"] >= 16 for c in upkeep.compactions)
        assert versions(source) > source_versions, "the source's old versions are kept"
        check(read_side(target), truth, set(TENANTS), "target after compaction")
        check(read_side(source), truth, set(TENANTS), "source after compaction")
    finally:
        m.close()


def test_a_write_spanning_units_waits_for_a_frozen_one_then_writes_all(ray_cluster, tmp_path):
    """One upsert over two units, one of them frozen: nothing is written while the freeze
    lasts (up to WHOLE_WAIT_S), then both land together; a freeze longer than that lets the
    unfrozen unit's point land alone, and the frozen unit's after its freeze. The call returns
    once both have landed."""
    from truth import read_lance

    from ray_migrate.client_leases import WHOLE_WAIT_S

    with prepared(tmp_path, "span", 40) as (m, mid, source, target, truth):
        coll = RoutedCollection.connect(mid)

        def point(pid: int, tenant: str) -> dict:
            return {"id": pid, "vector": [pid / 1000] * DIM, "payload": {"tenant": tenant}}

        def start(points: list[dict]) -> tuple[threading.Event, list[BaseException]]:
            done, errors = threading.Event(), []

            def upsert() -> None:
                try:
                    coll.upsert(points)
                except BaseException as err:  # noqa: BLE001 - checked below
                    errors.append(err)
                done.set()

            threading.Thread(target=upsert, daemon=True).start()
            return done, errors

        # A short freeze: the write waits whole, then both points land.
        coll.router.call("set_phase", "tenant=t1", "frozen")
        done, errors = start([point(501, "t1"), point(502, "t2")])
        time.sleep(min(0.4, WHOLE_WAIT_S / 2))
        assert not {501, 502} & set(read_lance(source["uri"], "docs")), "written in a freeze"
        assert not done.is_set()
        coll.router.call("set_phase", "tenant=t1", "ready")
        assert done.wait(20) and not errors, errors
        assert {501, 502} <= set(read_lance(source["uri"], "docs"))

        # A long freeze: after WHOLE_WAIT_S the unfrozen unit's point goes alone.
        coll.router.call("set_phase", "tenant=t1", "frozen")
        began = time.monotonic()
        done, errors = start([point(503, "t1"), point(504, "t2")])
        deadline = began + 20
        while 504 not in read_lance(source["uri"], "docs"):
            assert time.monotonic() < deadline, "the unfrozen unit's point never landed"
            time.sleep(0.05)
        assert time.monotonic() - began >= WHOLE_WAIT_S * 0.9
        assert 503 not in read_lance(source["uri"], "docs"), "the frozen unit was written"
        assert not done.is_set(), "the call returned before the frozen unit's write"
        coll.router.call("set_phase", "tenant=t1", "ready")
        assert done.wait(20) and not errors, errors
        found = read_lance(source["uri"], "docs")
        assert {503, 504} <= set(found) and found[503][1] == {"tenant": "t1"}
        # Captured: the followers bring all four to the target.
        deadline = time.monotonic() + 30
        while not {501, 502, 503, 504} <= set(read_lance(target["uri"], "docs")):
            assert time.monotonic() < deadline, "not captured, or never applied"
            time.sleep(0.1)


class Gated:
    """The real backend, whose upserts wait at a gate: a client write kept under way."""

    def __init__(self, real: Any):
        self.real, self.entered, self.gate = real, threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def upsert(self, table: pa.Table) -> Any:
        self.entered.set()
        assert self.gate.wait(60), "the gate was never opened"
        return self.real.upsert(table)


def test_cutover_fences_a_write_under_way_instead_of_waiting_for_it(ray_cluster, tmp_path):
    """A write that has its lease but has not landed yet does not hold the freeze: the unit
    flips while the write is stuck. Once it lands on the old owner, the client is told the
    owner changed and writes the point again to the new one before it returns."""
    from truth import read_lance

    from ray_migrate.worker import UnitWorker

    with prepared(tmp_path, "fence", 40, write_lease_s=60.0) as (m, mid, source, target,
                                                                 truth):
        coll = RoutedCollection.connect(mid)
        gated = coll.backends["source"] = Gated(coll.backends["source"])
        point = {"id": 601, "vector": [0.125] * DIM, "payload": {"tenant": "t1", "v": 3}}
        done = threading.Event()
        errors: list[BaseException] = []

        def upsert() -> None:
            try:
                coll.upsert([point])
            except BaseException as err:  # noqa: BLE001 - checked below
                errors.append(err)
            done.set()

        threading.Thread(target=upsert, daemon=True).start()
        assert gated.entered.wait(20), "the write never reached the source"
        unit = next(u for u in m.units() if u.unit_id == "tenant=t1")
        res = UnitWorker(m.cfg, m.plan.to_dict()).cutover(unit.to_dict())
        assert res["ok"], res
        assert not done.is_set(), "the cutover waited for the write under way"
        assert coll.router.call("unit", "tenant=t1")["owner"] == "target"
        gated.gate.set()
        assert done.wait(30) and not errors, errors

        def both_hold_it() -> None:
            for where, ep in (("target", target), ("source", source)):
                found = read_lance(ep["uri"], "docs")
                assert 601 in found, f"{where} lacks the point"
                vec = np.asarray(point["vector"], np.float32).tobytes()
                assert found[601][0]["vector"] == vec and found[601][1] == point["payload"]

        # At once: the fenced write's entry was held until its retry ended, so the back-sync
        # (the workers' followers) never read the target before the retry landed there.
        both_hold_it()
        deadline = time.monotonic() + 30
        while 601 in coll.router.call("peek_changes", "tenant=t1"):
            assert time.monotonic() < deadline, "never synced back to the source"
            time.sleep(0.1)
        both_hold_it()
