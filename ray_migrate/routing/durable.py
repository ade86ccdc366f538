"""What of the routing table is written when, and how a restarted router rebuilds it.

Two documents under the migration's state: ``routing.json`` (owners, phases, counters) is
written on every change of owner or phase, before the change is answered, so a restart never
takes back a flip; ``changes.json`` (the change logs) at most every ``FLUSH_S``. A restart reads
both as last written: a log may miss its newest entries (its unit is then repaired by diff) or
hold entries applied since (applying them again is harmless). Plain Python with an injected
clock: ``routing.actor`` wraps it, and tests drive it without Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ray_migrate import failpoints
from ray_migrate.routing.records import CAPTURING, Phase, UnitRoute
from ray_migrate.routing.table import RoutingTable

log = logging.getLogger(__name__)

ROUTING_KEY = "routing.json"
CHANGES_KEY = "changes.json"  # the change logs, written apart and at most every FLUSH_S
FLUSH_S = 0.2


class Documents(Protocol):
    """Where the two documents live: ``state.StateStore``."""

    def read(self, key: str, default: Any = None) -> Any: ...

    def write(self, key: str, doc: Any) -> None: ...


def restore(store: Documents, clients_may_remain: bool = True,
            now: float | None = None) -> RoutingTable | None:
    """The table as the two documents last written hold it, None if never written. The logs
    may be older than the routes: the log of a unit that has left capture since is dropped."""
    stored = store.read(ROUTING_KEY)
    if stored is None:
        return None
    for uid, entries in (store.read(CHANGES_KEY) or {}).items():
        unit = stored["units"].get(uid)
        if unit is not None and unit["phase"] in CAPTURING:
            unit["log"] = entries
    return RoutingTable.from_dict(stored, restarted=True, now=now,
                                  clients_may_remain=clients_may_remain)


class DurableTable:
    """The routing table and the rules for writing it: each change of the table that must
    outlive a restart goes through here. Calls that change nothing durable (taking changes,
    reservations, ...) go to ``table`` directly."""

    def __init__(self, store: Documents, table: RoutingTable,
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.table, self.clock = store, table, clock
        self._flushed = float("-inf")
        self.persist()

    @classmethod
    def open(cls, store: Documents, unit_ids: list[str], lease_s: float = 30.0,
             freeze_timeout_s: float = 10.0, clients_may_remain: bool = True,
             clock: Callable[[], float] = time.monotonic,
             now: float | None = None, name: str = "") -> DurableTable:
        """Restore the table from ``store`` (as its next incarnation), or start a new one there;
        either way written back before this returns, so no call is served before the
        incarnation is durable. ``clients_may_remain``: clients of an earlier router may still
        hold leases (it restarted in the same cluster)."""
        table = restore(store, clients_may_remain, now)
        if table is None:
            table = RoutingTable(unit_ids, lease_s=lease_s, freeze_timeout_s=freeze_timeout_s)
        else:
            for u in unit_ids:
                table.units.setdefault(u, UnitRoute(u))
            log.warning("router %s recovered at epoch %d, incarnation %d", name, table.epoch,
                        table.incarnation)
        return cls(store, table, clock)

    # --- what is written ------------------------------------------------------------------
    def persist(self) -> None:
        """Owners, phases and counters: written on every change of the table."""
        self.store.write(ROUTING_KEY, self.table.to_dict(logs=False))

    def persist_logs(self) -> None:
        self.store.write(CHANGES_KEY, self.table.logs_dict())
        self._flushed = self.clock()

    def maybe_persist_logs(self) -> None:
        """The change logs, at most every FLUSH_S. They spare a restarted router some repair
        work, nothing more: it marks capturing units for diff-and-repair in any case."""
        if self.clock() - self._flushed >= FLUSH_S:
            self.persist_logs()

    def flush(self) -> None:
        self.persist()
        self.persist_logs()

    # --- the table's changes, each with what it writes -------------------------------------
    def begin_writes(self, requests: list[tuple[str, list[Any], Any]], whole: bool = False,
                     now: float | None = None, wide: bool = False) -> list[dict[str, Any]]:
        epoch = self.table.epoch
        out = self.table.begin_writes(requests, whole, now, wide)
        failpoints.hit("router.changed", what="begin_writes")  # logged, not persisted
        if self.table.epoch != epoch:  # a new unit, or a stale freeze lifted
            self.persist()
        elif any(ids and self.table.units[u].phase in CAPTURING for u, ids, _ in requests):
            self.maybe_persist_logs()
        return out

    def end_writes(self, tokens: list[int],
                   carried: dict[int, tuple[Any, int]] | None = None) -> list[dict[str, Any]]:
        """``end_write`` for several leases; ``carried``: token -> (rows, nbytes)."""
        carried = carried or {}
        return [self.table.end_write(t, *carried.get(t, (None, 0))) for t in tokens]

    def set_phase(self, unit_id: str, phase: Phase, now: float | None = None) -> int:
        epoch = self.table.set_phase(unit_id, phase, now)
        failpoints.hit("router.changed", what="set_phase", unit=unit_id, phase=phase)
        self.persist()
        return epoch

    def set_phases(self, unit_ids: list[str], phase: Phase, now: float | None = None) -> int:
        for u in unit_ids:
            self.table.set_phase(u, phase, now)
        self.persist()
        return self.table.epoch

    def lift_freeze(self, unit_id: str, phase: Phase, now: float | None = None) -> bool:
        lifted = self.table.lift_freeze(unit_id, phase, now)
        if lifted:
            self.persist()
        return lifted

    def settle(self, unit_id: str, phase: Phase, may_switch: bool, force: bool,
               strict: bool = False, now: float | None = None) -> dict[str, Any]:
        out = self.table.settle(unit_id, phase, may_switch, force, strict, now)
        failpoints.hit("router.changed", what="settle", unit=unit_id, phase=out["state"])
        if out["state"] in ("switched", "frozen"):
            self.persist()
        return out

    def flip(self, unit_id: str, phase: Phase, now: float | None = None) -> bool:
        if not self.table.flip(unit_id, phase, now):
            return False
        failpoints.hit("router.changed", what="flip", unit=unit_id, phase=phase)
        self.persist()
        return True

    def update_progress(self, unit_id: str, copied: int | None = None,
                        total: int | None = None, error: str | None = None) -> None:
        self.table.update_progress(unit_id, copied, total, error)
        self.maybe_persist_logs()

    def clear_repair(self, unit_id: str) -> None:
        self.table.unit(unit_id).needs_repair = False
        self.persist()

    def log_ids(self, unit_id: str, ids: list[Any]) -> int:
        lag = self.table.log_ids(unit_id, ids)
        self.maybe_persist_logs()
        return lag

    def ack_changes(self, unit_id: str, seq: int, holder: str | None = None) -> int:
        lag = self.table.ack_changes(unit_id, seq, holder)
        self.maybe_persist_logs()
        return lag

    def ack_many(self, seqs: dict[str, int], holder: str) -> None:
        """Ack a follower step (``take_many``), which also ends it."""
        for uid, seq in seqs.items():
            self.table.ack_changes(uid, seq, holder)
        self.table.end_follow(holder)
        self.maybe_persist_logs()
