"""Verify's source side skips the target's stored form only where that is the identity."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa

from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.config import LanceEndpoint, TransformConfig
from ray_migrate.schema import CollectionInfo, VectorSpec, make_batch
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec
from ray_migrate.verify import verify_unit

INFO = CollectionInfo("c", (VectorSpec("vector", 4, "l2"),), "int",
                      {"n": "int", "x": "float", "t": "string", "j": "json", "b": "bool"})
ALL = UnitSpec("all", "all")


def lance(tmp_path, table: str) -> LanceBackend:
    return LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "db"), table=table),
                        payload_schema=INFO.payload_schema)


def points(n: int = 30) -> pa.Table:
    vecs = np.random.default_rng(3).standard_normal((n, 4), dtype=np.float32)
    payloads = [{"n": i, "x": i / 3, "t": f"é{i}", "j": {"k": [i, None]}, "b": i % 2 == 0}
                for i in range(n)]
    payloads[0] = {"n": None}
    return make_batch(INFO, list(range(n)), {"vector": vecs}, payloads)


class Counting(LanceBackend):
    """The real backend, counting stored_form calls."""

    calls = 0

    def stored_form(self, table: pa.Table) -> pa.Table:
        Counting.calls += 1
        return super().stored_form(table)


def test_a_table_made_by_ray_migrate_keeps_canonical_batches_and_verify_skips_the_round_trip(
        tmp_path):
    src, dst = lance(tmp_path, "src"), Counting(
        LanceEndpoint(kind="lancedb", uri=str(tmp_path / "db"), table="dst"),
        payload_schema=INFO.payload_schema)
    for b in (src, dst):
        b.create(INFO)
        b.upsert(points())
    assert dst.keeps_canonical()
    for batch, _ in src.scan(ALL, 7):
        assert dst.stored_form(batch).equals(batch)  # why skipping it is sound
    Counting.calls = 0
    verdict = verify_unit(ALL, src, dst, Transform(TransformConfig()), batch_size=7)
    assert verdict.equal and verdict.source_count == 30 and Counting.calls == 0
    fn = Transform(TransformConfig())
    fn.function = lambda t: t  # a user function: its output may not be canonical
    assert verify_unit(ALL, src, dst, fn, batch_size=7).equal and Counting.calls == 5


def test_a_foreign_table_with_float32_payload_is_hashed_through_its_stored_form(tmp_path):
    db = lancedb.connect(str(tmp_path / "db"))
    db.create_table("foreign", data=pa.table({
        "id": pa.array([1, 2], pa.uint64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(8, np.float32)), 4),
        "x": pa.array([0.1, 0.2], pa.float32())}))
    foreign = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "db"),
                                         table="foreign"))
    assert not foreign.keeps_canonical()
    batch = make_batch(foreign.describe(), [1], {"vector": np.ones((1, 4), np.float32)},
                       [{"x": 0.1}])
    assert not foreign.stored_form(batch).equals(batch)  # 0.1 comes back as float32's 0.1
