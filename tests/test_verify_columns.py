"""LanceDB to LanceDB verify hashes both sides in the target's own columns (issue 15: the
canonical JSON payload cost most of a verify), and still tells every point apart bit-exactly."""

from __future__ import annotations

import threading

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from truth import read_lance

import ray_migrate.backends.lancedb as lancedb_mod
from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.backends.retrying import RetryingBackend
from ray_migrate.checksum import column_hashes as layout_hashes
from ray_migrate.config import CopyConfig, LanceEndpoint, TransformConfig
from ray_migrate.copy import copy_unit
from ray_migrate.errors import TransientError
from ray_migrate.retry import RetryPolicy
from ray_migrate.state import StateStore
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec
from ray_migrate.verify import verify_unit

N = 60
ALL = UnitSpec("all", "all")


def _foreign(n: int = N) -> pa.Table:
    """A table another tool made: nulls, narrow types, strings JSON escapes, nested values."""
    i = np.arange(n)
    tags = [None if k % 5 == 0 else ["a", f"x{k}"][: k % 3] for k in range(n)]
    tags[3] = ['say "hi"', "tab\there"]
    return pa.table({
        "id": pa.array(i, pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(np.random.default_rng(1).standard_normal(n * 4, dtype=np.float32)), 4),
        "tenant": pa.array([f"t{k % 3}" if k % 4 else None for k in range(n)]),
        "small": pa.array([k if k % 6 else None for k in range(n)], pa.int32()),
        "f32": pa.array(np.linspace(-1, 1, n, dtype=np.float32)),
        "flag": pa.array([k % 2 == 0 for k in range(n)]),
        "tags": pa.array(tags, pa.list_(pa.string())),
        "nested": pa.array([{"a": k, "b": [1.5, None]} if k % 2 else None for k in range(n)]),
    })


@pytest.fixture
def copied(tmp_path):
    """A foreign source and a target the copy made of it (fragments, one commit)."""
    lancedb.connect(str(tmp_path / "src")).create_table("docs", _foreign())
    src = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "src"), table="docs"))
    dst = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "dst"), table="docs"))
    dst.create(src.describe())
    copy_unit(ALL, src, dst, Transform(TransformConfig()), StateStore(str(tmp_path / "st"), "m"),
              CopyConfig(batch_size=16), fresh_target=True)
    return src, dst


def test_lance_to_lance_verify_reads_no_canonical_batch(copied, monkeypatch) -> None:
    src, dst = copied
    real, calls = lancedb_mod.to_canonical, []

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(lancedb_mod, "to_canonical", counted)
    verdict = verify_unit(ALL, src, dst, Transform(TransformConfig()), batch_size=16)
    assert verdict.equal and verdict.source_count == verdict.target_count == N
    assert calls == []


def test_both_sides_are_read_and_hashed_at_once(copied, monkeypatch) -> None:
    """Lance to Lance, the two sides' scans run side by side (two cores where there are):
    each side's first batch waits at a barrier for the other's, which a verify reading one
    side after the other never passes (BrokenBarrierError after 30 s)."""
    src, dst = copied
    real, both, sides = LanceBackend.scan, threading.Barrier(2, timeout=30), []

    def meets(self, unit, batch_size, cursor=None, raw=False):
        for i, item in enumerate(real(self, unit, batch_size, cursor, raw=raw)):
            if i == 0:
                sides.append(self.endpoint.uri)
                both.wait()
            yield item

    monkeypatch.setattr(LanceBackend, "scan", meets)
    verdict = verify_unit(ALL, src, dst, Transform(TransformConfig()), batch_size=16)
    assert verdict.equal and verdict.source_count == verdict.target_count == N
    assert sorted(sides) == sorted([src.endpoint.uri, dst.endpoint.uri])


def test_a_column_scan_that_breaks_is_taken_up_again(copied, monkeypatch) -> None:
    """Through the run's retrying backends, a transient error in a scan resumes it."""
    src, dst = copied
    real, broke = LanceBackend.scan, []

    def breaks_once(self, unit, batch_size, cursor=None, raw=False):
        for i, item in enumerate(real(self, unit, batch_size, cursor, raw=raw)):
            if i == 2 and not broke:
                broke.append(self.endpoint.uri)
                raise TransientError("connection reset")
            yield item

    monkeypatch.setattr(LanceBackend, "scan", breaks_once)
    policy = RetryPolicy(attempts=3, first_s=0.0, max_s=0.0)
    verdict = verify_unit(ALL, RetryingBackend(src, policy, sleep=lambda s: None),
                          RetryingBackend(dst, policy, sleep=lambda s: None),
                          Transform(TransformConfig()), batch_size=16)
    assert broke and verdict.equal and verdict.source_count == verdict.target_count == N


