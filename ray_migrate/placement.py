"""Where a client finds the points it writes: the unit that holds each id now.

With tenant units an id's unit is in its payload, so a delete, and an upsert that may move a
point to another tenant, look the id up first: only on the sides that own units (once every
unit is on the target the source is never called), and a copy counts only where the owner of
its unit holds it. Mixed into ``client.RoutedCollection``, whose backends, routes and
transforms it uses.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from ray_migrate.backends import Backend
from ray_migrate.config import MigrationConfig
from ray_migrate.routing.actor import RouterHandle
from ray_migrate.schema import ID, payload_dicts
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

QUIET_PHASES = (frozenset({"source"}), frozenset({"done"}))
# Lease phases whose unit cannot flip while the lease is open (a flip needs a capture first,
# whose copy waits for the lease: P2), so its end need not be waited for (P9a).
UNFLIPPABLE = frozenset({"source", "done"})


class Lookup:
    """Where an upsert's ids live now (``Placement._moves``), asked once and only if needed:
    started at once while the cached routes show a unit capturing, else only if the router
    does not grant the write wide leases (``RoutingTable.quiet``, P2a), which make it moot.
    ``in_place``: the write first tries the owners' conditional update, which makes it moot
    when every row kept its tenant (P2b); ``replaced`` says it did."""

    def __init__(self, find: Callable[[], Any], pool: ThreadPoolExecutor, start: bool,
                 in_place: bool = False):
        self._find, self._pool, self._lock = find, pool, threading.Lock()
        self._future: Future | None = pool.submit(find) if start else None
        self.wide, self.in_place, self.replaced = False, in_place, False

    def granted(self, leases: dict[str, dict[str, Any]]) -> None:
        """The leases the router granted this round: wide ones need no look-up."""
        self.wide = bool(leases) and all(le.get("wide") for le in leases.values())

    def moves(self) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        if self.wide:
            return {}, {}
        with self._lock:  # two owners' writes may ask at once: one look-up
            if self._future is None:
                self._future = self._pool.submit(self._find)
        return self._future.result()

    def first(self) -> Lookup:
        """The same look-up for the write again, asked at once, with no update in place."""
        return Lookup(self._find, self._pool, True)


class InPlaceOdds:
    """Whether an upsert tries the update in place first (P2b): yes unless more than half
    of the last ``WINDOW`` tries left a row unreplaced. An application that mostly writes new
    ids would otherwise pay a merge that replaces nothing before every look-up; it still
    tries once every ``WINDOW`` writes, to notice when its writes turn to updates."""

    WINDOW = 16

    def __init__(self) -> None:
        self._last: deque[bool] = deque(maxlen=self.WINDOW)
        self._skipped = 0
        self._lock = threading.Lock()
        self.counts = {"replaced": 0, "missed": 0}  # tries since the client connected

    def worth(self) -> bool:
        with self._lock:
            if self._last.count(False) <= self.WINDOW // 2 \
                    or self._skipped + 1 >= self.WINDOW:
                self._skipped = 0
                return True
            self._skipped += 1
            return False

    def record(self, replaced: bool) -> None:
        with self._lock:
            self._last.append(replaced)
            self.counts["replaced" if replaced else "missed"] += 1


class Placement:
    """Looks ids up on the owners; plain methods over the collection's state."""

    cfg: MigrationConfig
    backends: dict[str, Backend]
    units: dict[str, UnitSpec]
    _seen_units: dict[str, UnitSpec]
    forward: Transform
    router: RouterHandle
    _pool: ThreadPoolExecutor
    _reads: ThreadPoolExecutor

    def routes(self) -> dict[str, tuple[str, str]]:
        raise NotImplementedError

    def unit_of(self, pid: Any, payload: dict[str, Any] | None) -> str:
        raise NotImplementedError

    def _from_target(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError

    def _split(self, table: pa.Table) -> tuple[dict[str, list[int]], dict[str, Any]]:
        """(unit -> its row numbers, unit -> its tenant value) of a canonical table."""
        rows: dict[str, list[int]] = defaultdict(list)
        values: dict[str, Any] = {}
        fld = self.cfg.units.field or ""
        ids = table.column(ID).to_pylist()
        for i, (pid, p) in enumerate(zip(ids, payload_dicts(table), strict=True)):
            unit_id = self.unit_of(pid, p)
            rows[unit_id].append(i)
            values[unit_id] = p.get(fld)
        return rows, values

    def _quiet(self) -> bool:
        """The cached routes show no unit capturing and one owner for all (see ``Lookup``)."""
        phases = frozenset(phase for _, phase in self.routes().values())
        return not phases or phases in QUIET_PHASES

    @staticmethod
    def _owners(routes: dict[str, tuple[str, str]]) -> list[str]:
        """The sides that own some unit: the only ones a read needs."""
        return [side for side in ("source", "target")
                if any(owner == side for owner, _ in routes.values())]

    def _moves(self, new_unit: dict[Any, str]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        """(old unit -> ids that leave it, old unit -> its tenant value)."""
        moved: dict[str, list[Any]] = defaultdict(list)
        values: dict[str, Any] = {}
        for pid, (unit_id, value) in self._homes(new_unit).items():
            if unit_id != new_unit[pid]:
                moved[unit_id].append(pid)
                values[unit_id] = value
        return dict(moved), values

    def _scope(self, owner: str, unit_id: str) -> UnitSpec:
        """The unit in ``owner``'s field names, for a unit-scoped delete."""
        unit = self.units.get(unit_id) or self._seen_units.get(unit_id)
        if unit is None:  # a tenant first seen while running: ask the router once
            unit = self._seen_units[unit_id] = self._new_unit(unit_id)
        return self.forward.target_unit(unit) if owner == "target" else unit

    def _copies(self, ids: list[Any], routes: dict[str, Any]) -> list[tuple[str, Any, str, Any]]:
        """Every copy of these ids on the sides that own units: (side, id, its unit, the
        tenant value), read from both sides at once."""
        return self._on_sides({side: ids for side in self._owners(routes)})

    def _unit_field(self, side: str) -> str:
        """The tenant field under its name on that side (``Transform.target_unit``)."""
        fld = self.cfg.units.field or ""
        return fld if side == "source" else self.forward.field_name(fld) or fld

    def _on_sides(self, asked: dict[str, list[Any]]) -> list[tuple[str, Any, str, Any]]:
        """The copies of ``asked[side]`` on each side, both sides read at once (in
        ``_reads``, whose tasks wait on nothing: a write thread waiting here cannot starve
        them), in the order of ``asked``."""
        fld = self.cfg.units.field or ""

        def read(side: str) -> list[tuple[str, Any, str, Any]]:
            name = self._unit_field(side)
            return [(side, pid, self.unit_of(pid, {fld: v}), v)
                    for pid, v in self.backends[side].fetch_values(asked[side], name)]

        if len(asked) < 2:
            return [c for side in asked for c in read(side)]
        futures = [self._reads.submit(read, side) for side in asked]
        return [c for f in futures for c in f.result()]

    def _homes(self, new_unit: dict[Any, str]) -> dict[Any, tuple[str, Any]]:
        """id -> (unit, tenant value) of the copy that the owner of its unit holds. Looked
        up first on the owner of each id's new unit (an update stays in its tenant: one read),
        then, for ids not found there in a unit that side owns, on the other owner."""
        routes = self.routes()

        def owner(unit: str) -> str:
            return routes.get(unit, ("source",))[0]

        homes: dict[Any, tuple[str, Any]] = {}

        def look(asked: dict[str, list[Any]]) -> None:
            """Both sides at once; the target's copy wins where both hold one (as before)."""
            found = self._on_sides({side: ids for side, ids in asked.items() if ids})
            for where, pid, unit, value in found:
                if owner(unit) == where:
                    homes[pid] = (unit, value)

        look({side: [p for p, u in new_unit.items() if owner(u) == side]
              for side in ("source", "target")})
        rest = [pid for pid in new_unit if pid not in homes]
        if rest:
            look({side: [p for p in rest if owner(new_unit[p]) != side]
                  for side in self._owners(routes)})
        return homes

    def _locate(self, ids: list[Any]) -> dict[str, list[Any]]:
        """The unit of each id: by range, or by the tenant of the copy its owner holds (else
        of every copy found)."""
        out: dict[str, list[Any]] = defaultdict(list)
        if self.cfg.units.by != "tenant":
            for pid in ids:
                out[self.unit_of(pid, None)].append(pid)
            return out
        routes = self.routes()
        seen: dict[Any, set[str]] = defaultdict(set)  # units of every copy found
        owned: dict[Any, str] = {}  # the unit of the copy held by that unit's owner
        for side, pid, unit, _ in self._copies(ids, routes):
            seen[pid].add(unit)
            if routes.get(unit, ("source",))[0] == side:
                owned[pid] = unit
        for pid in ids:
            for unit in ({owned[pid]} if pid in owned else seen.get(pid, set())):
                out[unit].append(pid)
        return out

    def _new_unit(self, unit_id: str) -> UnitSpec:
        fld, _, label_ = unit_id.partition("=")
        value = self.router.call("status")["units"]
        value = next((r["value"] for r in value if r["unit_id"] == unit_id), label_)
        return UnitSpec(unit_id, "tenant", field=fld, value=value)
