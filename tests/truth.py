"""Test-side truth: seed sources and read targets with the engines' own clients only.

Nothing here imports ray_migrate: what a migration wrote is read back independently and
compared point by point with what the test itself recorded, or, for a live writer in another
process (tests/mp_workload.py), with its ops log replayed in order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

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


def lance_rows(uri: str, table: str, storage_options: dict[str, str] | None = None
               ) -> Iterator[tuple[Any, Point]]:
    """Every row as (id, (vectors, payload)), rebuilt from ray_migrate's documented layout: a
    column per payload key, json columns as text, ``_rm_null_keys`` for explicit nulls, with
    or without a column of their own (NULL otherwise means absent). ``storage_options``: LanceDB's, for an object-store ``uri``."""
    import lancedb

    tbl = lancedb.connect(uri, storage_options=storage_options).open_table(table)
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
        payload.update((k, None) for k in nulls - set(payload))  # a null key without a column
        yield pid, (vecs, payload)


def read_lance(uri: str, table: str, storage_options: dict[str, str] | None = None
               ) -> dict[Any, Point]:
    return _unique(lance_rows(uri, table, storage_options))


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


# --- a writer's ops log (tests/mp_workload.py) replayed, and the stores compared with it -----
EXAMPLES = 5  # offending ids kept per kind of finding


@dataclass
class Expected:
    """Per id: ("live", vector bytes, payload), ("deleted",) or ("unknown", why)."""

    state: dict[int, tuple] = field(default_factory=dict)
    versions: dict[int, list[tuple[bytes, dict]]] = field(default_factory=dict)
    ops: int = 0
    acked: int = 0
    errors: list[str] = field(default_factory=list)
    refused: int = 0
    searches: int = 0
    bad_hits: list[str] = field(default_factory=list)
    after_run_ops: int = 0
    connected: dict[str, Any] = field(default_factory=dict)
    op_times: list[float] = field(default_factory=list)


def replay_ops(ops_log: Path, initial: dict[int, tuple[bytes, dict]], run_ended_at: float
               ) -> Expected:
    """The state every id must have: ``initial``, then the acknowledged writes of the ops log
    in the order the one sequential writer made them; an id whose last op failed (or never
    ended) is unknown. A write refused as bad input changes nothing. Search hits are checked
    against the state at the time of the search (alive, in the tenant searched)."""
    exp = Expected()
    for pid, (vec, payload) in initial.items():
        exp.state[pid] = ("live", vec, payload)
        exp.versions[pid] = [(vec, payload)]
    begins: dict[Any, dict] = {}
    for line in ops_log.read_text().splitlines():
        doc = json.loads(line)
        if doc.get("kind") == "connected":
            exp.connected = doc
        elif doc.get("phase") == "begin":
            begins[doc["i"]] = doc
        elif doc.get("phase") == "end":
            op = begins.pop(doc["i"])
            (_search if op["kind"] == "search" else _write)(exp, op, doc, run_ended_at)
    for op in begins.values():  # begun, never ended: the writer died in it
        if op["kind"] != "search":
            exp.state[op["id"]] = ("unknown", f"op {op['i']} never ended")
            exp.errors.append(f"op {op['i']} ({op['why']} of {op['id']}): never ended")
    return exp


def _write(exp: Expected, op: dict, end: dict, run_ended_at: float) -> None:
    exp.ops += 1
    exp.op_times.append(op["t"])
    exp.after_run_ops += op["t"] >= run_ended_at
    pid = op["id"]
    if not end["ok"]:
        moved = op.get("from_tenant") not in (None, op["tenant"])
        if moved and "InvalidDataError" in end["etypes"]:
            exp.refused += 1  # refused as bad input before anything was written: no change
            return
        exp.state[pid] = ("unknown", f"op {op['i']} failed")
        exp.errors.append(f"op {op['i']} ({op['why']} of {pid}, t{op['t'] - run_ended_at:+.1f}s "
                          f"from the run's end): {_oneline(end['error'])}")
        return
    exp.acked += 1
    if op["kind"] == "delete":
        exp.state[pid] = ("deleted",)
        return
    version = (bytes.fromhex(op["vec"]), op["payload"])
    exp.state[pid] = ("live", *version)
    exp.versions.setdefault(pid, []).append(version)


def _oneline(text: str, chars: int = 240) -> str:
    return " ".join(text.split())[:chars]


