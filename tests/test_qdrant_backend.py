"""QdrantBackend against real qdrant-client local mode, and its Ray hosting actor."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from ray_migrate.backends.qdrant import QdrantBackend
from ray_migrate.backends.qdrant_convert import ORIGINAL_ID_KEY, physical_id
from ray_migrate.checksum import digest_of
from ray_migrate.config import QdrantEndpoint
from ray_migrate.errors import (
    IncompatibleTargetError,
    InvalidDataError,
    TerminalError,
    UnsupportedError,
)
from ray_migrate.schema import CollectionInfo, VectorSpec, make_batch, payload_dicts
from ray_migrate.units import UnitSpec

ALL = UnitSpec("all", "all")


def endpoint(tmp_path, name="c") -> QdrantEndpoint:
    return QdrantEndpoint(kind="qdrant", collection=name, path=str(tmp_path / "q"))


def info_of(id_type="int", vectors=(("vector", 4, "dot"),), unnamed=True) -> CollectionInfo:
    return CollectionInfo("c", tuple(VectorSpec(*v) for v in vectors), id_type,
                          unnamed_vector=unnamed)


def batch(info: CollectionInfo, ids, payloads=None, seed=0):
    rng = np.random.default_rng(seed)
    vecs = {v.name: rng.standard_normal((len(ids), v.dim)).astype(np.float32)
            for v in info.vectors}
    return make_batch(info, ids, vecs, payloads or [{"i": i} for i in range(len(ids))])


def scan_all(b, unit=ALL, size=1000):
    return [t for t, _ in b.scan(unit, size)]


def rows(tables):
    """id -> (vectors bytes, payload text) of canonical tables."""
    out = {}
    for t in tables:
        d = t.to_pydict()
        vec_names = [c for c in t.column_names if c not in ("id", "payload")]
        for i, pid in enumerate(d["id"]):
            assert pid not in out, f"duplicate id {pid!r}"
            vecs = tuple(np.asarray(d[n][i], np.float32).tobytes() for n in vec_names)
            out[pid] = (vecs, d["payload"][i])
    return out


@pytest.fixture
def qb(tmp_path):
    backends = []

    def make(info=None, name="c"):
        b = QdrantBackend(endpoint(tmp_path, name), client=backends[0].client if backends else None)
        if info is not None:
            b.create(info)
        backends.append(b)
        return b

    yield make
    for b in backends:
        b.close()


def test_physical_id_mapping():
    u = str(uuid.uuid4())
    assert physical_id(7) == 7 and physical_id(2**64 - 1) == 2**64 - 1
    assert physical_id(u) == u
    for s in ("doc-1", u.upper(), "42", ""):
        p = physical_id(s)
        assert p != s and str(uuid.UUID(p)) == p and physical_id(s) == p
    for bad in (-1, 2**64):
        with pytest.raises(InvalidDataError, match=str(bad)):
            physical_id(bad)


def test_int_ids_unnamed_roundtrip_and_describe(qb):
    info = info_of()
    b = qb(info)
    ids = [*range(19), 2**64 - 1]
    src = batch(info, ids, [{"i": i, "s": f"v{i}"} for i in range(20)])
    b.upsert(src)
    got = scan_all(b)
    assert rows(got) == rows([src])
    assert digest_of(got).hexdigest == digest_of([src]).hexdigest
    d = b.describe()
    assert d.unnamed_vector and d.vectors == (VectorSpec("vector", 4, "dot"),)
    assert (d.id_type, d.count, d.payload_schema) == ("int", 20, {"i": "int", "s": "string"})


def test_string_and_uuid_ids_named_vectors(qb):
    info = info_of("str", (("text", 3, "l2"), ("image", 5, "manhattan")), unnamed=False)
    b = qb(info)
    uuids = [str(uuid.uuid4()) for _ in range(3)]
    ids = uuids + ["doc-1", "doc-2", "Ünïcode id", uuids[0].upper()]
    src = batch(info, ids)
    b.upsert(src)
    assert rows(scan_all(b)) == rows([src])
    raw = {r.id: r.payload for r in b.client.scroll("c", limit=100)[0]}
    assert raw[physical_id("doc-1")][ORIGINAL_ID_KEY] == "doc-1"
    assert ORIGINAL_ID_KEY not in raw[uuids[0]]
    d = b.describe()
    assert not d.unnamed_vector and d.id_type == "str" and "_rm_id" not in d.payload_schema
    assert {v.name: v.distance for v in d.vectors} == {"text": "l2", "image": "manhattan"}
    assert rows([b.fetch(["doc-2", uuids[1], "missing"])]) == rows([src.take([1, 4])])


def test_payload_edge_cases_roundtrip_exactly(qb):
    info = info_of()
    b = qb(info)
    payloads = [
        {},
        {"a": None},
        {"nested": {"x": [1, {"y": "z"}], "e": {}}, "list": [1, "two", None, 3.5, True]},
        {"text": "日本語 ☃ 🚀", "esc": "quote\" back\\slash\nnl"},
        {"big": 2**62, "u64max": 2**64 - 1, "i64min": -(2**63)},
        {"t": True, "f": False, "zero": 0, "one": 1},
        {"fl": 1.0, "neg": -0.0, "tiny": 5e-324, "pi": 3.141592653589793, "huge": 1.7e308},
    ]
    src = batch(info, list(range(len(payloads))), payloads)
    b.upsert(src)
    got = scan_all(b)
    assert payload_dicts(got[0]) == payloads
    assert got[0].column("payload").to_pylist() == src.column("payload").to_pylist()


def test_scan_pages_and_resume(qb):
    info = info_of()
    b = qb(info)
    b.upsert(batch(info, list(range(25))))
    pages = list(b.scan(ALL, 7))
    assert [t.num_rows for t, _ in pages] == [7, 7, 7, 4]
    assert pages[-1][1] == {"done": True}
    assert list(b.scan(ALL, 7, {"done": True})) == []
    resumed = [t for t, _ in b.scan(ALL, 7, pages[1][1])]
    seen = [i for t, _ in pages[:2] for i in t.column("id").to_pylist()]
    seen += [i for t in resumed for i in t.column("id").to_pylist()]
    assert sorted(seen) == list(range(25)) and len(seen) == 25
    table, cur = b.scan_page(ALL, 30)
    assert table.num_rows == 25 and cur is None


def test_tenant_units(qb):
    info = info_of()
    b = qb(info)
    payloads = [{"t": "a"}] * 4 + [{"t": "b"}] * 3 + [{"t": None}] * 2 + [{}] * 2 + [{"t": 5}]
    b.upsert(batch(info, list(range(len(payloads))), payloads))
    counts = b.tenant_counts("t")
    assert counts == {"a": 4, "b": 3, None: 4, 5: 1}
    seen = []
    for value, n in counts.items():
        unit = UnitSpec(f"t={value}", "tenant", field="t", value=value)
        assert b.count(unit) == n
        got = [i for t, _ in b.scan(unit, 2) for i in t.column("id").to_pylist()]
        assert len(got) == n
        seen += got
    assert sorted(seen) == list(range(len(payloads)))
    b.upsert(batch(info, [100], [{"t": ["a", "b"]}]))
    with pytest.raises(TerminalError, match="units.field 't' must hold one"):
        b.tenant_counts("t")


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_id_ranges_cover_everything_once(qb, id_type):
    info = info_of(id_type)
    b = qb(info)
    ids = list(range(0, 300, 7)) if id_type == "int" else [f"k{i}" for i in range(43)]
    b.upsert(batch(info, ids))
    bounds = b.id_boundaries(5)
    assert len(bounds) == 4 and bounds == sorted(bounds)
    edges = [None, *bounds, None]
    seen = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        unit = UnitSpec(f"{lo}", "id_range", lo=lo, hi=hi)
        got = [i for t, _ in b.scan(unit, 4) for i in t.column("id").to_pylist()]
        assert b.count(unit) == len(got) > 0
        seen += got
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)


def test_upsert_idempotent_and_delete(qb):
    info = info_of()
    b = qb(info)
    src = batch(info, list(range(10)))
    b.upsert(src)
    before = digest_of(scan_all(b))
    b.upsert(src)
    assert digest_of(scan_all(b)).to_dict() == before.to_dict()
    b.delete([1, 3, 99])
    assert sorted(rows(scan_all(b))) == [0, 2, 4, 5, 6, 7, 8, 9]
    assert b.count(ALL) == 8 and b.fetch([1]).num_rows == 0


def test_invalid_points_write_nothing(qb):
    info = info_of()
    b = qb(info)
    src = batch(info, [1, 2, 3])
    vec = src.column("vector").to_pylist()
    vec[1][2] = float("nan")
    import pyarrow as pa

    bad = src.set_column(1, src.schema.field("vector"), pa.array(vec, src.schema.field(1).type))
    with pytest.raises(InvalidDataError, match="point 2: vector 'vector' holds NaN"):
        b.upsert(bad)
    assert b.count(ALL) == 0
    with pytest.raises(InvalidDataError, match="-5"):
        b.upsert(pa.table({"id": pa.array([1, -5], pa.int64()),
                           "vector": src.column("vector").slice(0, 2),
                           "payload": ["{}", "{}"]}))
    assert b.count(ALL) == 0


def test_missing_sparse_and_multivector_collections(qb, tmp_path):
    from qdrant_client import models

    b = qb()
    with pytest.raises(TerminalError, match="'c'.*does not exist"):
        b.describe()
    b.client.create_collection(
        "c", vectors_config={"d": models.VectorParams(size=2, distance=models.Distance.DOT)},
        sparse_vectors_config={"bm25": models.SparseVectorParams()})
    with pytest.raises(UnsupportedError, match="collection c has sparse vector 'bm25': "
                       "ray_migrate moves dense vectors only"):
        b.describe()
    m = qb(name="m")
    m.client.create_collection("m", vectors_config=models.VectorParams(
        size=2, distance=models.Distance.DOT,
        multivector_config=models.MultiVectorConfig(
            comparator=models.MultiVectorComparator.MAX_SIM)))
    with pytest.raises(UnsupportedError, match="multivector"):
        m.describe()


def test_mixed_id_types_refused(qb):
    info = info_of()
    b = qb(info)
    b.upsert(batch(info, list(range(5))))
    assert b.describe(sample_size=2).id_type == "int"
    b.upsert(batch(info_of("str"), [str(uuid.uuid4())]))
    with pytest.raises(UnsupportedError, match="mixes integer and UUID point ids"):
        b.describe(sample_size=2)


def test_sdk_errors_become_transient_or_terminal():
    import httpx
    from qdrant_client.http.exceptions import UnexpectedResponse

    from ray_migrate.backends.qdrant import _sdk_error
    from ray_migrate.errors import TransientError

    assert isinstance(_sdk_error("x", httpx.ConnectTimeout("slow")), TransientError)
    assert isinstance(_sdk_error("x", httpx.ConnectError("refused")), TransientError)
    busy = UnexpectedResponse(503, "busy", b"", httpx.Headers())
    assert isinstance(_sdk_error("x", busy), TransientError)
    bad = _sdk_error("qdrant c: upsert", UnexpectedResponse(400, "bad", b"no", httpx.Headers()))
    assert type(bad) is TerminalError and "qdrant c: upsert" in str(bad)
    assert type(_sdk_error("x", ValueError("no"))) is TerminalError


def test_check_compatible(qb):
    target = info_of("int", (("a", 4, "cosine"), ("b", 2, "dot")), unnamed=False)
    b = qb(target)
    b.check_compatible(target)
    b.check_compatible(info_of("str", (("a", 4, "cosine"), ("b", 2, "dot")), unnamed=False))
    cases = {
        "no vector 'c'": (("a", 4, "cosine"), ("c", 2, "dot")),
        "vector 'a': target dimension 4, source dimension 8": (("a", 8, "cosine"), ("b", 2, "dot")),
        "vector 'b': target distance dot, source distance l2": (("a", 4, "cosine"), ("b", 2, "l2")),
        r"vector\(s\) \['b'\] that the source lacks": (("a", 4, "cosine"),),
    }
    for msg, vectors in cases.items():
        with pytest.raises(IncompatibleTargetError, match=msg):
            b.check_compatible(info_of("int", vectors, unnamed=False))


def test_cosine_stored_form_matches_what_is_read(qb, tmp_path):
    info = info_of("int", (("vector", 16, "cosine"),))
    b = qb(info)
    src = batch(info, list(range(300)), seed=3)
    src = src.set_column(1, src.schema.field(1), src.column(1))
    zero = make_batch(info, [1000], {"vector": np.zeros((1, 16), np.float32)}, [{}])
    expected = digest_of([b.stored_form(src), b.stored_form(zero)])
    assert expected.hexdigest != digest_of([src, zero]).hexdigest
    b.upsert(src)
    b.upsert(zero)
    assert digest_of(scan_all(b)).hexdigest == expected.hexdigest
    b.upsert(src)  # a replay takes qdrant-client's float64 update path; upsert undoes that
    assert digest_of(scan_all(b)).hexdigest == expected.hexdigest
    b.close()
    reopened = QdrantBackend(endpoint(tmp_path))
    try:
        assert digest_of(scan_all(reopened)).hexdigest == expected.hexdigest
    finally:
        reopened.close()


def test_search_exact_and_by_unit(qb):
    info = info_of("str", (("vector", 4, "dot"),))
    b = qb(info)
    ids = [f"p{i}" for i in range(30)]
    src = batch(info, ids, [{"t": i % 2} for i in range(30)])
    b.upsert(src)
    q = [1.0, 0.5, -0.25, 2.0]
    vecs = np.asarray(src.column("vector").to_pylist(), np.float32)
    scores = vecs @ np.asarray(q, np.float32)
    hits = b.search(q, 5, "vector")
    assert [h.id for h in hits] == [ids[i] for i in np.argsort(-scores)[:5]]
    assert hits[0].payload == {"t": int(np.argmax(scores)) % 2}
    hits = b.search(q, 50, "vector", UnitSpec("t1", "tenant", field="t", value=1))
    assert len(hits) == 15 and all(h.payload["t"] == 1 for h in hits)
    units = [UnitSpec("t7", "tenant", field="t", value=7), UnitSpec("t1", "tenant", field="t",
                                                                   value=1)]
    assert [h.id for h in b.search(q, 50, "vector", within=units)] == [h.id for h in hits]
    assert b.search(q, 5, "vector", within=[]) == []
    bounds = b.id_boundaries(2)
    rng_unit = UnitSpec("r", "id_range", lo=None, hi=bounds[0])
    in_range = {i for t, _ in b.scan(rng_unit, 100) for i in t.column("id").to_pylist()}
    assert {h.id for h in b.search(q, 50, "vector", rng_unit)} == in_range


def test_a_local_scoped_search_ranks_deeper_until_it_has_k_hits_in_scope(qb):
    info = info_of("int", (("vector", 4, "dot"),))
    b = qb(info)
    tenants = ["rare" if i % 60 == 7 else f"t{i % 3}" for i in range(600)]  # 10 rare points
    src = batch(info, list(range(600)), [{"t": t} for t in tenants], seed=3)
    b.upsert(src)
    q = [0.5, -1.0, 0.25, 1.5]
    scores = np.asarray(src.column("vector").to_pylist(), np.float32) @ np.asarray(q, np.float32)
    order = [int(i) for i in np.argsort(-scores)]
    rare = UnitSpec("rare", "tenant", field="t", value="rare")
    want = [i for i in order if tenants[i] == "rare"][:8]
    assert order.index(want[-1]) >= 64, "the 8th rare point lies deeper than the first look"
    assert [h.id for h in b.search(q, 8, "vector", rare)] == want
    assert [h.id for h in b.search(q, 8, "vector", within=[rare])] == want
    both = [UnitSpec("t1", "tenant", field="t", value="t1"), rare]
    assert [h.id for h in b.search(q, 20, "vector", within=both)] == \
        [i for i in order if tenants[i] in ("t1", "rare")][:20]
    assert len(b.search(q, 50, "vector", rare)) == 10, "every point ranked: all 10 rare ones"


def test_in_unit_agrees_with_qdrants_own_filter(qb):
    from ray_migrate.backends.qdrant_convert import in_unit, unit_filter

    info = info_of("int", (("vector", 4, "dot"),))
    b = qb(info)
    payloads = [{"t": "a"}, {"t": ["a", "b"]}, {"t": ["b"]}, {"t": None}, {"t": []}, {},
                {"t": 1}, {"t": True}, {"t": [1, 2]}, {"t": "1"}, {"n": {"t": "a"}},
                {"t": False}, {"t": 0}]
    b.upsert(batch(info, list(range(len(payloads))), payloads))
    units = [UnitSpec("u", "tenant", field=f, value=v) for f, v in (
        ("t", "a"), ("t", "b"), ("t", None), ("t", 1), ("t", True), ("t", "1"), ("n.t", "a"),
        ("t", False), ("t", 0))]
    for unit in units:
        recs, _ = b.client.scroll("c", scroll_filter=unit_filter(unit), limit=100)
        assert {r.id for r in recs} == {i for i, p in enumerate(payloads)
                                        if in_unit(unit, i, p)}, unit


def test_hosted_qdrant_shares_one_actor(ray_cluster, tmp_path):
    from qdrant_client import QdrantClient

    from ray_migrate.backends.qdrant_host import (
        HOSTED_WRITE_ROWS,
        actor_name,
        hosted_qdrant,
        release_hosted_qdrant,
    )

    ray = ray_cluster
    ep = endpoint(tmp_path)
    first = hosted_qdrant(ep)
    second = hosted_qdrant(ep)
    try:
        assert first.kind == "qdrant" and not first.capabilities.parallel_writes
        actor = ray.get_actor(actor_name(ep.path), namespace="ray_migrate")
        assert first.actor._actor_id == second.actor._actor_id == actor._actor_id
        info = info_of()
        first.create(info)
        src = batch(info, list(range(12)))
        second.upsert(src)
        assert first.count(ALL) == 12
        calls: list[int] = []
        forward = second._call

        def counted(method: str, *args):
            if method == "upsert":
                calls.append(args[0].num_rows)
            return forward(method, *args)

        second._call = counted
        big = batch(info, list(range(100, 100 + 2 * HOSTED_WRITE_ROWS + 3)))
        second.upsert(big)
        assert calls == [HOSTED_WRITE_ROWS, HOSTED_WRITE_ROWS, 3], \
            "a large write goes in calls of HOSTED_WRITE_ROWS, so others' calls run between"
        assert rows(t for t, _ in first.scan(ALL, 100)) == rows([src, big])
        first.delete(list(range(100, 100 + 2 * HOSTED_WRITE_ROWS + 3)))
        assert rows(t for t, _ in first.scan(ALL, 5)) == rows([src])
        assert first.checksum(ALL).hexdigest == digest_of([src]).hexdigest
        other = hosted_qdrant(endpoint(tmp_path, "other"))
        with pytest.raises(TerminalError, match="does not exist") as err:
            other.describe()
        assert type(err.value) is TerminalError
        with pytest.raises(IncompatibleTargetError, match="dimension"):
            first.check_compatible(info_of("int", (("vector", 9, "dot"),)))
    finally:
        assert release_hosted_qdrant(ep.path)
    assert not release_hosted_qdrant(ep.path)
    client = QdrantClient(path=ep.path)
    try:
        assert client.count("c").count == 12
    finally:
        client.close()
