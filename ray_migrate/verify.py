"""The verify phase: count and bit-exact, order-independent checksum of a unit on both sides.

The source side is hashed as the target should hold it (transform applied, then the target's
own stored form, e.g. Qdrant's cosine normalization), so equal data gives equal digests. When
digests differ, a second pass reads the unit again and hashes only the points of the differing
buckets, listing every id at fault (no cap); a long list goes to a file under ``state_uri``
(``spill_ids``) and the verdict keeps counts, the first ids and the file's path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_migrate import failpoints, metrics
from ray_migrate.backends.base import Backend
from ray_migrate.checksum import Digest, buckets_of, digest_of, row_hashes
from ray_migrate.schema import ID
from ray_migrate.state import StateStore, safe_name
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec
from ray_migrate.verify_direct import ColumnSides, column_sides


@dataclass
class UnitVerdict:
    unit_id: str
    source_count: int
    target_count: int
    source_checksum: str
    target_checksum: str
    equal: bool
    seconds: float
    differing_buckets: list[int] = field(default_factory=list)
    missing_ids: list[Any] = field(default_factory=list)  # on the source, not on the target
    extra_ids: list[Any] = field(default_factory=list)  # on the target, not on the source
    changed_ids: list[Any] = field(default_factory=list)  # on both, with other content
    pending: int = 0  # differences of ids logged during the verify: catch-up applies them
    missing_count: int = 0  # the lists' lengths, also when the lists are cut (``spill_ids``)
    extra_count: int = 0
    changed_count: int = 0
    ids_file: str | None = None  # every differing id, when there were more than INLINE_IDS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


KEPT_IDS = 20  # differing ids kept in a stored verdict, as examples
INLINE_IDS = 1000  # up to this many differing ids a verdict lists them all; above, in a file
ID_LISTS = ("missing_ids", "extra_ids", "changed_ids")


def ids_key(unit_id: str) -> str:
    return f"verify/{safe_name(unit_id)}.json"


def spill_ids(store: StateStore, verdict: UnitVerdict, inline: int | None = None) -> UnitVerdict:
    """Keep a verdict small enough for Ray, the report and ``--json``: past ``inline`` ids
    (default ``INLINE_IDS``) the full lists go to ``verify/<unit>.json`` under the migration's
    state, and the verdict keeps the counts, the first ``KEPT_IDS`` ids of each and the path."""
    limit = INLINE_IDS if inline is None else inline
    lists = {key: getattr(verdict, key) for key in ID_LISTS}
    if sum(len(v) for v in lists.values()) <= limit:
        return verdict
    key = ids_key(verdict.unit_id)
    store.write(key, {"unit_id": verdict.unit_id, "at": time.time(), **lists})
    verdict.ids_file = store.uri_of(key)
    for name, ids in lists.items():
        setattr(verdict, name, ids[:KEPT_IDS])
    return verdict


def verdict_key(unit_id: str) -> str:
    return f"verdicts/{safe_name(unit_id)}.json"


def save_verdict(store: StateStore, unit_id: str, verdict: UnitVerdict | None) -> None:
    """Keep a unit's latest verdict (None: forget it, the unit is copied again), so a later
    run that skips the unit reports what was found, not a guess."""
    doc = None
    if verdict is not None:
        # An equal verdict may list ids that differed while live writes went on (``pending``:
        # catch-up applies them): they are no mismatch.
        n = verdict.missing_count + verdict.extra_count + verdict.changed_count
        metrics.verified(store.migration_id, unit_id, 0 if verdict.equal else max(n, 1))
        doc = {**verdict.to_dict(), "at": time.time()}
        for key in ID_LISTS:
            doc[key] = doc[key][:KEPT_IDS]
    store.write(verdict_key(unit_id), doc)


def load_verdict(store: StateStore, unit_id: str) -> dict[str, Any] | None:
    return store.read(verdict_key(unit_id))


def as_target_holds(unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
                    batch_size: int) -> Iterator[pa.Table]:
    """The unit's source batches as the target should hold them. The target's stored form is
    skipped where it is the identity (``keeps_canonical``) on canonical batches: a
    transform's function may return non-canonical payload text, so not after one."""
    same = transform.function is None and target.keeps_canonical()
    for batch, _ in source.scan(unit, batch_size):
        out = transform.apply(batch)
        yield out if same else target.stored_form(out)


def source_digest(unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
                  batch_size: int) -> Digest:
    return digest_of(as_target_holds(unit, source, target, transform, batch_size))