def test_every_kind_of_difference_is_listed_by_id(copied, tmp_path) -> None:
    src, dst = copied
    tbl = lancedb.connect(str(tmp_path / "dst")).open_table("docs")
    data = tbl.to_arrow().sort_by("id")
    vec = np.asarray(data.column("vector").to_pylist(), np.float32)
    bits = vec.view(np.uint32)
    bits[10, 3] ^= 1  # the lowest bit of one float of point 10
    changed = data.set_column(1, "vector", pa.FixedSizeListArray.from_arrays(
        pa.array(vec.ravel()), 4))
    small = changed.column("small").to_pylist()
    small[11] += 1  # a payload number of point 11
    tenant = changed.column("tenant").to_pylist()
    tenant[4] = ""  # point 4's null tenant becomes an empty string
    changed = changed.set_column(changed.schema.get_field_index("small"), "small",
                                 pa.array(small, changed.schema.field("small").type))
    changed = changed.set_column(changed.schema.get_field_index("tenant"), "tenant",
                                 pa.array(tenant, pa.string()))
    tbl.merge_insert("id").when_matched_update_all().execute(changed.take([4, 10, 11]))
    tbl.delete("id = 20")
    tbl.add(changed.take([30]).set_column(0, "id", pa.array([1000], data.schema.field("id").type)))
    assert len(read_lance(str(tmp_path / "dst"), "docs")) == N  # one gone, one more
    v = verify_unit(ALL, src, dst, Transform(TransformConfig()), batch_size=16)
    assert not v.equal
    assert (sorted(v.changed_ids), v.missing_ids, v.extra_ids) == ([4, 10, 11], [20], [1000])


def _one(**cols) -> pa.Table:
    return pa.table({"id": pa.array([1], pa.uint64()), **cols})


@pytest.mark.parametrize("a,b", [
    ({"s": pa.array([None], pa.string())}, {"s": pa.array([""])}),
    ({"n": pa.array([None], pa.int64())}, {"n": pa.array([0], pa.int64())}),
    ({"x": pa.array([0.0])}, {"x": pa.array([-0.0])}),
    ({"b": pa.array([None], pa.bool_())}, {"b": pa.array([False])}),
    ({"l": pa.array([None], pa.list_(pa.string()))}, {"l": pa.array([[]], pa.list_(pa.string()))}),
    ({"l": pa.array([["a", "b"]])}, {"l": pa.array([["b", "a"]])}),
    ({"l": pa.array([["ab"]])}, {"l": pa.array([["a", "b"]])}),
    ({"p": pa.array(["x"]), "q": pa.array(["y"])}, {"p": pa.array(["y"]), "q": pa.array(["x"])}),
    ({"v": pa.array([[0.0, 1.0]], pa.list_(pa.float32(), 2))},
     {"v": pa.array([None], pa.list_(pa.float32(), 2))}),
])
def test_column_hashes_tell_apart_what_the_canonical_form_does(a, b) -> None:
    assert (layout_hashes(_one(**a)) != layout_hashes(_one(**b))).any()
    assert (layout_hashes(_one(**a)) == layout_hashes(_one(**a))).all()


def test_an_all_null_column_hashes_as_its_nulls_among_values() -> None:
    col = pa.array([None, "a", None], pa.string())
    mixed = layout_hashes(pa.table({"id": pa.array([1, 2, 3], pa.uint64()), "s": col}))
    alone = layout_hashes(pa.table({"id": pa.array([1, 3], pa.uint64()),
                                    "s": pa.array([None, None], pa.string())}))
    assert (mixed[[0, 2]] == alone).all()


def test_column_hashes_do_not_depend_on_chunks() -> None:
    t = _foreign(20).drop_columns(["nested"])
    whole = layout_hashes(t)
    parts = np.concatenate([layout_hashes(t.slice(0, 7)), layout_hashes(t.slice(7))])
    assert (whole == parts).all()
    assert len({tuple(r) for r in whole}) == 20


def _changed_once(t: pa.Table, rng: np.random.Generator) -> tuple[pa.Table, int, str]:
    """``t`` with one value of one column of one row changed (a bit of a vector or a
    number, a byte of a string, an item of a list, a flag, a null for a value)."""
    name = str(rng.choice([c for c in t.column_names if c not in ("id", "nested")]))
    row = int(rng.integers(t.num_rows))
    values = t.column(name).to_pylist()
    v = values[row]
    if name == "vector":
        bits = np.array(v, np.float32).view(np.uint32)
        bits[rng.integers(len(bits))] ^= np.uint32(1 << int(rng.integers(32)))
        values[row] = bits.view(np.float32).tolist()
    elif v is None:
        values[row] = {"tenant": "", "small": 0, "tags": []}.get(name, 0)
    elif name == "tenant":
        values[row] = v + "\x00" if rng.integers(2) else v[:-1] + chr(ord(v[-1]) ^ 1)
    elif name == "tags":
        values[row] = v + ["a"] if rng.integers(2) or not v else v[:-1] + [v[-1] + "!"]
    elif name == "flag":
        values[row] = not v
    elif name == "f32":
        values[row] = float(np.float32(np.uint32(np.float32(v).view(np.uint32) ^ 1)
                                       .view(np.float32)))
    else:
        values[row] = v ^ (1 << int(rng.integers(31)))
    col = pa.array(values, t.schema.field(name).type)
    return t.set_column(t.schema.get_field_index(name), name, col), row, name


def test_one_value_changed_anywhere_changes_its_row_hash_only() -> None:
    """Seeded: any one value changed in any column (v2's single mixing step per column)
    changes that row's hash in both lanes' 128 bits and no other row's."""
    t = _foreign(40).drop_columns(["nested"])
    before = layout_hashes(t)
    for seed in range(300):
        changed, row, name = _changed_once(t, np.random.default_rng(seed))
        after = layout_hashes(changed)
        diff = np.flatnonzero((after != before).any(axis=1))
        assert diff.tolist() == [row], f"seed {seed}: {name} of row {row} changed {diff}"
