"""Verify LanceDB to LanceDB in the target's own columns, without the canonical round trip.

A canonical batch carries the payload as one JSON text per row: building it costs about 3.5 us
a row in Python, on both sides, most of a verify's time (3M x 128: 20 of its 35 s). When the
copy goes column by column (``lance_direct``: identity transform, ``direct_ok`` layouts), the
target holds exactly ``relayout(source batch)``, so both sides are hashed in the target's
columns instead: the source's batches through ``relayout`` (the canonical way for the rows
it cannot take, as the copy and the live writes do), the target's as stored. Every column of
every point is still compared bit-exactly: the same multilinear hashing as ``checksum``, over
each column's Arrow buffers (vectors and numbers by their bits, strings by their bytes, null
as its own constant), under its own algorithm name so that a digest of one kind never equals
one of the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_migrate.backends.base import Backend
from ray_migrate.checksum import (
    _ID_SEED,
    _K_MISC,
    _MISC,
    ALGORITHM,
    LANES,
    U64,
    Digest,
    _constants,
    _mix,
    _name_words,
    _string_words,
    _vector_words,
    id_words,
)
from ray_migrate.schema import ID
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

LAYOUT_ALGORITHM = f"{ALGORITHM}+lance-columns"
def _const(i: int) -> np.ndarray:
    """(lanes,) constants of index 8 + i of the misc kind (``checksum`` uses 0..7)."""
    return np.array([_constants(lane, _K_MISC, 1, 8 + i)[0] for lane in range(LANES)], U64)


_C_NULL, _C_SCALAR, _C_LEN, _C_ITEM, _C_TRUE = (_const(i) for i in range(5))


def _hashable(t: pa.DataType) -> bool:
    if pa.types.is_fixed_size_list(t):
        return t.value_type == pa.float32()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t))


def hashable(schema: pa.Schema) -> bool:
    """Whether every column is of a type ``layout_hashes`` hashes."""
    return all(_hashable(f.type) for f in schema)


def _nulls(arr: pa.Array, words: np.ndarray) -> np.ndarray:
    if arr.null_count:
        words[arr.is_null().to_numpy(zero_copy_only=False)] = _C_NULL
    return words


def _string_column(arr: pa.Array) -> np.ndarray:
    sums, lens = _string_words(arr, _K_MISC)
    with np.errstate(over="ignore"):
        return _nulls(arr, _mix(sums + lens[:, None] * _C_LEN))


def _scalar_column(arr: pa.Array) -> np.ndarray:
    """Numbers by their bits (as int64 or float64, which hold every value of the narrower
    types exactly), booleans as 0 or a constant."""
    t = arr.type
    if pa.types.is_boolean(t):
        bits = np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), bool)
        words = np.where(bits[:, None], _C_TRUE, U64(0)).astype(U64)
        return _nulls(arr, words)
    if pa.types.is_floating(t):
        vals = pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    elif pa.types.is_unsigned_integer(t):
        vals = pc.fill_null(arr.cast(pa.uint64()), 0).to_numpy(zero_copy_only=False)
    else:
        vals = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    bits = np.ascontiguousarray(vals).view(U64)
    with np.errstate(over="ignore"):
        return _nulls(arr, _mix(bits[:, None] * _C_SCALAR + _C_SCALAR))


def _list_column(arr: pa.Array) -> np.ndarray:
    """A list of strings: each item's hash chained with its position, summed per row, and
    the row's length."""
    n = len(arr)
    items = pc.list_flatten(arr)
    rows = np.asarray(pc.list_parent_indices(arr).to_numpy(zero_copy_only=False), np.int64)
    lens = np.asarray(pc.fill_null(pc.list_value_length(arr), 0).to_numpy(
        zero_copy_only=False), np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(len(items), dtype=np.int64) - np.repeat(starts, lens)
    with np.errstate(over="ignore"):
        item = _mix(_string_column(items) + pos.astype(U64)[:, None] * _C_ITEM)
        out = np.zeros((n, LANES), U64)
        for lane in range(LANES):
            np.add.at(out[:, lane], rows, item[:, lane])
        out = _mix(out + lens.astype(U64)[:, None] * _C_LEN)
    return _nulls(arr, out)


def _column_words(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        return _vector_words(arr)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _list_column(arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _string_column(arr)
    return _scalar_column(arr)


def layout_hashes(table: pa.Table) -> np.ndarray:
    """(n, lanes) uint64: each row's hash over every column, the id first, then the others
    by sorted name, each after its name's hash (``checksum.row_hashes``'s chain)."""
    with np.errstate(over="ignore"):
        h = _mix(id_words(table.column(ID)) + _MISC[:, _ID_SEED])
        for name in sorted(c for c in table.column_names if c != ID):
            h = _mix(h + _name_words(name))
            h = _mix(h + _column_words(table.column(name)))
    return h


class ColumnSides:
    """Both sides of a unit in the target's columns (see the module's doc)."""

    def __init__(self, unit: UnitSpec, direct: Any, batch_size: int):
        self.unit, self.direct, self.batch_size = unit, direct, batch_size

    def source(self) -> Iterator[pa.Table]:
        from ray_migrate.backends.lance_direct import relayout

        d = self.direct
        for batch, _ in d.scan(self.unit, self.batch_size):
            yield relayout(batch, d.src, d.dst)

    def target(self) -> Iterator[pa.Table]:
        for batch, _ in self.direct.target.scan(self.unit, self.batch_size, raw=True):
            yield batch

    @staticmethod
    def hashes(table: pa.Table) -> np.ndarray:
        return layout_hashes(table)

    @staticmethod
    def digest(tables: Iterator[pa.Table]) -> Digest:
        d = Digest(algorithm=LAYOUT_ALGORITHM)
        for t in tables:
            d.add(t, layout_hashes(t) if t.num_rows else None)
        return d


def column_sides(unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
                 batch_size: int) -> ColumnSides | None:
    """The unit's sides in the target's columns, when the copy goes column by column and
    every column is of a type hashed here; else None (the canonical verify)."""
    if not transform.is_identity or not isinstance(target, Backend) \
            or not isinstance(source, Backend):
        return None
    direct = target.direct_from(source)
    if direct is None or not hashable(pa.schema([direct.dst.schema.field(c)
                                                 for c in direct.dst.columns])):
        return None
    return ColumnSides(unit, direct, batch_size)
