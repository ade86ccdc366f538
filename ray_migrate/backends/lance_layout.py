"""How a LanceDB table's columns hold canonical batches, and the conversions both ways.

ray_migrate's own layout: ``id`` (uint64 or string), one fixed_size_list<float32> column per
vector, one column per top-level payload key (bool, int64, float64, string, or a string
holding canonical JSON for ``json`` keys) and ``_rm_null_keys`` (keys whose value is an
explicit null, with or without a column of its own; a SQL NULL otherwise means the key is
absent). The schema metadata records the
distance per vector, the payload type per column and the id type. Tables made by other tools
are read too: every column that is neither ``id`` nor a vector is a payload key.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ray_migrate.errors import (
    InvalidDataError,
    TerminalError,
    UnsupportedError,
)
from ray_migrate.schema import (
    ID,
    INT64_MAX,
    PAYLOAD,
    CollectionInfo,
    VectorSpec,
    arrow_schema,
)

log = logging.getLogger(__name__)

NULL_KEYS = "_rm_null_keys"
META = "ray_migrate."
PAYLOAD_ARROW = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(),
                 "string": pa.string(), "json": pa.string()}
_JSON = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
_dumps = json.JSONEncoder(**_JSON).encode  # one encoder: json.dumps(**kw) builds one per call


def _json_default(v: Any) -> Any:
    """Foreign tables' non-JSON Arrow values: dates as ISO text, decimals as text, bytes base64."""
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(v).decode()
    if isinstance(v, (decimal.Decimal, _dt.timedelta)):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


_dumps_foreign = json.JSONEncoder(**_JSON, default=_json_default).encode



@dataclass
class Layout:
    """How a table's columns map to the canonical format."""

    own: bool
    id_type: str  # int | str
    id_arrow: pa.DataType
    vectors: list[VectorSpec]
    var_vectors: set[str]  # variable-size list<float32> columns read as vectors
    payload: dict[str, str]  # column -> payload type
    json_text: set[str]  # columns holding canonical JSON text
    schema: pa.Schema
    has_null_keys: bool
    unnamed: bool = False
    columns: list[str] = field(default_factory=list)

    def canonical_info(self, name: str, count: int = 0) -> CollectionInfo:
        return CollectionInfo(name=name, vectors=tuple(self.vectors), id_type=self.id_type,
                              payload_schema=dict(sorted(self.payload.items())), count=count,
                              unnamed_vector=self.unnamed)


def _arrow_payload_type(t: pa.DataType) -> str:
    if pa.types.is_boolean(t) or (pa.types.is_integer(t) and t != pa.uint64()):
        return "bool" if pa.types.is_boolean(t) else "int"  # uint64 may exceed int64: json
    if pa.types.is_floating(t):
        return "float"
    return "string" if pa.types.is_string(t) or pa.types.is_large_string(t) else "json"


def table_layout(schema: pa.Schema, distance: str | None, sample: Any) -> Layout:
    """``sample(column)`` returns a few rows of a column (used for variable-size lists)."""
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    own = META + "payload_types" in meta
    if ID not in schema.names:
        raise TerminalError(f"the table has no {ID!r} column; ray_migrate needs an {ID!r} column "
                            f"(int or string) to identify points (columns: {schema.names})")
    id_t = schema.field(ID).type
    if pa.types.is_integer(id_t):
        id_type = "int"
    elif pa.types.is_string(id_t) or pa.types.is_large_string(id_t):
        id_type = "str"
    else:
        raise UnsupportedError(f"column {ID!r} has type {id_t}; ids must be integers or strings")
    vectors, var, payload = [], set(), {}
    for f in schema:
        if f.name in (ID, NULL_KEYS):
            continue
        key = META + "distance." + f.name
        t = f.type
        fixed = pa.types.is_fixed_size_list(t)
        if fixed and pa.types.is_floating(t.value_type) or key in meta:
            if not fixed or t.value_type != pa.float32():
                raise UnsupportedError(f"vector column {f.name!r} has type {t}; only "
                                       "fixed_size_list<float32> vectors are supported (cast it)")
            vectors.append(VectorSpec(f.name, t.list_size, meta.get(key) or distance or "l2"))
        elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and t.value_type in (
                pa.float32(), pa.float16()):
            lens = set(pc.list_value_length(sample(f.name)).drop_null().to_pylist())
            if t.value_type != pa.float32() or len(lens) != 1:
                raise UnsupportedError(
                    f"column {f.name!r} is a variable-size list of {t.value_type} with lengths "
                    f"{sorted(lens)[:5]}; vectors must be fixed_size_list<float32> of one dimension")
            var.add(f.name)
            vectors.append(VectorSpec(f.name, lens.pop(), distance or "l2"))
        else:
            payload[f.name] = _arrow_payload_type(t)
    json_text: set[str] = set()
    if own:
        declared = json.loads(meta[META + "payload_types"])
        # The metadata may only narrow a string column to json; the Arrow type is the truth.
        json_text = {k for k, v in declared.items() if v == "json" and payload.get(k) == "string"}
        payload.update({k: "json" for k in json_text})
    unnamed = meta.get(META + "unnamed_vector", str([v.name for v in vectors] == ["vector"]))
    lay = Layout(own=own, id_type=meta.get(META + "id_type", id_type), id_arrow=id_t,
                  vectors=vectors, var_vectors=var, payload=payload, json_text=json_text,
                  schema=schema, has_null_keys=NULL_KEYS in schema.names, unnamed=unnamed == "True")
    lay.columns = [ID, *(v.name for v in vectors), *payload, *([NULL_KEYS] * lay.has_null_keys)]
    return lay