def _search(exp: Expected, op: dict, end: dict, run_ended_at: float) -> None:
    exp.searches += 1
    if not end["ok"]:
        exp.errors.append(f"search {op['i']} (t{op['t'] - run_ended_at:+.1f}s from the run's "
                          f"end): {_oneline(end['error'])}")
        return
    for pid, tenant in end["hits"]:
        want = exp.state.get(pid, ("never written",))
        if want[0] == "unknown":
            continue
        if tenant != op["tenant"] or want[0] != "live" or want[2]["tenant"] != op["tenant"]:
            exp.bad_hits.append(f"search {op['i']} for {op['tenant']}: hit {pid} in {tenant}, "
                                f"expected {want[0]} {want[2]['tenant'] if len(want) > 2 else ''}")


Row = tuple[bytes, dict[str, Any]]  # one stored row: vector bytes, payload


def read_side(kind: str, path: Path | str, name: str = "docs",
              storage_options: dict[str, str] | None = None) -> dict[int, list[Row]]:
    """id -> every row the store holds for it (more than one is a finding, not a crash).
    ``path``: a folder, or an object-store URI of a LanceDB database (``storage_options``)."""
    rows = qdrant_rows(str(path), name) if kind == "qdrant" \
        else lance_rows(str(path), name, storage_options)
    out: dict[int, list[Row]] = {}
    for pid, (vecs, payload) in rows:
        assert len(vecs) == 1, f"point {pid}: one vector expected, found {sorted(vecs)}"
        out.setdefault(int(pid), []).append(
            (next(iter(vecs.values())),
             {k: v for k, v in payload.items() if not k.startswith("_rm_")}))
    return out


@dataclass
class Findings:
    """Broken promises by kind, with a few examples each; ids left unknown by a failed op are
    only counted (they are excluded; the client error itself fails the test)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    unknown: int = 0

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.examples.setdefault(kind, [])) < EXAMPLES:
            self.examples[kind].append(example)


def _show(entry: tuple | None) -> str:
    if entry is None:
        return "nothing"
    vec, payload = entry[-2], entry[-1]
    return f"{payload} vec {np.frombuffer(vec, np.float32)[:2].round(4).tolist()}..."


def compare(exp: Expected, sides: dict[str, dict[int, list[Row]]], owners: dict[str, str],
            field: str = "tenant") -> Findings:
    """Each id against the rows held for it by the owner of their unit (visible rows), on
    either side; and no store holds an id twice (a copy left behind under another unit).
    ``owners``: unit id (``<field>=<value>``, units by tenant) -> "source" or "target"."""
    f = Findings()
    visible: dict[int, list[tuple[str, Row]]] = {}
    for side, points in sides.items():
        for pid, rows in points.items():
            if len(rows) > 1:
                f.add(f"id stored twice in the {side}", f"{pid}: {[_show(r) for r in rows]}")
            for row in rows:
                if owners.get(f"{field}={row[1].get(field)}", "source") == side:
                    visible.setdefault(pid, []).append((side, row))
    for pid in sorted(set(exp.state) | set(visible)):
        want = exp.state.get(pid, ("never written",))
        seen = visible.get(pid, [])
        where = {s: [_show(r) for r in sides[s].get(pid, [])] or "nothing" for s in sides}
        if want[0] == "unknown":
            f.unknown += 1
        elif want[0] != "live":
            if seen:
                f.add("resurrected" if want[0] == "deleted" else "never written, present",
                      f"{pid}: expected {want[0]}, found {where}")
        elif not seen:
            f.add("lost: missing", f"{pid}: expected {_show(want)}, found {where}")
        else:
            if len({side for side, _ in seen}) > 1:
                f.add("visible on both sides (a copy left behind)", f"{pid}: {where}")
            wrong = [row for _, row in seen if row != (want[1], want[2])]
            if wrong:
                _classify(f, pid, want, wrong[0], exp.versions.get(pid, []), where)
    return f


def _classify(f: Findings, pid: int, want: tuple, row: Row, versions: list,
              where: dict[str, Any]) -> None:
    """A visible row with another value than the last acknowledged one: an older one (stale)
    or one never acknowledged (lost, with what differs)."""
    msg = f"{pid}: expected {_show(want)}, found {where}"
    if row in versions[:-1]:
        f.add("stale (an older acknowledged value)", msg)
        return
    f.add("lost: another value", msg)
    if row[0] != want[1]:
        f.add("vector differs", msg)
    if row[1] != want[2]:
        f.add("payload differs", msg)


def write_q2l_config(tmp_path: Path, migration_id: str, **over: Any) -> Path:
    """``m.yaml`` of a migration from the Qdrant local folder ``src`` to the LanceDB table at
    ``dst`` (paths relative to ``tmp_path``, the config's folder), by tenant, with ``over``'s
    top-level keys replaced."""
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump({
        "migration_id": migration_id,
        "source": {"kind": "qdrant", "path": "src", "collection": "docs"},
        "target": {"kind": "lancedb", "uri": "dst", "table": "docs"},
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 200, "workers": 1},
        "state_uri": "state"} | over))
    return cfg
