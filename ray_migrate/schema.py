"""The one in-memory format between backends: a canonical Arrow table, and what describes it.

A canonical batch has these columns, in this order:

- ``id``: ``uint64`` when the collection's ids are integers, ``string`` otherwise (UUIDs in
  their lowercase hyphenated form, or any other string id of a LanceDB table). This is the
  *logical* id; a backend maps it to what its engine can hold and back.
- one ``fixed_size_list<float32>[dim]`` column per vector, named by the vector's name
  (``vector`` for Qdrant's unnamed vector);
- ``payload``: ``string``, the canonical JSON of the point's payload (see ``canonical_json``),
  which keeps absent keys, nulls, nested objects, lists, unicode, big integers and booleans
  exactly. Backends that store payload keys as columns (LanceDB) explode it and rebuild it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ray_migrate.errors import InvalidDataError

ID = "id"
PAYLOAD = "payload"
DEFAULT_VECTOR = "vector"
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

IdType = Literal["int", "str"]


@dataclass(frozen=True)
class VectorSpec:
    name: str
    dim: int
    distance: str  # cosine | l2 | dot | manhattan


@dataclass(frozen=True)
class CollectionInfo:
    """What a backend says about a collection; what target preparation checks against."""

    name: str
    vectors: tuple[VectorSpec, ...]
    id_type: IdType
    payload_schema: dict[str, str] = field(default_factory=dict)
    count: int = 0
    unnamed_vector: bool = False

    def vector(self, name: str) -> VectorSpec | None:
        return next((v for v in self.vectors if v.name == name), None)

    @property
    def vector_names(self) -> list[str]:
        return [v.name for v in self.vectors]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CollectionInfo:
        d = dict(d)
        d["vectors"] = tuple(VectorSpec(**v) for v in d["vectors"])
        return cls(**d)


def arrow_schema(info: CollectionInfo) -> pa.Schema:
    id_type = pa.uint64() if info.id_type == "int" else pa.string()
    fields = [pa.field(ID, id_type, nullable=False)]
    fields += [pa.field(v.name, pa.list_(pa.float32(), v.dim)) for v in info.vectors]
    fields.append(pa.field(PAYLOAD, pa.string()))
    return pa.schema(fields)


def canonical_json(obj: Any) -> str:
    """One text for one payload: sorted keys, no spaces, unicode kept, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def vectors_to_arrow(arr: np.ndarray) -> pa.FixedSizeListArray:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    n, dim = arr.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), pa.float32()), dim)


def vectors_to_numpy(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A (n, dim) float32 view of a fixed-size-list column, without a copy where possible."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        col = col.cast(pa.list_(pa.float32(), len(col[0]) if len(col) else 0))
    dim = col.type.list_size
    values = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(col), dim)


def make_batch(info: CollectionInfo, ids: Sequence[Any], vectors: dict[str, np.ndarray],
               payloads: Iterable[dict[str, Any]]) -> pa.Table:
    """Build a canonical table from ids, one (n, dim) array per vector name and payload dicts."""
    schema = arrow_schema(info)
    cols: list[pa.Array] = [pa.array(list(ids), schema.field(ID).type)]
    for v in info.vectors:
        cols.append(vectors_to_arrow(vectors[v.name]))
    cols.append(pa.array([canonical_json(p or {}) for p in payloads], pa.string()))
    return pa.Table.from_arrays(cols, schema=schema)


def payload_dicts(table: pa.Table) -> list[dict[str, Any]]:
    return [json.loads(s) for s in table.column(PAYLOAD).to_pylist()]


def empty_table(info: CollectionInfo) -> pa.Table:
    return arrow_schema(info).empty_table()


def check_vectors(table: pa.Table, info: CollectionInfo) -> None:
    """Refuse NaN, infinities and wrong dimensions, naming the point and the vector."""
    for spec in info.vectors:
        if spec.name not in table.column_names:
            raise InvalidDataError(f"vector {spec.name!r} is missing from the batch")
        col = table.column(spec.name)
        if pa.types.is_fixed_size_list(col.type) and col.type.list_size != spec.dim:
            raise InvalidDataError(
                f"vector {spec.name!r} has dimension {col.type.list_size}; the collection "
                f"expects {spec.dim}"
            )
        arr = vectors_to_numpy(col)
        if arr.shape[1] != spec.dim:
            raise InvalidDataError(
                f"vector {spec.name!r} has dimension {arr.shape[1]}; expected {spec.dim}")
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            pid = table.column(ID)[i].as_py()
            raise InvalidDataError(
                f"point {pid!r}: vector {spec.name!r} holds NaN or infinity; fix or drop it "
                "(no engine can search it)"
            )


def infer_payload_type(values: Iterable[Any]) -> str:
    """The narrowest column type that holds every non-null sample value exactly."""
    kinds = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int" if -(2**63) <= v <= INT64_MAX else "json")
        elif isinstance(v, float):
            kinds.add("float" if math.isfinite(v) else "json")
        elif isinstance(v, str):
            kinds.add("string")
        else:
            kinds.add("json")
    if len(kinds) == 1:
        return kinds.pop()
    return "json" if kinds else "string"


def infer_payload_schema(payloads: Iterable[dict[str, Any]]) -> dict[str, str]:
    seen: dict[str, list[Any]] = {}
    for p in payloads:
        for k, v in (p or {}).items():
            seen.setdefault(k, []).append(v)
    return {k: infer_payload_type(vs) for k, vs in sorted(seen.items())}
