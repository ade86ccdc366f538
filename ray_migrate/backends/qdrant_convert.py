"""How Qdrant's points, filters and vector configs map to canonical batches, and back.

Ids: an int id is the Qdrant id as is (0 .. 2**64-1). A string id that is a canonical UUID
(lowercase, hyphenated) is the Qdrant id as is; any other string becomes ``uuid5(NAMESPACE, s)``
and the original is kept in the payload key ``_rm_id`` (removed again on read). Qdrant scrolls
ints numerically before UUIDs, UUIDs as text (``scroll_order``).

Vectors: one column per named vector; an unnamed vector is the ``DEFAULT_VECTOR`` column.
Cosine vectors are stored normalized; ``cosine_normalized`` gives a batch in that stored form.
Tenant units are payload filters (``unit_filter``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ray_migrate.errors import InvalidDataError, UnsupportedError
from ray_migrate.schema import (
    DEFAULT_VECTOR,
    ID,
    PAYLOAD,
    UINT64_MAX,
    CollectionInfo,
    VectorSpec,
    make_batch,
    vectors_to_numpy,
)
from ray_migrate.units import UnitSpec

NAMESPACE = uuid.UUID("5b0c6f7e-2d1a-4e0b-9a43-7f3c1d2e8a90")  # fixed forever: ids depend on it
ORIGINAL_ID_KEY = "_rm_id"
EPSILON = 1.1920929e-7  # what qdrant-client local mode compares a cosine norm against
DISTANCES = {"Cosine": "cosine", "Euclid": "l2", "Dot": "dot", "Manhattan": "manhattan"}


# --- ids ------------------------------------------------------------------------------------
def is_canonical_uuid(s: str) -> bool:
    try:
        return str(uuid.UUID(s)) == s
    except (ValueError, TypeError, AttributeError):
        return False


def physical_id(logical: Any) -> int | str:
    """The Qdrant point id that holds logical id ``logical``."""
    if isinstance(logical, bool) or not isinstance(logical, (int, str)):
        raise InvalidDataError(f"point id {logical!r} is neither an integer nor a string")
    if isinstance(logical, int):
        if not 0 <= logical <= UINT64_MAX:
            raise InvalidDataError(
                f"point id {logical} is out of range: Qdrant integer ids are 0 .. 2**64-1")
        return logical
    return logical if is_canonical_uuid(logical) else str(uuid.uuid5(NAMESPACE, logical))


def logical_id(pid: int | str, payload: dict[str, Any]) -> Any:
    """The logical id of a point; pops ``_rm_id`` from ``payload`` when it maps to ``pid``."""
    orig = payload.get(ORIGINAL_ID_KEY)
    if isinstance(orig, str) and isinstance(pid, str) and physical_id(orig) == pid:
        del payload[ORIGINAL_ID_KEY]
        return orig
    return pid


def scroll_order(pid: int | str) -> tuple[int, Any]:
    """Qdrant's scroll order: integer ids numerically, then UUIDs as text."""
    return (0, pid) if isinstance(pid, int) else (1, pid)


# --- vector configs -------------------------------------------------------------------------
def enum_value(x: Any) -> str:
    return getattr(x, "value", x)


def vector_specs(params: dict[str, Any]) -> tuple[VectorSpec, ...]:
    """The canonical vectors of ``params`` (column name -> Qdrant VectorParams)."""
    return tuple(VectorSpec(n, int(p.size), DISTANCES[enum_value(p.distance)])
                 for n, p in params.items())


def vectors_config(info: CollectionInfo) -> Any:
    """The ``vectors_config`` that creates a Qdrant collection holding ``info``'s vectors."""
    from qdrant_client import models

    inverse = {v: k for k, v in DISTANCES.items()}

    def params(v: VectorSpec) -> Any:
        return models.VectorParams(size=v.dim, distance=models.Distance(inverse[v.distance]))

    if info.unnamed_vector and len(info.vectors) == 1:
        return params(info.vectors[0])
    return {v.name: params(v) for v in info.vectors}


# --- payloads and filters -------------------------------------------------------------------
def payload_value(payload: dict[str, Any], key: str) -> Any:
    """The value at ``key`` (dots go into nested objects), None if absent."""
    if key in payload:
        return payload[key]
    cur: Any = payload
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def unit_filter(unit: UnitSpec | None) -> Any:
    """The Qdrant filter of a tenant unit; None for no unit or an id-range unit."""
    from qdrant_client import models

    if unit is None or unit.kind != "tenant":
        return None
    if unit.value is None:
        return models.Filter(must=[models.IsEmptyCondition(
            is_empty=models.PayloadField(key=unit.field))])
    return models.Filter(must=[models.FieldCondition(
        key=unit.field, match=models.MatchValue(value=unit.value))])


