"""Test-side truth: seed sources and read targets with the engines' own clients only.

Nothing here imports ray_migrate: what a migration wrote is read back independently and
compared point by point with what the test itself recorded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

Point = tuple[dict[str, bytes], dict[str, Any]]  # vectors as raw float32 bytes, payload
NAMED = {"text": 8, "image": 4}


def make_points(n: int, id_kind: str = "int", seed: int = 1, tenants: int = 3
                ) -> dict[Any, dict[str, Any]]:
    """Points with every payload edge case: absent keys, nulls, nesting, unicode, big ints."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        pid: Any = i * 3 + 1 if id_kind == "int" else str(uuid.UUID(int=int(rng.integers(1, 2**62)) << 64 | i))
        payload: dict[str, Any] = {"tenant": f"t{i % tenants}", "rank": i}
        if i % 2:
            payload["title"] = f"döc №{i} — 漢字 \"quoted\" \\ back"
        if i % 3 == 0:
            payload["maybe"] = None
        if i % 4 == 0:
            payload["nested"] = {"a": [1, {"b": None}], "c": {"d": True}}
        if i % 5 == 0:
            payload["tags"] = ["x", "y", i]
        payload["big"] = 2**62 + i
        if i % 7 == 0:
            payload["huge"] = 2**64 - 1
        payload["flag"] = i % 2 == 0
        payload["score"] = i / 7
        out[pid] = {"vectors": {name: rng.standard_normal(dim).astype(np.float32)
                                for name, dim in NAMED.items()},
                    "payload": payload}
    return out


def seed_qdrant(path: str, collection: str, points: dict[Any, dict[str, Any]]) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=path)
    client.create_collection(collection, vectors_config={
        "text": models.VectorParams(size=NAMED["text"], distance=models.Distance.DOT),
        "image": models.VectorParams(size=NAMED["image"], distance=models.Distance.EUCLID),
    })
    client.upsert(collection, [
        models.PointStruct(id=pid, vector={k: v.tolist() for k, v in p["vectors"].items()},
                           payload=p["payload"]) for pid, p in points.items()])
    client.close()


def seed_lance_native(uri: str, table: str, ids: list[int], dim: int = 8, seed: int = 2,
                      nan_at: int | None = None) -> dict[Any, dict[str, Any]]:
    """A table as a LanceDB user makes it: int64 ids, a ``vector`` column, plain columns."""
    import lancedb

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((len(ids), dim)).astype(np.float32)
    if nan_at is not None:
        vecs[nan_at, 0] = np.nan
    tenants = [f"t{i % 2}" for i in range(len(ids))]
    data = pa.table({
        "id": pa.array(ids, pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), dim),
        "tenant": tenants,
        "n": pa.array([i if i % 3 else None for i in range(len(ids))], pa.int64()),
    })
    lancedb.connect(uri).create_table(table, data)
    out = {}
    for i, pid in enumerate(ids):
        payload = {"tenant": tenants[i]}
        if i % 3:
            payload["n"] = i
        out[pid] = {"vectors": {"vector": vecs[i]}, "payload": payload}
    return out


def qdrant_rows(path: str, collection: str) -> Iterator[tuple[Any, Point]]:
    """Every stored point as (id, (vectors, payload)), the id from ``_rm_id`` if the target
    keeps the source's id there."""
    from qdrant_client import QdrantClient

    client = QdrantClient(path=path)
    try:
        offset = None
        while True:
            recs, offset = client.scroll(collection, limit=500, offset=offset,
                                         with_vectors=True, with_payload=True)
            for r in recs:
                payload = dict(r.payload or {})
                pid = payload.pop("_rm_id", r.id)
                vec = r.vector if isinstance(r.vector, dict) else {"vector": r.vector}
                yield pid, ({k: np.asarray(v, np.float32).tobytes() for k, v in vec.items()},
                            payload)
            if offset is None:
                return
    finally:
        client.close()


def read_qdrant(path: str, collection: str) -> dict[Any, Point]:
    return _unique(qdrant_rows(path, collection))


def _unique(rows: Iterable[tuple[Any, Point]]) -> dict[Any, Point]:
    out: dict[Any, Point] = {}
    for pid, point in rows:
        assert pid not in out, f"id {pid} appears twice"
        out[pid] = point
    return out


def lance_rows(uri: str, table: str) -> Iterator[tuple[Any, Point]]:
    """Every row as (id, (vectors, payload)), rebuilt from ray_migrate's documented layout: a
    column per payload key, json columns as text, ``_rm_null_keys`` for explicit nulls (NULL
    otherwise means absent)."""
    import lancedb

    tbl = lancedb.connect(uri).open_table(table)
    data = tbl.to_arrow()
    meta = {k.decode(): v.decode() for k, v in (data.schema.metadata or {}).items()}
    types = json.loads(meta.get("ray_migrate.payload_types", "{}"))
    vector_cols = [f.name for f in data.schema if pa.types.is_fixed_size_list(f.type)]
    for row in data.to_pylist():
        nulls = set(row.pop("_rm_null_keys", None) or [])
        pid = row.pop("id")
        vecs = {c: np.asarray(row.pop(c), np.float32).tobytes() for c in vector_cols}
        payload = {}
        for k, v in row.items():
            if v is None:
                if k in nulls:
                    payload[k] = None
                continue
            payload[k] = json.loads(v) if types.get(k) == "json" else v
        yield pid, (vecs, payload)


def read_lance(uri: str, table: str) -> dict[Any, Point]:
    return _unique(lance_rows(uri, table))


def assert_same(found: dict[Any, Point], truth: dict[Any, dict[str, Any]],
                rename_vectors: dict[str, str] | None = None) -> None:
    rename_vectors = rename_vectors or {}
    assert set(found) == set(truth), (
        f"missing {sorted(set(truth) - set(found), key=str)[:5]}, "
        f"extra {sorted(set(found) - set(truth), key=str)[:5]}")
    for pid, p in truth.items():
        vecs, payload = found[pid]
        want = {rename_vectors.get(k, k): v.tobytes() for k, v in p["vectors"].items()}
        assert vecs == want, f"point {pid}: vectors differ"
        assert payload == p["payload"], f"point {pid}: payload {payload} != {p['payload']}"
        assert json.dumps(payload, sort_keys=True) == json.dumps(p["payload"], sort_keys=True)
