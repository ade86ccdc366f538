"""Catch-up: bring the other side up to date with the ids the change log names.

The log holds ids, not values. Each id is re-read from the side that owns the unit and upserted
on the other side, or deleted there when the owner no longer has it. Both are scoped to the
unit: a point whose tenant changed is no longer in the old unit (only its old copy is deleted
on the other side, by id and tenant), and never counts twice. So applying a change
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

from ray_migrate import failpoints
from ray_migrate.backends.base import Backend, in_tenant, tenant_units
from ray_migrate.routing.actor import RouterHandle
from ray_migrate.routing.client_rows import decode_rows
from ray_migrate.schema import ID, payload_dicts
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

BATCH_IDS = 2000


Carried = list[tuple[list[Any], Any]]  # (ids, ("upsert", IPC bytes) | ("delete", ids))


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
            data = decode_rows(data)  # Arrow IPC from the client (``routing.client_rows``)
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


def in_unit(rows: pa.Table, unit: UnitSpec | None) -> pa.Table:
    """The rows that belong to ``unit``: a point that moved to another tenant is not the
    unit's any more, though its id is still in the unit's log."""
    if unit is None or unit.kind != "tenant" or rows.num_rows == 0:
        return rows
    return rows.filter(pa.array([in_tenant(unit, p) for p in payload_dicts(rows)], pa.bool_()))


# One unit's share of an apply: (the unit in the owner's terms, or None; its logged ids;
# clients' rows for some of them, or None).
Part = tuple[UnitSpec | None, Sequence[Any], Carried | None]


def apply_ids(ids: Sequence[Any], owner: Backend, other: Backend, transform: Transform,
              seen: list[tuple[list[Any], pa.Table]] | None = None,
              times: dict[str, float] | None = None,
              carried: Carried | None = None, unit: UnitSpec | None = None,
              kept: dict[str, list[Any]] | None = None) -> tuple[int, int]:
    """``apply_units`` for one unit (None: every id counts wherever it is)."""
    return apply_units([(unit, ids, carried)], owner, other, transform, seen, times, kept)


def apply_units(parts: Sequence[Part], owner: Backend, other: Backend, transform: Transform,
                seen: list[tuple[list[Any], pa.Table]] | None = None,
                times: dict[str, float] | None = None,
                kept: dict[str, list[Any]] | None = None) -> tuple[int, int]:
    """Make ``other`` hold what ``owner`` holds for each unit's logged ids. Returns (upserted,
    deleted).

    Unit-scoped, so that a point whose tenant changed is handled right by the logs of both
    its units: an id counts as present only where the owner's row belongs to the unit; it is
    deleted on ``other`` only where it belongs to that unit there (``Backend.delete`` with
    the unit); and an upsert replaces a point on ``other`` only where it belongs to one of
    the units applied (``Backend.upsert`` with ``within``). The last keeps a point that moved,
    between the read and the write, to a tenant whose owner is ``other``; the ids so left
    go to ``kept`` (unit id -> ids) and the caller logs them again before it acks, so they are
    applied again (the owner no longer has them in the unit by then, or a stale copy of a
    third unit on ``other`` is gone). The owner is read once for all parts, and ``other`` gets
    one upsert and one ``delete_many`` per chunk of ids.

    Clients' rows (``carried``) stand for the owner's value of some ids, which are then not
    read; not for an id logged in several parts (a move between them). ``seen`` collects each
    read of the owner (or its stand-in) as (ids asked, rows found in scope): a cutover
    confirms against them. ``times`` adds up the ms spent reading the owner and writing the
    other."""
    units = [u for u, _, _ in parts if u is not None]
    run = _Apply(other, transform, tenant_units([transform.target_unit(u) for u in units]),
                 seen, {} if times is None else times, {} if kept is None else kept)
    logged: dict[Any, int] = {}
    for _, ids, _ in parts:
        for pid in dict.fromkeys(ids):
            logged[pid] = logged.get(pid, 0) + 1
    left: list[tuple[UnitSpec | None, list[Any]]] = []
    for unit, ids, carried in parts:
        usable = [(c_ids, rows) for c_ids, rows in carried or []
                  if all(logged.get(pid, 0) == 1 for pid in c_ids)]
        known, rows = settled_by_clients(usable, owner) if usable else ([], None)
        settled = set(known)
        if settled:
            rows = rows if rows is not None else owner.fetch([])
            run.write([(unit, [p for p in ids if p in settled])], rows, time.perf_counter())
        left.append((unit, [p for p in ids if p not in settled]))
    to_read = list(dict.fromkeys(p for _, ids in left for p in ids))
    for i in range(0, len(to_read), BATCH_IDS):
        chunk = set(to_read[i:i + BATCH_IDS])
        t0 = time.perf_counter()
        rows = owner.fetch(list(chunk))
        t1 = time.perf_counter()
        run.times["read"] = run.times.get("read", 0.0) + (t1 - t0) * 1000
        run.write([(u, [p for p in ids if p in chunk]) for u, ids in left], rows, t1)
    return run.counts[0], run.counts[1]


@dataclass
class _Apply:
    """One ``apply_units``: where it writes and what it notes."""

    other: Backend
    transform: Transform
    within: list[UnitSpec] | None  # the tenant units applied, in ``other``'s field names
    seen: list[tuple[list[Any], pa.Table]] | None
    times: dict[str, float]
    kept: dict[str, list[Any]]
    counts: list[int] = field(default_factory=lambda: [0, 0])

    def write(self, parts: list[tuple[UnitSpec | None, list[Any]]], rows: pa.Table,
              t1: float) -> None:
        """Write what the owner's ``rows`` say about each part's ids: the rows in the part's
        unit upserted, the ids not in it deleted from the unit on ``other``."""
        found = rows.column(ID).to_pylist()
        unit_of: dict[Any, str] = {}  # id -> the unit whose row is upserted
        gone: list[tuple[list[Any], UnitSpec | None]] = []
        for unit, ids in parts:
            if not ids:
                continue
            wanted = set(ids)
            mine = in_unit(rows.take(pa.array([i for i, p in enumerate(found) if p in wanted],
                                              pa.int64())), unit)
            if self.seen is not None:
                self.seen.append((list(ids), mine))
            present = set(mine.column(ID).to_pylist())
            unit_of.update((pid, "" if unit is None else unit.unit_id) for pid in present)
            missing = [pid for pid in ids if pid not in present]
            if missing:
                gone.append((missing, None if unit is None
                             else self.transform.target_unit(unit)))
        if unit_of:
            upsert = rows.take(pa.array([i for i, p in enumerate(found) if p in unit_of],
                                        pa.int64()))
            table = self.transform.apply(upsert)
            left = (self.other.upsert(table) if self.within is None
                    else self.other.upsert(table, self.within)) or []
            for pid in left:
                self.kept.setdefault(unit_of[pid], []).append(pid)
            self.counts[0] += upsert.num_rows - len(left)
        if gone:
            self.other.delete_many(gone)
            self.counts[1] += sum(len(ids) for ids, _ in gone)
        self.times["write"] = self.times.get("write", 0.0) + (time.perf_counter() - t1) * 1000


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
    # Which side ``owner`` is ("source" or "target"): the router hands this applier nothing
    # once the unit is owned by the other side (P11a). None: not checked.
    side: str | None = None

    def step(self, limit: int = 10_000, lag: bool = True) -> tuple[list[Any], int]:
        """Apply one slice of the log; returns the ids applied and the lag left (-1 when
        nothing was applied and ``lag`` is False: a freeze's drain saves that router call)."""
        uid = self.unit.unit_id
        ids, seq, carried = self.router.call("take_changes", uid, limit, self.holder,
                                             owner=self.side)
        if not ids:  # nothing settled to apply, or another applier holds the log
            return [], self.router.call("unit", uid)["lag"] if lag else -1
        kept: dict[str, list[Any]] = {}
        try:
            apply_ids(ids, self.owner, self.other, self.transform, self.seen, self.times,
                      carried, unit=self.unit, kept=kept)
            if kept:  # before the ack: never a moment when they are in no log
                self.router.call("log_ids", uid, [p for ps in kept.values() for p in ps])
            failpoints.hit("catchup.applied", unit=uid)  # applied, not acknowledged
        except BaseException:
            self.router.call("ack_changes", uid, 0, self.holder)  # let go, acking nothing
            raise
        return ids, self.router.call("ack_changes", uid, seq, self.holder)

    def owner_rows(self, ids: Sequence[Any]) -> pa.Table:
        """The owner's rows of these ids that belong to the unit."""
        return in_unit(self.owner.fetch(list(ids)), self.unit)

    def other_rows(self, ids: Sequence[Any]) -> pa.Table:
        """The other side's rows of these ids that belong to the unit there."""
        return in_unit(self.other.fetch(list(ids)), self.transform.target_unit(self.unit))

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