def in_unit(unit: UnitSpec, point_id: Any, payload: dict[str, Any]) -> bool:
    """Whether a point (its physical id and payload) belongs to ``unit``, as Qdrant evaluates
    ``unit_filter`` (MatchValue: the value, or an array holding it, of the same type; IsEmpty:
    absent, null or []) or an id range (scroll order, ``lo`` included, ``hi`` not)."""
    if unit.kind == "all":
        return True
    if unit.kind == "id_range":
        key = scroll_order(point_id)
        return ((unit.lo is None or key >= scroll_order(unit.lo))
                and (unit.hi is None or key < scroll_order(unit.hi)))
    v = payload_value(payload, unit.field or "")
    if unit.value is None:
        return v is None or v == []
    values = v if isinstance(v, list) else [v]
    return any(type(x) is type(unit.value) and x == unit.value for x in values)


# --- points to batches ----------------------------------------------------------------------
def records_table(name: str, recs: Sequence[Any], params: dict[str, Any],
                  unnamed: bool) -> pa.Table:
    """The canonical batch of Qdrant records (with payloads and vectors) of collection ``name``."""
    ids, payloads = [], []
    cols: dict[str, list[Any]] = {n: [] for n in params}
    for r in recs:
        payload = dict(r.payload or {})
        ids.append(logical_id(r.id, payload))
        payloads.append(payload)
        vec = r.vector if isinstance(r.vector, dict) else {DEFAULT_VECTOR: r.vector}
        if unnamed and "" in vec:
            vec = {DEFAULT_VECTOR: vec[""]}
        for n in params:
            v = vec.get(n)
            if v is None:
                raise UnsupportedError(
                    f"point {ids[-1]!r} of {name} has no vector {n!r}; ray_migrate "
                    "needs every point to carry every vector")
            cols[n].append(v)
    info = CollectionInfo(name, vector_specs(params),
                          "str" if ids and isinstance(ids[0], str) else "int",
                          unnamed_vector=unnamed)
    vectors = {n: np.asarray(c, dtype=np.float32).reshape(len(ids), int(params[n].size))
               for n, c in cols.items()}
    return make_batch(info, ids, vectors, payloads)


# --- batches to points ----------------------------------------------------------------------
def point_ids_and_payloads(table: pa.Table) -> tuple[list[int | str], list[dict[str, Any]]]:
    """The Qdrant ids of a batch's rows and their payloads, with ``_rm_id`` where they differ."""
    logical = table.column(ID).to_pylist()
    pids = [physical_id(i) for i in logical]
    payloads = []
    for lid, pid, text in zip(logical, pids, table.column(PAYLOAD).to_pylist(), strict=True):
        p = json.loads(text) if text else {}
        p = p if isinstance(p, dict) else {}
        if pid != lid:
            if p.get(ORIGINAL_ID_KEY, lid) != lid:
                raise InvalidDataError(
                    f"point {lid!r}: payload key {ORIGINAL_ID_KEY!r} is reserved by "
                    "ray_migrate for string ids that are not UUIDs")
            p[ORIGINAL_ID_KEY] = lid
        payloads.append(p)
    return pids, payloads


def point_vectors(table: pa.Table, names: Sequence[str], unnamed: bool) -> list[Any]:
    """Each row's vectors as a Qdrant point takes them: the unnamed vector's list, or else a
    dict of the vectors ``names``."""
    vecs = {n: vectors_to_numpy(table.column(n)).tolist() for n in names}
    if unnamed:
        return vecs[DEFAULT_VECTOR]
    return [{n: vecs[n][i] for n in names} for i in range(table.num_rows)]


def cosine_normalized(table: pa.Table, params: dict[str, Any]) -> pa.Table:
    """The batch with each cosine vector in float32, ``v / np.linalg.norm(v)`` unless the norm
    is <= float32 epsilon: how local mode stores it, bit for bit."""
    for n, p in params.items():
        if enum_value(p.distance) != "Cosine" or n not in table.column_names:
            continue
        arr = vectors_to_numpy(table.column(n))
        out = np.empty_like(arr)
        for i, v in enumerate(arr):
            norm = np.linalg.norm(v)
            out[i] = v / norm if norm > EPSILON else v
        field = table.schema.field(n)
        col = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1), pa.float32()),
                                                arr.shape[1])
        table = table.set_column(table.column_names.index(n), field, col.cast(field.type))
    return table
