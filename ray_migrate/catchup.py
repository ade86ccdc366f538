"""Catch-up: bring the other side up to date with the ids the change log names.

The log holds ids, not values. Each id is re-read from the side that owns the unit and upserted
on the other side, or deleted there when the owner no longer has it. So applying a change
twice, out of order or after a later copy batch is harmless: the last application always
writes the owner's current value. Where a client's own rows are known to equal the owner's
value, the router hands them out and they stand in for the read (see ``routing.table``). The same
code syncs a cut-over unit back to the source (rollback window) and repairs ids that a diff
found.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ray_migrate.backends.base import Backend
from ray_migrate.routing.actor import RouterHandle
from ray_migrate.schema import ID
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

BATCH_IDS = 2000


Carried = list[tuple[list[Any], Any]]  # (ids, ("upsert", table) | ("delete", ids))


def settled_by_clients(carried: Carried, owner: Backend) -> tuple[list[Any], pa.Table | None]:
    """The ids that clients' own rows settle (see ``routing.Carried``), and the rows of those
    still present, as the owner stores them. Rows that cannot be used are left to a read."""
    known: list[Any] = []
    parts: list[pa.Table] = []
    for ids, (kind, data) in carried:
        if kind == "delete":
            known += ids
            continue
        try:
            col = data.column(ID)
            rows = owner.stored_form(data.filter(pc.is_in(col, value_set=pa.array(ids, col.type))))
        except (pa.ArrowException, KeyError, ValueError) as err:  # then read them
            log.debug("client rows not used: %s", err)
            continue
        known += rows.column(ID).to_pylist()
        parts.append(rows)
    if not parts:
        return known, None
    try:
        return known, pa.concat_tables(parts)
    except pa.ArrowException as err:
        log.debug("client rows not used: %s", err)
        return [pid for ids, (kind, _) in carried if kind == "delete" for pid in ids], None


def apply_ids(ids: Sequence[Any], owner: Backend, other: Backend, transform: Transform,
              seen: list[tuple[list[Any], pa.Table]] | None = None,
              times: dict[str, float] | None = None,
              carried: Carried | None = None) -> tuple[int, int]:
    """Make ``other`` hold what ``owner`` holds for these ids. Returns (upserted, deleted).
    ``carried``: clients' rows that stand for the owner's value of some ids, which are then
    not read. ``seen`` collects each read of the owner (or its stand-in), (ids asked, rows
    found): a cutover confirms against them. ``times`` adds up the ms spent reading the owner
    and writing the other."""
    counts = [0, 0]
    times = {} if times is None else times

    def apply(chunk: list[Any], rows: pa.Table, t1: float) -> None:
        if seen is not None:
            seen.append((chunk, rows))
        present = set(rows.column(ID).to_pylist())
        if rows.num_rows:
            other.upsert(transform.apply(rows))
            counts[0] += rows.num_rows
        gone = [pid for pid in chunk if pid not in present]
        if gone:
            other.delete(gone)
            counts[1] += len(gone)
        times["write"] = times.get("write", 0.0) + (time.perf_counter() - t1) * 1000

    if carried:
        known, rows = settled_by_clients(carried, owner)
        if known:
            settled = set(known)
            apply([pid for pid in ids if pid in settled],
                  rows if rows is not None else owner.fetch([]), time.perf_counter())
            ids = [pid for pid in ids if pid not in settled]
    for i in range(0, len(ids), BATCH_IDS):
        chunk = list(ids[i:i + BATCH_IDS])
        t0 = time.perf_counter()
        rows = owner.fetch(chunk)
        t1 = time.perf_counter()
        times["read"] = times.get("read", 0.0) + (t1 - t0) * 1000
        apply(chunk, rows, t1)
    return counts[0], counts[1]


@dataclass
class UnitSync:
    """One direction of one unit: forward (source to target) or back (target to source)."""

    unit: UnitSpec
    router: RouterHandle
    owner: Backend
    other: Backend
    transform: Transform
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    seen: list[tuple[list[Any], pa.Table]] | None = None  # when a list: the owner reads
    times: dict[str, float] = field(default_factory=dict)  # ms reading / writing, summed

    def step(self, limit: int = 10_000, lag: bool = True) -> tuple[list[Any], int]:
        """Apply one slice of the log; returns the ids applied and the lag left (-1 when
        nothing was applied and ``lag`` is False: a freeze's drain saves that router call)."""
        uid = self.unit.unit_id
        ids, seq, carried = self.router.call("take_changes", uid, limit, self.holder)
        if not ids:  # nothing settled to apply, or another applier holds the log
            return [], self.router.call("unit", uid)["lag"] if lag else -1
        try:
            apply_ids(ids, self.owner, self.other, self.transform, self.seen, self.times,
                      carried)
        except BaseException:
            self.router.call("ack_changes", uid, 0, self.holder)  # let go, acking nothing
            raise
        return ids, self.router.call("ack_changes", uid, seq, self.holder)

    def until(self, lag: int, timeout_s: float, limit: int = 10_000,
              ended: bool = False) -> tuple[int, set[Any]]:
        """Step until at most ``lag`` changes wait or time is up. While none is ready to apply
        (their writes are still under way, or another applier holds the log) it polls.
        ``ended``: stop as well once every write that has ended is applied (a step found
        nothing to take), leaving only writes under way; a cutover does that next, so it
        does not poll for writes that never pause. Returns (lag, ids applied)."""
        deadline = time.monotonic() + timeout_s
        applied: set[Any] = set()
        while True:
            ids, left = self.step(limit)
            applied.update(ids)
            if left <= lag or time.monotonic() >= deadline or (ended and not ids):
                return left, applied
            if not ids:
                time.sleep(0.005)
                if time.monotonic() >= deadline:
                    return left, applied
