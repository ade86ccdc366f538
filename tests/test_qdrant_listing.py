"""One pass lists every unit of a Qdrant local-mode source (``Backend.list_units``).

Before, each tenant unit's scan began with its own filtered pass over the whole local-mode
collection (a Python mask over every point): a copy of 8 units made 8 passes. Now the driver
starts capture for every unit, then one pass lists them all; each scan starts from that
listing. The guarantee across it: a write between the capture start and the listing, or
during the copy, is on the target exactly, and a deleted point does not come back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from test_live import DIM, TENANTS, live_config, other_side, read_side, seed

from ray_migrate.backends.base import Backend
from ray_migrate.backends.qdrant import QdrantBackend
from ray_migrate.backends.retrying import RetryingBackend
from ray_migrate.client import RoutedCollection
from ray_migrate.config import QdrantEndpoint
from ray_migrate.driver import Migration, release_local_stores
from ray_migrate.schema import CollectionInfo, VectorSpec, infer_payload_schema, make_batch
from ray_migrate.units import UnitSpec
from ray_migrate.worker import UnitWorker


# --- the listing itself, in one process ------------------------------------------------------
class CountedClient:
    """The real local-mode client; counts its scroll calls (each one a pass over every point)."""

    def __init__(self, client: Any) -> None:
        self.client, self.scrolls = client, 0

    def scroll(self, *args: Any, **kwargs: Any) -> Any:
        self.scrolls += 1
        return self.client.scroll(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


EDGE_TENANTS: list[Any] = ["a", "b", 1, True, None, "never"]


def edge_payload(i: int) -> dict[str, Any]:
    """Tenant values of every shape a unit filter meets: strings, an int and a bool (1 and
    True are different tenants), arrays holding one or two tenants, null, [] and absent."""
    shapes: list[Any] = ["a", "b", 1, True, ["a", "b"], ["b", 1], None, [], {"x": "a"}, "z"]
    p: dict[str, Any] = {"v": i}
    if i % 11 != 10:
        p["tenant"] = shapes[i % 10]
    return p


def test_one_pass_lists_every_unit_as_its_own_listing_would(tmp_path):
    from qdrant_client import QdrantClient

    client = CountedClient(QdrantClient(path=str(tmp_path / "q")))
    b = QdrantBackend(QdrantEndpoint(kind="qdrant", path=str(tmp_path / "q"), collection="c"),
                      client=client)
    payloads = [edge_payload(i) for i in range(230)]
    info = CollectionInfo("c", (VectorSpec("vector", 4, "dot"),), "int",
                          payload_schema=infer_payload_schema(payloads), unnamed_vector=True)
    b.create(info)
    vecs = np.arange(230 * 4, dtype=np.float32).reshape(230, 4)
    b.upsert(make_batch(info, list(range(230)), {"vector": vecs}, payloads))
    units = [UnitSpec(f"tenant={v}", "tenant", field="tenant", value=v) for v in EDGE_TENANTS]
    units += [UnitSpec("ids", "id_range", lo=50, hi=120), UnitSpec("all", "all")]
    alone = {u.unit_id: b._scans.list_unit(u) for u in units}  # each unit's own pass

    client.scrolls = 0
    token = b.list_units(units)
    assert client.scrolls == 2  # one pass for the tenant field, one for ids (ranges, all)
    for u in units:
        scanned = [i for t, _ in b.scan(u, 7, {"listing": token}) for i in t.column("id")
                   .to_pylist()]
        assert scanned == alone[u.unit_id], u.unit_id
    assert client.scrolls == 2, "a scan from the listing listed its unit again"
    assert b._scans._listings == {}, "finished scans keep their lists"


# --- the guarantee across the listing, with the router and the hosting actor ---------------
class AfterFirstBatch(RetryingBackend):
    """The real source; ``hook(unit)`` runs after a unit's first batch, before its next page
    is read: writes that land in the middle of the copy."""

    def __init__(self, inner: Backend, hook: Any) -> None:
        super().__init__(inner)
        self.hook = hook

    def scan(self, unit: UnitSpec, batch_size: int, cursor: Any = None) -> Iterator[Any]:
        for k, item in enumerate(super().scan(unit, batch_size, cursor)):
            yield item
            if k == 0:
                self.hook(unit)


def point(pid: int, tenant: str, v: int) -> dict[str, Any]:
    return {"id": pid, "vector": [float(pid % 7 + v)] * DIM,
            "payload": {"tenant": tenant, "v": v}}


def test_writes_around_the_one_pass_listing_land_on_the_target_exactly(ray_cluster, tmp_path):
    source, truth = seed("qdrant", tmp_path, n=200)  # ids 0..199, tenant TENANTS[i % 4]
    mid = f"listing-{tmp_path.name}"
    cfg = live_config(tmp_path, mid, source, other_side("lancedb", tmp_path),
                      cutover={"mode": "manual"}, verify={"enabled": False})  # no repair
    m = Migration(cfg)
    m.start(workers=False)
    coll = RoutedCollection.connect(mid)
    want = dict(truth)  # id -> (vector bytes, payload)

    def write(points: list[dict[str, Any]], deleted: list[int]) -> None:
        coll.upsert(points)
        coll.delete(deleted)
        for p in points:
            want[p["id"]] = (np.asarray(p["vector"], np.float32).tobytes(), p["payload"])
        for pid in deleted:
            want.pop(pid, None)

    try:
        units = m.units()
        listed = m.capture_for_copy(units)
        assert sorted(u.unit_id for u in listed) == sorted(u.unit_id for u in units)
        # Between the capture start and the listing: a new point, a delete, an update.
        write([point(1001, "t1", 1), point(4, "t0", 1)], deleted=[2])
        token = m.list_source(listed)
        assert token is not None
        # After the listing, before any copy starts: in no list, so only capture brings it.
        write([point(1002, "t2", 1)], deleted=[6])

        def during_copy(unit: UnitSpec) -> None:  # after the unit's first batch of 40
            t = TENANTS.index(unit.value)
            # new; an update not yet read; a delete of a point read already, and of one not
            write([point(2000 + t, unit.value, 2), point(180 + t, unit.value, 2)],
                  deleted=[t, 160 + t])

        worker = UnitWorker(cfg, m.plan.to_dict())
        worker._source = AfterFirstBatch(worker.source, during_copy)
        for u in units:
            assert worker.prepare(u.to_dict(), listing=token)["status"] == "copied"
            worker.catch_up(u.to_dict(), timeout_s=30)
        assert all(row["lag"] == 0 for row in m.router.call("status")["units"])
    finally:
        coll.close()
        m.close()
        release_local_stores(cfg)
    got = read_side(cfg.target.model_dump())
    assert set(got) == set(want), (f"missing {sorted(set(want) - set(got))}, "
                                   f"back from the dead {sorted(set(got) - set(want))}")
    for pid, (vec, payload) in want.items():
        assert got[pid] == (vec, payload), pid