def _bad_value(col: list, check: Any) -> int | None:
    return next((i for i, v in enumerate(col) if v is not None and not check(v)), None)


_CHECKS = {
    "bool": lambda v: v.__class__ is bool,
    "int": lambda v: v.__class__ is int and -(2**63) <= v <= INT64_MAX,
    "float": lambda v: v.__class__ is float,
    "string": lambda v: v.__class__ is str,
}


def to_layout(table: pa.Table, lay: Layout) -> pa.Table:
    """Explode a canonical batch into the table's columns (the write path)."""
    n = table.num_rows
    ids = table.column(ID)
    if lay.id_type == "int" and pa.types.is_signed_integer(lay.id_arrow) and n:
        big = pc.greater(ids, INT64_MAX)
        if pc.any(big).as_py():
            pid = ids.filter(big)[0].as_py()
            raise InvalidDataError(f"point id {pid} does not fit the table's {lay.id_arrow} "
                                   f"{ID!r} column; write to a table with uint64 ids")
    arrays: dict[str, Any] = {ID: ids.cast(lay.id_arrow)}
    for v in lay.vectors:
        col = table.column(v.name)
        arrays[v.name] = col.cast(lay.schema.field(v.name).type) if v.name in lay.var_vectors \
            else col
    cols: dict[str, list] = {k: [None] * n for k in lay.payload}
    nulls: list[list[str] | None] = [None] * n
    loads, get = json.loads, cols.get
    for i, s in enumerate(table.column(PAYLOAD).to_pylist()):
        if not s or s == "{}":
            continue
        for k, val in loads(s).items():
            c = get(k)
            if c is None and not (val is None and lay.has_null_keys):
                raise InvalidDataError(
                    f"point {ids[i].as_py()!r}: payload key {k!r} has no column in the LanceDB "
                    f"table; declare it in payload_schema (for example payload_schema: "
                    f"{{{k}: json}}) before the target is created, or add the column")
            if val is not None:
                c[i] = val  # an explicit null needs no column: its key is in NULL_KEYS
            elif nulls[i] is None:
                nulls[i] = [k]
            else:
                nulls[i].append(k)
    for k, kind in lay.payload.items():
        c = cols[k]
        if kind == "json":
            if k in lay.json_text or lay.schema.field(k).type in (pa.string(), pa.large_string()):
                c = [None if v is None else _dumps(v) for v in c]
        else:
            bad = _bad_value(c, _CHECKS[kind])
            if bad is not None:
                raise InvalidDataError(
                    f"point {ids[bad].as_py()!r}: payload key {k!r} holds {c[bad]!r}, which does "
                    f"not fit its {kind} column; declare payload_schema: {{{k}: json}} to keep "
                    "mixed or out-of-range values exactly")
        arrays[k] = pa.array(c, lay.schema.field(k).type)
    if lay.has_null_keys:
        arrays[NULL_KEYS] = pa.array(nulls, lay.schema.field(NULL_KEYS).type)
    elif any(nulls):
        i = next(i for i, x in enumerate(nulls) if x)
        raise InvalidDataError(f"point {ids[i].as_py()!r}: payload key {nulls[i][0]!r} is an "
                               f"explicit null, which this table (no {NULL_KEYS!r} column) cannot "
                               "keep; write to a table created by ray_migrate")
    return pa.table([arrays[c] for c in lay.columns], schema=pa.schema(
        [lay.schema.field(c) for c in lay.columns]))


def to_canonical(batch: pa.Table | pa.RecordBatch, lay: Layout) -> pa.Table:
    """Rebuild canonical rows (id, vectors, payload JSON) from the table's columns."""
    n = batch.num_rows
    ids = batch.column(ID)
    if lay.id_type == "int":
        if pa.types.is_signed_integer(ids.type) and n:
            neg = pc.less(ids, 0)
            if pc.any(neg).as_py():
                raise InvalidDataError(f"id {ids.filter(neg)[0].as_py()} is negative; ray_migrate "
                                       "ids are unsigned 64-bit integers (or strings)")
        ids = ids.cast(pa.uint64())
    else:
        ids = ids.cast(pa.string())
    out: list[Any] = [ids]
    for v in lay.vectors:
        col = batch.column(v.name)
        if col.null_count:
            i = pc.index(pc.is_null(col), True).as_py()
            raise InvalidDataError(f"point {ids[i].as_py()!r}: vector {v.name!r} is null")
        if v.name in lay.var_vectors:
            try:
                col = col.cast(pa.list_(pa.float32(), v.dim))
            except (pa.ArrowInvalid, ValueError) as err:
                raise InvalidDataError(f"column {v.name!r} holds vectors whose length is not "
                                       f"{v.dim}: {err}") from None
        out.append(col)
    keys = sorted(lay.payload)
    vals = [(k, batch.column(k).to_pylist(), k in lay.json_text) for k in keys
            if batch.column(k).null_count < n]
    nulls = batch.column(NULL_KEYS).to_pylist() if lay.has_null_keys else [None] * n
    dumps = _dumps if lay.own else _dumps_foreign
    loads = json.loads
    texts = []
    for i in range(n):
        d = {}
        for k, col, js in vals:
            x = col[i]
            if x is not None:
                d[k] = loads(x) if js else x
        nk = nulls[i]
        if nk:
            for k in nk:
                d[k] = None
        try:
            texts.append(dumps(d) if d else "{}")
        except (ValueError, TypeError) as err:
            raise InvalidDataError(f"point {ids[i].as_py()!r}: payload cannot be JSON ({err}); "
                                   "NaN/infinity and binary-like values cannot move") from None
    out.append(pa.array(texts, pa.string()))
    info = lay.canonical_info("")
    return pa.Table.from_arrays(out, schema=arrow_schema(info))

