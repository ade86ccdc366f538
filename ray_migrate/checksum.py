"""Order-independent, bit-exact content digests of canonical batches.

Each point hashes (blake2b, 128 bits) its id, every vector's raw float32 bytes (by sorted vector
name) and its canonical payload JSON. A digest keeps the count and the sum of those hashes
modulo 2**128, overall and per bucket (a bucket is picked by a hash of the id alone), so two
sides can be compared in any order, merged from parallel parts, and a difference localized to
the buckets that disagree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ray_migrate.schema import ID, PAYLOAD, vectors_to_numpy

MOD = 2**128
N_BUCKETS = 64


def _id_bytes(pid: Any) -> bytes:
    if isinstance(pid, int):
        return b"i" + pid.to_bytes(8, "little", signed=False)
    return b"s" + str(pid).encode()


def point_hashes(table: pa.Table) -> tuple[list[Any], list[int]]:
    """The ids of a canonical table and one 128-bit content hash per point."""
    ids = table.column(ID).to_pylist()
    names = sorted(c for c in table.column_names if c not in (ID, PAYLOAD))
    vecs = [(n.encode() + b"\0", vectors_to_numpy(table.column(n))) for n in names]
    payloads = table.column(PAYLOAD).to_pylist()
    out = []
    for i, pid in enumerate(ids):
        h = hashlib.blake2b(_id_bytes(pid), digest_size=16)
        for name, arr in vecs:
            h.update(name)
            h.update(arr[i].tobytes())
        h.update(b"\1")
        h.update((payloads[i] or "{}").encode())
        out.append(int.from_bytes(h.digest(), "little"))
    return ids, out


def bucket_of(pid: Any, n_buckets: int = N_BUCKETS) -> int:
    return hashlib.blake2b(_id_bytes(pid), digest_size=8).digest()[0] % n_buckets


@dataclass
class Digest:
    count: int = 0
    total: int = 0
    buckets: list[list[int]] = field(default_factory=lambda: [[0, 0] for _ in range(N_BUCKETS)])

    def add(self, table: pa.Table) -> Digest:
        ids, hashes = point_hashes(table)
        self.count += len(ids)
        self.total = (self.total + sum(hashes)) % MOD
        for pid, h in zip(ids, hashes, strict=True):
            b = self.buckets[bucket_of(pid)]
            b[0] += 1
            b[1] = (b[1] + h) % MOD
        return self

    def merge(self, other: Digest) -> Digest:
        self.count += other.count
        self.total = (self.total + other.total) % MOD
        for mine, theirs in zip(self.buckets, other.buckets, strict=True):
            mine[0] += theirs[0]
            mine[1] = (mine[1] + theirs[1]) % MOD
        return self

    @property
    def hexdigest(self) -> str:
        return f"{self.total:032x}"

    def differing_buckets(self, other: Digest) -> list[int]:
        return [i for i, (a, b) in enumerate(zip(self.buckets, other.buckets, strict=True))
                if a != b]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "checksum": self.hexdigest,
                "buckets": [[c, f"{s:032x}"] for c, s in self.buckets]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Digest:
        return cls(count=d["count"], total=int(d["checksum"], 16),
                   buckets=[[c, int(s, 16)] for c, s in d["buckets"]])


def digest_of(tables: Any) -> Digest:
    d = Digest()
    for t in tables:
        d.add(t)
    return d
