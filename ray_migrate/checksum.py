"""Order-independent, bit-exact content digests of canonical batches, computed column-wise.

The hash (algorithm ``ALGORITHM``) works on the canonical table's Arrow buffers with numpy
uint64 arithmetic (wrapping), never per row in Python. Each point gets two independent
64-bit lanes, each built the same way with its own constants:

- every field is reduced to one 64-bit word by a multilinear hash: the sum of its 32-bit
  words (vectors: the raw float32 bits, by position) or its bytes plus one (the id's and the
  payload's UTF-8 bytes, by position in the string) times odd constants fixed per lane, field
  kind and position. An int id is its own word; a null vector is a fixed constant whatever
  its buffer holds; a null payload counts as ``{}``;
- the row chains its fields, id first, then each vector by sorted name (the name's hash
  first), then the payload's length and bytes, through a bijective splitmix64 mixer:
  ``h = mix(h + field)``.

What it always detects: a change confined to one 32-bit word of one vector, or to one byte
of a string, changes that field's word (the difference is a power of two below 2**32 times an
odd constant, never 0 modulo 2**64), and a change of one field's word changes the row's hash
(each chain step is a bijection): so any single-bit change of one field, any change of an int
id and any change of one byte always changes the row's hash, and with it the digest and its
bucket. A null and a zero vector always differ. What is probabilistic: changes spread over
several words of one field, or over several fields, collide with probability about 2**-33 per
lane over the choice of constants (multilinear hashing; the lanes have independent
constants), and two different sets of points may sum to the same digest (the sums are
modulo 2**64 per lane). The constants come from splitmix64 of an index (not numpy's
Generator, whose streams may change between versions).

A digest keeps the count and, per lane, the sum of the rows' hashes modulo 2**64, overall and
per bucket (a bucket is picked by a hash of the id alone), so two sides compare in any order,
merge from parallel parts, and a difference is localized to the buckets that disagree.
``to_dict`` names the algorithm; a digest stored by another algorithm never equals a new one.
``column_hashes`` hashes a row in a LanceDB table's own columns with the same field hashing
(every column by its buffers, a null as its own constant) and one mixing step per column,
under ``COLUMNS_ALGORITHM`` (``verify_direct``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_migrate.schema import ID, PAYLOAD

ALGORITHM = "ml32x2-sm64-v1"  # multilinear over 32-bit words, two lanes, splitmix64 chain
N_BUCKETS = 64
LANES = 2
M64 = 2**64
U64 = np.uint64
_GOLDEN = 0x9E3779B97F4A7C15
# Field kinds: the high bits of a constant's index, so each kind has its own constants.
_K_ID_INT, _K_ID_STR, _K_VEC, _K_PAYLOAD, _K_NAME, _K_MISC = range(6)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that spreads every bit over the word."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


def _constants(lane: int, kind: int, count: int, start: int = 0) -> np.ndarray:
    """Odd constants: splitmix64 of the index (lane, kind, position)."""
    idx = np.arange(start, start + count, dtype=U64) + U64((lane << 48) | (kind << 40))
    with np.errstate(over="ignore"):
        return _mix((idx + U64(1)) * U64(_GOLDEN)) | U64(1)


_MISC = np.stack([_constants(lane, _K_MISC, 8) for lane in range(LANES)])  # (lanes, 8)
_NULL_VECTOR, _ID_SEED, _BUCKET_SEED, _PAYLOAD_SEED = range(4)
_by_position: dict[int, np.ndarray] = {}
# Strings are hashed through a zero-padded matrix (``_padded_words``) while it holds at most
# this many slots per byte: lengths alike, as payload fields mostly are.
PAD_AT_MOST = 4


def _position_constants(kind: int, count: int) -> np.ndarray:
    """(count, lanes) constants for positions 0..count-1 of a field kind, cached and grown."""
    have = _by_position.get(kind)
    if have is None or len(have) < count:
        size = max(count, 2 * len(have) if have is not None else 256)
        have = np.ascontiguousarray(
            np.stack([_constants(lane, kind, size) for lane in range(LANES)], axis=1))
        _by_position[kind] = have
    return have[:count]


def _one_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column as one array: its only chunk as it is (``combine_chunks`` copies even one)."""
    if not isinstance(col, pa.ChunkedArray):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _string_words(col: pa.Array | pa.ChunkedArray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (n, lanes) sums of constants[kind, position] * (byte + 1), and byte lengths."""
    arr = _one_array(col)
    n = len(arr)
    wide = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    off = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32)
    off = off[arr.offset:arr.offset + n + 1].astype(np.int64)
    data = arr.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    raw = raw[off[0]:off[-1]]
    lens = np.diff(off)
    longest = int(lens.max()) if n else 0
    consts = _position_constants(kind, longest)
    if n and n * longest <= PAD_AT_MOST * max(len(raw), 1):
        return _padded_words(raw, lens, longest, consts), lens.astype(U64)
    starts = off[:-1] - off[0]
    pos = np.arange(len(raw), dtype=np.int64) - np.repeat(starts, lens)
    with np.errstate(over="ignore"):
        words = consts[pos] * (raw.astype(U64) + U64(1))[:, None]
    return _segment_sums(words, starts, starts + lens), lens.astype(U64)


def _segment_sums(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(segments, lanes): ``values[starts[i]:ends[i]]`` summed per lane (wrapping), as
    differences of running sums, 1-D per lane (several times faster than one 2-D pass)."""
    out = np.empty((len(starts), LANES), dtype=U64)
    run = np.zeros(len(values) + 1, dtype=U64)
    with np.errstate(over="ignore"):
        for lane in range(LANES):
            np.cumsum(values[:, lane], out=run[1:])
            out[:, lane] = run[ends] - run[starts]
    return out


def _padded_words(raw: np.ndarray, lens: np.ndarray, longest: int,
                  consts: np.ndarray) -> np.ndarray:
    """``_string_words``' sums for strings of similar lengths: each row's bytes plus one in
    a zero-padded (n, longest) matrix times the constants (a padding zero adds nothing, so
    the sums are the same); one matrix product for both lanes instead of a gather and a
    running sum per lane."""
    # uint16 (a byte plus one fits), four times less to write than uint64: the product widens
    padded = np.zeros((len(lens), longest), dtype=np.uint16)
    # row by row, as ``raw`` lies; a byte counts as byte + 1, a padding slot stays 0
    padded[np.arange(longest) < lens[:, None]] = raw + np.uint16(1)
    with np.errstate(over="ignore"):
        return padded @ consts


def id_words(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, lanes) words of the ids: an int id is itself in both lanes (injective), a string
    id the multilinear hash of its bytes (its own constants per lane) and its length."""
    typ = col.type
    if pa.types.is_integer(typ):
        vals = col.cast(pa.uint64()) if typ != pa.uint64() else col
        flat = np.asarray(vals.to_numpy(zero_copy_only=False), dtype=U64)
        return np.repeat(flat[:, None], LANES, axis=1)
    sums, lens = _string_words(col.cast(pa.string()) if not pa.types.is_string(typ)
                               and not pa.types.is_large_string(typ) else col, _K_ID_STR)
    with np.errstate(over="ignore"):
        return _mix(sums + lens[:, None] * _MISC[:, _ID_SEED])


def buckets_of(col: pa.Array | pa.ChunkedArray, n_buckets: int = N_BUCKETS) -> np.ndarray:
    """The bucket of every id of an Arrow id column (int ids and string ids differ)."""
    w = id_words(col)[:, 0]
    tag = U64(_K_ID_STR if pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
              else _K_ID_INT)
    with np.errstate(over="ignore"):
        h = _mix(w + _MISC[0, _BUCKET_SEED] + tag)
    return (h % U64(n_buckets)).astype(np.int64)


def bucket_of(pid: Any, n_buckets: int = N_BUCKETS) -> int:
    """The bucket of one id (an int or a string), as ``buckets_of`` puts it."""
    arr = pa.array([pid], pa.uint64() if isinstance(pid, int) else pa.string())
    return int(buckets_of(arr, n_buckets)[0])


def _vector_words(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, lanes): multilinear hash of each vector's float32 bits; a null vector a constant."""
    arr = _one_array(col)
    if not pa.types.is_fixed_size_list(arr.type) or arr.type.value_type != pa.float32():
        dim = arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else \
            int(pc.max(pc.list_value_length(arr)).as_py() or 0)
        arr = arr.cast(pa.list_(pa.float32(), dim))
    dim, n = arr.type.list_size, len(arr)
    values = arr.values.slice(arr.offset * dim, n * dim)  # nulls keep their slots
    bits = np.frombuffer(values.buffers()[1], dtype=np.uint32,
                         count=n * dim, offset=values.offset * 4).reshape(n, dim)
    with np.errstate(over="ignore"):
        words = bits @ _position_constants(_K_VEC, dim)  # wraps modulo 2**64
    if arr.null_count:
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        words[nulls] = _MISC[:, _NULL_VECTOR]
    return words


@functools.lru_cache(maxsize=1024)
def _name_words(name: str) -> np.ndarray:
    """A column's name hashed (the same few names, every batch: kept). Read-only."""
    sums, lens = _string_words(pa.array([name], pa.string()), _K_NAME)
    with np.errstate(over="ignore"):
        out = _mix(sums[0] + lens[0])
    out.setflags(write=False)
    return out


def row_hashes(table: pa.Table) -> np.ndarray:
    """(n, lanes) uint64: each point's 128-bit content hash as two 64-bit lanes."""
    with np.errstate(over="ignore"):
        h = _mix(id_words(table.column(ID)) + _MISC[:, _ID_SEED])
        for name in sorted(c for c in table.column_names if c not in (ID, PAYLOAD)):
            h = _mix(h + _name_words(name))
            h = _mix(h + _vector_words(table.column(name)))
        payload = pc.fill_null(table.column(PAYLOAD), "{}")
        sums, lens = _string_words(payload, _K_PAYLOAD)
        h = _mix(h + lens[:, None] * _MISC[:, _PAYLOAD_SEED])
        return _mix(h + sums)


# --- rows in a LanceDB table's own columns (``verify_direct``) ---------------------------
# v2: one mixing step per column (its name's hash and its word added together), a number's
# word not mixed on its own (the step mixes it): 7 passes fewer per batch than v1
COLUMNS_ALGORITHM = f"{ALGORITHM}+lance-columns-v2"


def _const(i: int) -> np.ndarray:
    """(lanes,) constants of index 8 + i of the misc kind (``_MISC`` holds 0..7)."""
    return np.array([_constants(lane, _K_MISC, 1, 8 + i)[0] for lane in range(LANES)], U64)


_C_NULL, _C_SCALAR, _C_LEN, _C_ITEM, _C_TRUE = (_const(i) for i in range(5))


def _hashable(t: pa.DataType) -> bool:
    if pa.types.is_fixed_size_list(t):
        return t.value_type == pa.float32()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t))


