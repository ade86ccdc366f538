"""A killed worker resumes from its checkpoint; bad input is refused before anything is written."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from truth import assert_same, make_points, read_qdrant, seed_lance_native, seed_qdrant

from ray_migrate.config import parse_config
from ray_migrate.driver import run_migration
from ray_migrate.errors import (
    ConfigError,
    IncompatibleTargetError,
    InvalidDataError,
    UnsupportedError,
)
from ray_migrate.state import StateStore


def config(root, mid, source, target, **extra):
    return parse_config({
        "migration_id": mid, "source": source, "target": target,
        "units": extra.pop("units", {"by": "id_range", "count": 1}),
        "copy": extra.pop("copy", {"batch_size": 50, "workers": 1}), "cutover": {"pause_s": 0},
        "state_uri": str(root / "state"), **extra})


def test_killed_worker_resumes_from_its_checkpoint_without_duplicates(ray_cluster, tmp_path):
    import ray

    truth = seed_lance_native(str(tmp_path / "src"), "docs", list(range(2500)))
    src = {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"}
    dst = {"kind": "qdrant", "path": str(tmp_path / "dst"), "collection": "docs"}
    cfg = config(tmp_path, "resume", src, dst)  # writes to Qdrant local: slow enough to kill
    store = StateStore(cfg.state_uri, cfg.migration_id)
    result = {}
    runner = threading.Thread(target=lambda: result.update(report=run_migration(cfg)))
    runner.start()
    deadline = time.monotonic() + 120
    copied = 0
    while time.monotonic() < deadline:
        ckpt = store.load_checkpoint("range-0000") or {}
        copied = ckpt.get("copied", 0)
        if copied >= 500:
            break
        time.sleep(0.02)
    assert 500 <= copied < 2500, f"could not catch the copy in the middle ({copied})"
    ray.kill(ray.get_actor("rm:resume:worker:0", namespace="ray_migrate"), no_restart=False)
    runner.join(180)
    report = result["report"]
    assert report.ok, report.to_table()
    row = report.units[0]
    assert row.copied == 2500
    assert row.copied_now < 2500, "the restarted worker must resume, not start over"
    assert_same(read_qdrant(dst["path"], "docs"), truth)


def test_target_with_other_dimension_is_refused_and_nothing_written(ray_cluster, tmp_path):
    import lancedb

    truth = make_points(20)
    src = {"kind": "qdrant", "path": str(tmp_path / "src"), "collection": "docs"}
    seed_qdrant(src["path"], "docs", truth)
    seed_lance_native(str(tmp_path / "dst"), "docs", [1, 2], dim=5)
    dst = {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"}
    with pytest.raises(IncompatibleTargetError) as exc:
        run_migration(config(tmp_path, "dim", src, dst))
    assert "text" in str(exc.value)
    assert lancedb.connect(dst["uri"]).open_table("docs").count_rows() == 2
    assert not (tmp_path / "state" / "dim" / "plan.json").exists()


@pytest.mark.parametrize("change, expected", [
    ({"size": 9}, "dimension"),
    ({"distance": "Cosine"}, "distance"),
    ({"name": "other"}, "text"),
])
def test_qdrant_target_mismatch_is_refused(ray_cluster, tmp_path, change, expected):
    from qdrant_client import QdrantClient, models

    truth = make_points(10)
    src = {"kind": "qdrant", "path": str(tmp_path / "src"), "collection": "docs"}
    seed_qdrant(src["path"], "docs", truth)
    client = QdrantClient(path=str(tmp_path / "dst"))
    vectors = {"text": models.VectorParams(size=8, distance=models.Distance.DOT),
               "image": models.VectorParams(size=4, distance=models.Distance.EUCLID)}
    name = change.get("name", "text")
    vectors.pop("text")
    vectors[name] = models.VectorParams(size=change.get("size", 8),
                                        distance=change.get("distance", "Dot"))
    client.create_collection("docs", vectors_config=vectors)
    client.close()
    dst = {"kind": "qdrant", "path": str(tmp_path / "dst"), "collection": "docs"}
    with pytest.raises(IncompatibleTargetError, match=expected):
        run_migration(config(tmp_path, "qmis", src, dst))
    assert read_qdrant(dst["path"], "docs") == {}


def test_incompatible_payload_column_type_is_refused(ray_cluster, tmp_path):
    import lancedb
    import pyarrow as pa

    truth = make_points(10)
    src = {"kind": "qdrant", "path": str(tmp_path / "src"), "collection": "docs"}
    seed_qdrant(src["path"], "docs", truth)
    dst = {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"}
    cfg = config(tmp_path, "coltype", src, dst)
    run_migration(cfg)  # creates the table with ray_migrate's layout
    db = lancedb.connect(dst["uri"])
    tbl = db.open_table("docs")
    schema = tbl.schema
    i = schema.get_field_index("rank")
    bad = schema.set(i, pa.field("rank", pa.string()))
    db.drop_table("docs")
    db.create_table("docs", schema=bad)
    with pytest.raises(IncompatibleTargetError, match="rank"):
        run_migration(config(tmp_path, "coltype2", src, dst))
    assert db.open_table("docs").count_rows() == 0


def test_ids_the_target_cannot_hold_are_refused_naming_the_id(ray_cluster, tmp_path):
    src = {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"}
    dst = {"kind": "qdrant", "path": str(tmp_path / "dst"), "collection": "docs"}
    # Seen in the plan's sample: refused before the target exists.
    seed_lance_native(src["uri"], "docs", [5, -3, 7])
    with pytest.raises(InvalidDataError, match="id -3 is negative"):
        run_migration(config(tmp_path, "negid", src, dst))
    assert not (tmp_path / "dst").exists()
    # Past the sample: the unit fails, naming the id, and its batch is not written.
    src["table"] = "late"
    seed_lance_native(src["uri"], "late", [*range(200), -3])
    report = run_migration(config(tmp_path, "negid2", src, dst, copy={"batch_size": 100,
                                                                     "workers": 1}))
    (row,) = report.units
    assert not report.ok and row.status == "failed" and "id -3" in row.error, row.error
    assert set(read_qdrant(dst["path"], "docs")) == set(range(200))


def test_nan_vector_fails_its_unit_and_its_batch_is_not_written(ray_cluster, tmp_path):
    truth = seed_lance_native(str(tmp_path / "src"), "docs", list(range(40)))
    src = {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"}
    dst = {"kind": "qdrant", "path": str(tmp_path / "dst"), "collection": "docs"}
    report = run_migration(config(tmp_path, "nan", src, dst, units={"by": "id_range", "count": 2},
                                  copy={"batch_size": 10, "workers": 2},
                                  transform={"function": "rm_test_transforms:poison_13"}))
    assert not report.ok
    failed = [u for u in report.units if u.status == "failed"]
    assert len(failed) == 1 and "point 13" in failed[0].error and "NaN" in failed[0].error
    found = read_qdrant(dst["path"], "docs")
    assert found and 13 not in found and set(found) <= set(truth)
    assert set(range(10, 20)).isdisjoint(found), "the batch holding the NaN point is not written"


def test_function_transform_with_declared_inverse(ray_cluster, tmp_path):
    truth = seed_lance_native(str(tmp_path / "src"), "docs", list(range(30)))
    src = {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"}
    dst = {"kind": "qdrant", "path": str(tmp_path / "dst"), "collection": "docs"}
    report = run_migration(config(tmp_path, "fn", src, dst, transform={
        "function": "rm_test_transforms:scale_up",
        "inverse_function": "rm_test_transforms:scale_down"}))
    assert report.ok and not report.warnings, report.to_table()
    doubled = {pid: {"vectors": {"vector": p["vectors"]["vector"] * np.float32(2)},
                     "payload": p["payload"]} for pid, p in truth.items()}
    assert_same(read_qdrant(dst["path"], "docs"), doubled)


def test_sparse_vector_source_is_refused_before_anything_is_written(ray_cluster, tmp_path):
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path / "src"))
    client.create_collection(
        "docs", vectors_config={"d": models.VectorParams(size=2, distance="Dot")},
        sparse_vectors_config={"s": models.SparseVectorParams()})
    client.close()
    src = {"kind": "qdrant", "path": str(tmp_path / "src"), "collection": "docs"}
    dst = {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"}
    with pytest.raises(UnsupportedError, match="sparse"):
        run_migration(config(tmp_path, "sparse", src, dst))
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").iterdir())


def test_tenant_field_absent_everywhere_is_a_config_error(ray_cluster, tmp_path):
    seed_qdrant(str(tmp_path / "src"), "docs", make_points(10))
    src = {"kind": "qdrant", "path": str(tmp_path / "src"), "collection": "docs"}
    dst = {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"}
    with pytest.raises(ConfigError, match="units.field: no point of the source has the "
                                          "payload field 'org'"):
        run_migration(config(tmp_path, "nofield", src, dst,
                             units={"by": "tenant", "field": "org"}))
    assert not (tmp_path / "dst").exists()


def test_changed_config_on_resume_is_refused(ray_cluster, tmp_path):
    seed_qdrant(str(tmp_path / "src"), "docs", make_points(10))
    src = {"kind": "qdrant", "path": str(tmp_path / "src"), "collection": "docs"}
    dst = {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"}
    assert run_migration(config(tmp_path, "chg", src, dst)).ok
    with pytest.raises(ConfigError, match="the config changed since migration 'chg'"):
        run_migration(config(tmp_path, "chg", src, dst, units={"by": "id_range", "count": 2}))


def test_id_ranges_of_plain_string_ids_into_qdrant_are_refused(ray_cluster, tmp_path):
    import lancedb
    import pyarrow as pa

    lancedb.connect(str(tmp_path / "src")).create_table("docs", pa.table({
        "id": ["a", "b", "c"],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array([0.5] * 12, pa.float32()), 4)}))
    src = {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"}
    dst = {"kind": "qdrant", "path": str(tmp_path / "dst"), "collection": "docs"}
    with pytest.raises(ConfigError, match="id_range cannot split string ids"):
        run_migration(config(tmp_path, "strids", src, dst, units={"by": "id_range", "count": 2}))
    assert not (tmp_path / "dst").exists()
