"""LanceBackend against a real LanceDB in a temporary folder (no Ray)."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from ray_migrate.backends import open_backend
from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.config import LanceEndpoint, LanceTargetOptions
from ray_migrate.errors import IncompatibleTargetError, InvalidDataError, UnsupportedError
from ray_migrate.schema import (
    CollectionInfo,
    VectorSpec,
    canonical_json,
    make_batch,
    payload_dicts,
    vectors_to_numpy,
)
from ray_migrate.units import UnitSpec

ALL = UnitSpec("all", "all")

EDGE_PAYLOADS = [
    {},
    {"tenant": "a", "n": 2**62, "big": 2**64 - 1, "f": 1.5, "flag": True},
    {"tenant": None, "n": None, "nested": {"x": [1, {"y": None}], "é": "ü"}},
    {"tenant": "o'brien", "big": -5, "tags": ["a", "b"], "flag": False, "f": -0.0},
    {"text": "日本語 🚀 \"quoted\" \\ back", "nested": [], "tags": None},
    {"tenant": "a", "f": 1e300, "n": -(2**63)},
]
SCHEMA = {"tenant": "string", "n": "int", "big": "json", "f": "float", "flag": "bool",
          "nested": "json", "tags": "json", "text": "string"}


def ep(tmp_path, table="t", **kw) -> LanceEndpoint:
    return LanceEndpoint(kind="lancedb", uri=str(tmp_path / "db"), table=table, **kw)


def info_of(id_type="int", vectors=(("vector", 4, "l2"),), schema=None) -> CollectionInfo:
    return CollectionInfo("c", tuple(VectorSpec(*v) for v in vectors), id_type,
                          dict(schema if schema is not None else SCHEMA))


def batch(info, ids, payloads=None, seed=0):
    rng = np.random.default_rng(seed)
    vecs = {v.name: rng.standard_normal((len(ids), v.dim)).astype(np.float32) for v in info.vectors}
    return make_batch(info, ids, vecs, payloads if payloads is not None else [{}] * len(ids))


def new_backend(tmp_path, info, **kw) -> LanceBackend:
    b = LanceBackend(ep(tmp_path, **kw))
    b.create(info)
    return b


def rows(table: pa.Table) -> dict:
    """id -> (vector bytes per vector column, payload text): bit-exact comparison."""
    names = [c for c in table.column_names if c not in ("id", "payload")]
    vecs = {n: vectors_to_numpy(table.column(n)) for n in names}
    return {pid: (tuple(vecs[n][i].tobytes() for n in names), table.column("payload")[i].as_py())
            for i, pid in enumerate(table.column("id").to_pylist())}


def scan_all(b, unit=ALL, batch_size=1000) -> pa.Table:
    return pa.concat_tables([t for t, _ in b.scan(unit, batch_size)])


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_roundtrip_edge_payloads_two_vectors(tmp_path, id_type):
    info = info_of(id_type, (("dense", 8, "cosine"), ("small", 3, "l2")))
    b = new_backend(tmp_path, info)
    ids = list(range(1, 7)) if id_type == "int" else [f"id-{i}" for i in range(6)]
    if id_type == "int":
        ids[-1] = 2**64 - 1
    src = batch(info, ids, EDGE_PAYLOADS)
    b.upsert(src)
    got = scan_all(b, batch_size=4)
    assert rows(got) == rows(src)
    assert sorted(payload_dicts(got), key=canonical_json) == sorted(EDGE_PAYLOADS, key=canonical_json)
    d = b.describe()
    assert d.id_type == id_type and d.count == 6 and d.payload_schema == dict(sorted(SCHEMA.items()))
    assert d.vectors == info.vectors
    assert rows(b.fetch([ids[1], ids[3], "nope" if id_type == "str" else 999])) == {
        k: v for k, v in rows(src).items() if k in (ids[1], ids[3])}


def test_scan_resume_pinned_version(tmp_path):
    info = info_of(schema={"tenant": "string"})
    b = new_backend(tmp_path, info)
    b.upsert(batch(info, list(range(500)), [{"tenant": "x"}] * 500))
    b.upsert(batch(info, list(range(500, 1000)), [{"tenant": "x"}] * 500, seed=1))
    expected = rows(scan_all(b))
    it = b.scan(ALL, 150)
    first = [next(it) for _ in range(3)]
    cursor = first[-1][1]
    assert cursor["rows"] == 450 and all(t.num_rows == 150 for t, _ in first)
    # Writes after the pin: new rows, changed rows, deleted rows. The resumed scan ignores them.
    b.upsert(batch(info, list(range(900, 1100)), [{"tenant": "y"}] * 200, seed=2))
    b.delete(list(range(0, 1000, 3)))
    resumed = list(LanceBackend(ep(tmp_path)).scan(ALL, 150, cursor))
    assert [t.num_rows for t, _ in resumed] == [150, 150, 150, 100]
    assert resumed[-1][1] == {"version": cursor["version"], "rows": 1000}
    got = [t for t, _ in first] + [t for t, _ in resumed]
    ids = [i for t in got for i in t.column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == 1000
    assert rows(pa.concat_tables(got)) == expected
    # A filtered unit resumes the same way (the order at a pinned version is deterministic).
    unit = UnitSpec("u", "tenant", field="tenant", value="x")
    full = [t for t, _ in b.scan(unit, 70)]
    cur = next(c for i, (_, c) in enumerate(b.scan(unit, 70)) if i == 4)
    rest = [t for t, _ in b.scan(unit, 70, cur)]
    assert pa.concat_tables(full[5:]).equals(pa.concat_tables(rest))


def test_tenant_and_id_range_units(tmp_path):
    info = info_of(schema={"tenant": "string", "n": "int"})
    b = new_backend(tmp_path, info)
    tenants = ["a", "o'brien", None, "b"]
    payloads = [{"tenant": tenants[i % 4], "n": i} if i % 8 != 6 else {"n": i} for i in range(400)]
    b.upsert(batch(info, list(range(400)), payloads))
    counts = b.tenant_counts("tenant")
    assert counts == {"a": 100, "o'brien": 100, "b": 100, None: 100}
    for value, c in counts.items():
        unit = UnitSpec("u", "tenant", field="tenant", value=value)
        assert b.count(unit) == c
        got = payload_dicts(scan_all(b, unit, 64))
        assert len(got) == c and all(p.get("tenant") == value for p in got)
    bounds = b.id_boundaries(7)
    assert bounds == sorted(set(bounds)) and 0 < len(bounds) <= 6
    edges = [None, *bounds, None]
    seen = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        unit = UnitSpec("r", "id_range", lo=lo, hi=hi)
        part = scan_all(b, unit, 50).column("id").to_pylist()
        assert all(unit.contains_id(i) for i in part) and b.count(unit) == len(part)
        seen += part
    assert sorted(seen) == list(range(400))


def test_tenant_on_json_column_refused(tmp_path):
    b = new_backend(tmp_path, info_of(schema={"tags": "json"}))
    with pytest.raises(UnsupportedError, match="'tags' is a json column"):
        b.tenant_counts("tags")


def test_upsert_idempotent_and_delete(tmp_path):
    info = info_of(schema={"n": "int"})
    b = new_backend(tmp_path, info)
    src = batch(info, list(range(50)), [{"n": i} for i in range(50)])
    b.upsert(src)
    b.upsert(src)
    assert b.tbl.count_rows() == 50 and b.count(ALL) == 50
    b.delete([0, 1, 2, 999])
    assert b.count(ALL) == 47 and b.fetch([0, 1, 3]).column("id").to_pylist() == [3]


def test_nan_vector_and_bad_values_refused(tmp_path):
    info = info_of(schema={"n": "int"})
    b = new_backend(tmp_path, info)
    b.upsert(batch(info, [1, 2]))
    bad = batch(info, [3, 4])
    vec = vectors_to_numpy(bad.column("vector")).copy()
    vec[1, 2] = np.nan
    bad = make_batch(info, [3, 4], {"vector": vec}, [{}, {}])
    with pytest.raises(InvalidDataError, match="point 4"):
        b.upsert(bad)
    with pytest.raises(InvalidDataError, match=r"'n'.*payload_schema: \{n: json\}"):
        b.upsert(batch(info, [5], [{"n": "text"}]))
    with pytest.raises(InvalidDataError, match="'n'"):
        b.upsert(batch(info, [6], [{"n": 2**63}]))
    with pytest.raises(InvalidDataError, match="'surprise'.*payload_schema"):
        b.upsert(batch(info, [7], [{"surprise": 1}]))
    assert b.count(ALL) == 2


def test_an_explicit_null_needs_no_column_but_a_value_does(tmp_path):
    """A key first seen as a null is kept in _rm_null_keys and read back as null;
    check_writable refuses what upsert would, writing nothing."""
    info = info_of(schema={"n": "int"})
    b = new_backend(tmp_path, info)
    src = batch(info, [1, 2, 3], [{"fresh": None}, {"n": None, "fresh": None}, {"n": 4}])
    b.check_writable(src)
    b.upsert(src)
    assert rows(b.fetch([1, 2, 3])) == rows(src)
    assert payload_dicts(b.fetch([1]))[0] == {"fresh": None}
    for bad, key in (([{"fresh": 1}], "'fresh'.*no column"), ([{"n": "x"}], "'n' holds 'x'")):
        with pytest.raises(InvalidDataError, match=key):
            b.check_writable(batch(info, [9], bad))
    assert b.count(ALL) == 3


def test_declared_schema_overrides_inferred(tmp_path):
    info = info_of(schema={"n": "int"})
    b = LanceBackend(ep(tmp_path), payload_schema={"n": "json", "extra": "string"})
    b.create(info)
    src = batch(info, [1, 2], [{"n": 2**64 - 1, "extra": "x"}, {"n": "mixed"}])
    b.upsert(src)
    assert rows(scan_all(b)) == rows(src)
    assert b.describe().payload_schema == {"extra": "string", "n": "json"}


def test_foreign_table_readable(tmp_path):
    db = lancedb.connect(str(tmp_path / "db"))
    data = pa.table({
        "id": pa.array([10, 20, 30], pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 2),
        "tags": pa.array([["a"], [], None], pa.list_(pa.string())),
        "price": pa.array([1.5, None, 3.0]),
        "info": pa.array([{"k": 1}, {"k": None}, None], pa.struct([("k", pa.int64())])),
    })
    db.create_table("foreign", data)
    b = LanceBackend(ep(tmp_path, table="foreign"))
    d = b.describe()
    assert d.id_type == "int" and d.vectors == (VectorSpec("vector", 2, "l2"),) and d.count == 3
    assert d.payload_schema == {"info": "json", "price": "float", "tags": "json"}
    got = scan_all(b, batch_size=2)
    assert got.column("id").to_pylist() == [10, 20, 30]
    assert payload_dicts(got) == [{"tags": ["a"], "price": 1.5, "info": {"k": 1}},
                                  {"tags": [], "info": {"k": None}}, {"price": 3.0}]
    assert vectors_to_numpy(got.column("vector")).tobytes() == np.arange(6, dtype=np.float32).tobytes()
    assert LanceBackend(ep(tmp_path, table="foreign", distance="cosine")).describe(
    ).vectors[0].distance == "cosine"
    db.create_table("noid", pa.table({"key": [1]}))
    with pytest.raises(Exception, match="'id' column"):
        LanceBackend(ep(tmp_path, table="noid")).describe()
    db.create_table("neg", pa.table({"id": pa.array([-1], pa.int64())}))
    with pytest.raises(InvalidDataError, match="-1"):
        scan_all(LanceBackend(ep(tmp_path, table="neg")))
    db.create_table("f64", pa.table({"id": [1], "emb": pa.array([[1.0, 2.0]],
                                                                 pa.list_(pa.float64(), 2))}))
    with pytest.raises(UnsupportedError, match="'emb'"):
        LanceBackend(ep(tmp_path, table="f64")).describe()
    db.create_table("varvec", pa.table({"id": ["a", "b"], "emb": pa.array(
        [[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())), "note": ["x", None]}))
    var = LanceBackend(ep(tmp_path, table="varvec"))
    assert var.describe().vectors == (VectorSpec("emb", 2, "l2"),)
    assert payload_dicts(scan_all(var)) == [{"note": "x"}, {}]
    with pytest.raises(Exception, match="does not exist"):
        LanceBackend(ep(tmp_path, table="missing")).describe()


def test_check_compatible(tmp_path):
    b = new_backend(tmp_path, info_of(vectors=(("vector", 4, "l2"), ("img", 2, "cosine"))))
    b.check_compatible(info_of(vectors=(("vector", 4, "l2"),)))
    cases = {
        "dimension": info_of(vectors=(("img", 3, "cosine"),)),
        "distance": info_of(vectors=(("img", 2, "dot"),)),
        "no column": info_of(vectors=(("audio", 2, "l2"),)),
    }
    for what, other in cases.items():
        with pytest.raises(IncompatibleTargetError, match=f"'{other.vectors[0].name}'.*"):
            b.check_compatible(other)
        with pytest.raises(IncompatibleTargetError, match=what):
            b.check_compatible(other)
    with pytest.raises(IncompatibleTargetError, match="str ids"):
        b.check_compatible(info_of("str"))
    with pytest.raises(IncompatibleTargetError, match="'n'"):
        b.check_compatible(info_of(schema={"n": "float"}))


def test_finalize_compacts_and_indexes(tmp_path):
    info = info_of(vectors=(("vector", 8, "cosine"),), schema={})
    b = new_backend(tmp_path, info)
    for i in range(6):
        b.upsert(batch(info, list(range(i * 60, (i + 1) * 60)), seed=i))
    before = rows(scan_all(b))
    done = b.finalize(LanceTargetOptions(compact=True, index_min_rows=300, index_type="IVF_FLAT",
                                         cleanup_older_than_s=0))
    assert done["compacted"] and done["indexed"] == ["vector"]
    assert done["fragments_after"] < done["fragments_before"]
    assert done["versions_after"] < done["versions_before"]
    kinds = sorted(i.index_type for i in b.tbl.list_indices())
    assert kinds == ["BTree", "IvfFlat"] and rows(scan_all(b)) == before
    assert done["id_index"], "the id index made with the empty table now holds every row"
    assert {i.index_type: (i.num_indexed_rows, i.num_unindexed_rows)
            for i in b.tbl.list_indices()}["BTree"] == (360, 0)
    assert LanceBackend(ep(tmp_path)).describe().vectors == info.vectors  # metadata kept
    done = b.finalize(LanceTargetOptions(compact=False, index_min_rows=10_000))
    assert not done["compacted"] and done["indexed"] == []


def test_finalize_leaves_a_table_of_large_fragments_uncompacted(tmp_path, monkeypatch):
    """A bulk load written as large fragments is not rewritten by a compaction (at 3M x 128
    it cost more than the copy); a table of small ones still is."""
    from ray_migrate.backends import lance_upkeep

    monkeypatch.setattr(lance_upkeep, "COMPACT_BELOW_MEAN_ROWS", 50)
    info = info_of(vectors=(("vector", 8, "cosine"),), schema={})
    b = new_backend(tmp_path, info)
    for i in range(3):
        b.upsert(batch(info, list(range(i * 60, (i + 1) * 60)), seed=i))
    opts = LanceTargetOptions(compact=True, index_min_rows=10_000, cleanup_older_than_s=0)
    done = b.finalize(opts)
    assert not done["compacted"] and done["fragments_after"] == done["fragments_before"] == 3
    assert done["compaction"] == "skipped: 3 fragments of 60 rows on average"
    for i in range(3, 9):
        b.upsert(batch(info, [i * 1000 + k for k in range(5)], seed=i))
    done = b.finalize(opts)  # 9 fragments of 21 rows on average: small
    assert done["compacted"] and done["fragments_after"] < done["fragments_before"]


def test_fetch_values_reads_one_field_as_fetch_would(tmp_path):
    """The tenant look-up of a client's write reads the id and one column: the same values as
    whole rows give, for plain columns (string, int, bool), JSON ones and absent ids."""
    info = info_of()
    b = new_backend(tmp_path, info)
    b.upsert(batch(info, list(range(len(EDGE_PAYLOADS))), EDGE_PAYLOADS))
    asked = [0, 1, 2, 3, 4, 5, 999]  # 999 does not exist
    whole = {pid: p for pid, p in zip(b.fetch(asked).column("id").to_pylist(),
                                      payload_dicts(b.fetch(asked)), strict=True)}
    for field in ("tenant", "n", "flag", "nested", "big", "missing"):
        got = dict(b.fetch_values(asked, field))
        assert got == {pid: p.get(field) for pid, p in whole.items()}, field
        assert 999 not in got
    # As clients open it (retried): a plain column is still read alone, not as whole rows.
    opened = open_backend(ep(tmp_path))
    opened.inner.fetch = None  # whole rows are not read
    assert dict(opened.fetch_values(asked, "tenant")) == {
        pid: p.get("tenant") for pid, p in whole.items()}


def test_live_upkeep_merges_only_the_small_fragments(tmp_path, monkeypatch):
    """While live, a compaction rewrites what the live writes added (small fragments), never
    the bulk load's large fragments, even those with rows updated since (their deletions wait
    for finalize): at 3M points a whole-table compaction every few seconds would rewrite 3M
    rows each time, and conflict with every client write."""
    from ray_migrate.backends import lance_upkeep

    monkeypatch.setattr(lance_upkeep, "COMPACT_BELOW_MEAN_ROWS", 50)
    info = info_of(vectors=(("vector", 8, "cosine"),), schema={})
    b = new_backend(tmp_path, info)
    for i in range(3):
        b.upsert(batch(info, list(range(i * 60, (i + 1) * 60)), seed=i))
    large = [f.fragment_id for f in b.tbl.to_lance().get_fragments()]
    opts = LanceTargetOptions(compact_min_fragments=8, cleanup_older_than_s=0)
    for i in range(7):  # updates of rows in the large fragments, and new points
        b.upsert(batch(info, [i, 1000 + i], seed=10 + i))
    assert b.maintain(opts) is None, "7 small fragments: not due"
    b.upsert(batch(info, [7, 1007], seed=17))
    before = rows(scan_all(b))
    done = b.maintain(opts)
    assert done is not None and done["fragments_before"] == 8 and done["fragments_after"] == 1
    frags = b.tbl.to_lance().get_fragments()
    assert [f.fragment_id for f in frags][:3] == large, "the large fragments were rewritten"
    assert len(frags) == 4 and rows(scan_all(b)) == before


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_exact_search_matches_numpy(tmp_path, distance):
    info = info_of(vectors=(("vector", 16, distance),), schema={"tenant": "string"})
    b = new_backend(tmp_path, info)
    src = batch(info, list(range(300)), [{"tenant": "ab"[i % 2]} for i in range(300)])
    b.upsert(src)
    vecs = vectors_to_numpy(src.column("vector")).astype(np.float64)
    q = np.random.default_rng(9).standard_normal(16).astype(np.float32)
    if distance == "l2":
        dist = ((vecs - q) ** 2).sum(axis=1)
    else:
        dist = 1 - vecs @ q / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(q))
    hits = b.search(q, 10, "vector")
    assert [h.id for h in hits] == list(np.argsort(dist)[:10])
    assert np.allclose([h.score for h in hits], np.sort(dist)[:10], rtol=1e-4, atol=1e-5)
    unit = UnitSpec("u", "tenant", field="tenant", value="b")
    hits = b.search(q, 5, "vector", unit)
    odd = np.arange(1, 300, 2)
    assert [h.id for h in hits] == list(odd[np.argsort(dist[odd])[:5]])
    assert all(h.payload == {"tenant": "b"} for h in hits)
    units = [UnitSpec("c", "tenant", field="tenant", value="c"), unit]  # c has no point
    assert [h.id for h in b.search(q, 5, "vector", within=units)] == [h.id for h in hits]
    assert b.search(q, 5, "vector", within=[]) == [], "within no unit: nothing"


def test_stored_form_is_what_fetch_returns(tmp_path):
    """What a change-log applier uses in place of a read (a client's own rows) must be what
    the table gives back: same schema, same vectors, same payloads (the typed columns refuse
    what they cannot hold exactly, so nothing is coerced on the way)."""
    info = info_of()
    b = new_backend(tmp_path, info)
    b.upsert(batch(info, [1, 2, 3, 4, 5, 6], EDGE_PAYLOADS))
    written = batch(info, [2, 5], [{"tenant": "b", "f": -0.0, "n": 3, "big": 2**64 - 1},
                                   {"text": "x", "flag": True, "nested": {"é": [None]}}], seed=4)
    b.upsert(written)
    stored, fetched = b.stored_form(written), b.fetch([2, 5])
    assert stored.schema == fetched.schema
    assert rows(stored) == rows(fetched)


def test_update_in_place_replaces_only_points_that_keep_their_tenant(tmp_path):
    """P2b: a row replaces the point of its id only where the stored point is in the row's
    tenant; an absent id is not inserted and a point of another tenant (or of none) is left
    as it was; True only when every row replaced one. Read with LanceDB's own client."""
    info = info_of(schema={"tenant": "string", "n": "int", "tags": "json"})
    b = new_backend(tmp_path, info)
    b.upsert(batch(info, [1, 2, 3], [{"tenant": "a", "n": 0}, {"tenant": "b", "n": 0},
                                     {"tenant": None, "n": 0}]))

    def stored() -> dict[int, tuple[bytes, str | None, int]]:
        t = lancedb.connect(str(tmp_path / "db")).open_table("t").to_arrow()
        vecs = vectors_to_numpy(t.column("vector"))
        return {pid: (vecs[i].tobytes(), t.column("tenant")[i].as_py(), t.column("n")[i].as_py())
                for i, pid in enumerate(t.column("id").to_pylist())}

    before = stored()
    same = batch(info, [1], [{"tenant": "a", "n": 1}], seed=1)
    assert b.update_in_place(same, "tenant") is True
    after = stored()
    assert after[1] == (vectors_to_numpy(same.column("vector"))[0].tobytes(), "a", 1)
    assert {k: after[k] for k in (2, 3)} == {k: before[k] for k in (2, 3)}
    # 1 stays in a (replaced); 2 is b's, 3 has no tenant and 4 is absent: none of them is
    # written, and the call says so.
    mixed = batch(info, [1, 2, 3, 4], [{"tenant": "a", "n": 2}, {"tenant": "a", "n": 2},
                                       {"tenant": "a", "n": 2}, {"tenant": "a", "n": 2}], seed=2)
    assert b.update_in_place(mixed, "tenant") is False
    last = stored()
    assert set(last) == {1, 2, 3} and last[1][1:] == ("a", 2)
    assert {k: last[k] for k in (2, 3)} == {k: before[k] for k in (2, 3)}
    # A field held in the JSON column cannot be compared: the caller must look up.
    assert b.update_in_place(batch(info, [1], [{"tenant": "a", "tags": [1]}]), "tags") is None
    assert stored() == last