def columns_hashable(schema: pa.Schema) -> bool:
    """Whether every column is of a type ``column_hashes`` hashes."""
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
    types exactly) times an odd constant, plus it (injective), booleans as 0 or a
    constant."""
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
        return _nulls(arr, bits[:, None] * _C_SCALAR + _C_SCALAR)


def _list_column(arr: pa.Array) -> np.ndarray:
    """A list of strings: each item's hash chained with its position, summed per row, and
    the row's length."""
    items = pc.list_flatten(arr)
    lens = np.asarray(pc.fill_null(pc.list_value_length(arr), 0).to_numpy(
        zero_copy_only=False), np.int64)
    ends = np.cumsum(lens)
    pos = np.arange(len(items), dtype=np.int64) - np.repeat(ends - lens, lens)
    with np.errstate(over="ignore"):
        item = _mix(_string_column(items) + pos.astype(U64)[:, None] * _C_ITEM)
        out = _segment_sums(item, ends - lens, ends)  # items lie row by row
        out = _mix(out + lens.astype(U64)[:, None] * _C_LEN)
    return _nulls(arr, out)


def _column_words(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    arr = _one_array(col)
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        return _vector_words(arr)
    if len(arr) and arr.null_count == len(arr):  # as each null is below (a column unused)
        return np.repeat(_C_NULL[None, :], len(arr), axis=0)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _list_column(arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _string_column(arr)
    return _scalar_column(arr)


def column_hashes(table: pa.Table) -> np.ndarray:
    """(n, lanes) uint64: each row's hash over every column, the id first, then the others
    by sorted name: ``h = mix(h + name's hash + column's word)``, a bijection of ``h`` and of
    the word at every step, so a change of one column's word always changes the row's hash
    (two columns' words swapped change it but for a chance collision: the steps differ)."""
    with np.errstate(over="ignore"):
        h = _mix(id_words(table.column(ID)) + _MISC[:, _ID_SEED])
        for name in sorted(c for c in table.column_names if c != ID):
            h = _mix(h + _name_words(name) + _column_words(table.column(name)))
    return h


def _as_int(lanes: np.ndarray) -> int:
    return int(lanes[0]) | (int(lanes[1]) << 64)


def point_hashes(table: pa.Table) -> tuple[list[Any], list[int]]:
    """The ids of a canonical table and one 128-bit content hash per point (as Python ints;
    for few rows: ``row_hashes`` is the columnar form)."""
    h = row_hashes(table)
    return table.column(ID).to_pylist(), [_as_int(r) for r in h]


def _add(a: int, b: int) -> int:
    """Lane-wise sum of two 128-bit digests (each lane modulo 2**64)."""
    return ((a + b) % M64) | ((((a >> 64) + (b >> 64)) % M64) << 64)


def _bucket_sums(buckets: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bucket: the row count and the lane-wise wrapped sums of ``hashes``."""
    counts = np.bincount(buckets, minlength=N_BUCKETS)
    order = np.argsort(buckets.astype(np.uint8), kind="stable")  # a radix sort: N_BUCKETS <= 256
    ends = np.cumsum(counts)
    return counts, _segment_sums(hashes[order], ends - counts, ends)


@dataclass
class Digest:
    count: int = 0
    total: int = 0  # lane 0 in the low 64 bits, lane 1 in the high ones
    buckets: list[list[int]] = field(default_factory=lambda: [[0, 0] for _ in range(N_BUCKETS)])
    algorithm: str | None = ALGORITHM  # None: stored by a version that did not say

    def add(self, table: pa.Table, hashes: np.ndarray | None = None) -> Digest:
        """Count the table's rows in; ``hashes``: their row hashes, if not ``row_hashes``'
        (``verify_direct`` hashes a table in a LanceDB target's own columns)."""
        if table.num_rows == 0:
            return self
        hashes = row_hashes(table) if hashes is None else hashes
        counts, sums = _bucket_sums(buckets_of(table.column(ID)), hashes)
        self.count += table.num_rows
        self.total = _add(self.total, _as_int(hashes.sum(axis=0, dtype=U64)))
        for i in np.flatnonzero(counts):
            b = self.buckets[i]
            b[0] += int(counts[i])
            b[1] = _add(b[1], _as_int(sums[i]))
        return self

    def merge(self, other: Digest) -> Digest:
        if other.algorithm != self.algorithm:
            raise ValueError(f"cannot merge a {other.algorithm} digest into a "
                             f"{self.algorithm} one")
        self.count += other.count
        self.total = _add(self.total, other.total)
        for mine, theirs in zip(self.buckets, other.buckets, strict=True):
            mine[0] += theirs[0]
            mine[1] = _add(mine[1], theirs[1])
        return self

    def same_as(self, other: Digest) -> bool:
        """Equal counts and sums, by the same (known) algorithm."""
        return (self.algorithm is not None and self.algorithm == other.algorithm
                and self.count == other.count and self.total == other.total)

    @property
    def hexdigest(self) -> str:
        return f"{self.total:032x}"

    def differing_buckets(self, other: Digest) -> list[int]:
        """Buckets that disagree; every bucket when the two digests' algorithms differ."""
        if self.algorithm is None or self.algorithm != other.algorithm:
            return list(range(N_BUCKETS))
        return [i for i, (a, b) in enumerate(zip(self.buckets, other.buckets, strict=True))
                if a != b]

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "count": self.count, "checksum": self.hexdigest,
                "buckets": [[c, f"{s:032x}"] for c, s in self.buckets]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Digest:
        return cls(count=d["count"], total=int(d["checksum"], 16),
                   buckets=[[c, int(s, 16)] for c, s in d["buckets"]],
                   algorithm=d.get("algorithm"))


def digest_of(tables: Any) -> Digest:
    d = Digest()
    for t in tables:
        d.add(t)
    return d