def _hashes_in(tables: Any, buckets: set[int], hashes: Any = row_hashes) -> pa.Table:
    """(id, h0, h1) of the points in ``buckets`` only, columnar: the others are not hashed."""
    wanted = np.fromiter(buckets, dtype=np.int64, count=len(buckets))
    parts = []
    for t in tables:
        keep = np.isin(buckets_of(t.column(ID)), wanted)
        if not keep.any():
            continue
        t = t if keep.all() else t.filter(pa.array(keep))
        h = hashes(t)
        parts.append(pa.table({ID: t.column(ID), "h0": h[:, 0], "h1": h[:, 1]}))
    return pa.concat_tables(parts) if parts else None


def _ids(table: pa.Table | None, limit: int | None) -> list[Any]:
    return [] if table is None else sorted(table.column(ID).to_pylist(), key=str)[:limit]


def _compare(src: pa.Table | None, dst: pa.Table | None, limit: int | None
             ) -> tuple[list, list, list]:
    """Missing, extra and changed ids between two (id, h0, h1) tables, by an Arrow join."""
    if src is None or dst is None:
        return _ids(src, limit), _ids(dst, limit), []
    both = src.join(dst.rename_columns([ID, "d0", "d1"]), ID, join_type="full outer")
    lost, new = pc.is_null(both.column("d0")), pc.is_null(both.column("h0"))
    differ = pc.and_(pc.and_(pc.invert(lost), pc.invert(new)), pc.or_(
        pc.not_equal(both.column("h0"), both.column("d0")),
        pc.not_equal(both.column("h1"), both.column("d1"))))
    return (_ids(both.filter(lost), limit), _ids(both.filter(new), limit),
            _ids(both.filter(differ), limit))


def diff_ids(unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
             buckets: list[int], batch_size: int, limit: int | None = None,
             sides: ColumnSides | None = None) -> tuple[list, list, list]:
    """Ids missing on the target, extra on the target, and changed, within ``buckets``
    (every one of them unless ``limit``). The backends cannot select points by bucket (a
    bucket is a hash of the id), so both sides are scanned whole once more, but only the
    points of ``buckets`` are hashed and kept, and compared by a join, not per id.
    ``sides``: both sides in the target's columns (``verify_direct``), as the digests were."""
    wanted = set(buckets)
    if sides is not None:
        return _compare(_hashes_in(sides.source(), wanted, sides.hashes),
                        _hashes_in(sides.target(), wanted, sides.hashes), limit)
    src = _hashes_in(as_target_holds(unit, source, target, transform, batch_size), wanted)
    dst = _hashes_in((b for b, _ in target.scan(transform.target_unit(unit), batch_size)), wanted)
    return _compare(src, dst, limit)


def _summed(unit: UnitSpec, digest: Digest) -> Digest:
    failpoints.hit("verify.checksum", unit=unit.unit_id)  # the source side summed
    return digest


def _both_at_once(first: Callable[[], Digest], second: Callable[[], Digest]
                  ) -> tuple[Digest, Digest]:
    """``first()`` in a thread of its own beside ``second()``: reading and hashing release
    the GIL (Lance's scan, numpy), so a verify uses two cores where it has them."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-verify") as pool:
        fut = pool.submit(first)
        b = second()  # if it raises, leaving the block still waits for ``first``
        return fut.result(), b


def verify_unit(unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
                batch_size: int = 2000, max_ids: int | None = None) -> UnitVerdict:
    """Count and checksum the unit on both sides; when they differ, list every differing id
    (at most ``max_ids`` of each kind, if given)."""
    start = time.perf_counter()
    sides = column_sides(unit, source, target, transform, batch_size)
    if sides is not None:  # each side reads only its own backend: both at once
        s, t = _both_at_once(lambda: _summed(unit, sides.digest(sides.source())),
                             lambda: sides.digest(sides.target()))
    else:
        s = _summed(unit, source_digest(unit, source, target, transform, batch_size))
        t = target.checksum(transform.target_unit(unit), batch_size)
    verdict = UnitVerdict(unit.unit_id, s.count, t.count, s.hexdigest, t.hexdigest,
                          equal=s.same_as(t), seconds=0.0)
    if not verdict.equal:
        verdict.differing_buckets = s.differing_buckets(t)
        verdict.missing_ids, verdict.extra_ids, verdict.changed_ids = diff_ids(
            unit, source, target, transform, verdict.differing_buckets, batch_size, max_ids,
            sides)
        verdict.missing_count = len(verdict.missing_ids)
        verdict.extra_count = len(verdict.extra_ids)
        verdict.changed_count = len(verdict.changed_ids)
    verdict.seconds = time.perf_counter() - start
    return verdict
