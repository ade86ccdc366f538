"""The routing table's logic: owners, phases, epochs, write leases and the change log.

Plain Python with no Ray, so every rule is unit-tested on its own; ``actor`` wraps it in the
named actor. Why this scheme keeps "no acknowledged write is lost":

- Every client write asks ``begin_write`` first. The table answers with the unit's owner and a
  lease, or "wait" while the unit is frozen. When the unit's phase captures changes, the ids are
  appended to the unit's change log *before* the client writes (an intent log), so the log can
  only hold too much, never too little.
- Capture starts when a unit leaves ``source`` (and goes on through a rollback, until the unit
  is done or back at ``source``); the copy scan waits for every lease issued before that, so
  no uncaptured write can land during the scan.
- The owner flips only when no ended write is left unapplied on the new owner, checked in
  the same step as the flip. At a quiet moment (no write of the unit under way, every ended one
  applied and confirmed) ``settle`` freezes and flips in one step, so no write waits.
  Otherwise a freeze stops new leases, the ended writes are drained and ``flip`` follows.
  Writes under way are never waited for: ``end_write`` tells them the owner changed (fenced),
  and the client writes again to the new owner before it acknowledges. Their log entries
  stay, unsettled until the retry has ended, so the old owner is synced to the new one's
  value afterwards, never to the value from before the retry landed.
- Catch-up re-reads the current value of logged ids from the owner, so it is idempotent,
  order-free and delete-safe, as long as it reads the owner: an applier names the side it
  reads, and a unit that flipped since it chose is not handed to it. A client may hand in
  what it wrote with ``end_write``; an applier uses those rows instead of reading the owner
  only where they must equal what the owner holds (``client_rows`` has the rules).
- A restored router is a new incarnation (``durable``): no lease token or log seq of an earlier
  one is issued again, and a unit whose log may have lost entries is repaired by diff before
  its owner may flip.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from ray_migrate.routing.appliers import YIELD_MAX_AGE_S, ApplierGate
from ray_migrate.routing.client_rows import Carried, ClientRows
from ray_migrate.routing.records import (
    CAPTURING,
    INCARNATION_SHIFT,
    TRANSITIONS,
    Lease,
    LogEntry,
    Owner,
    Phase,
    TransitionError,
    UnitRoute,
)

# A rolled-back unit whose log grows past this many entries drops it for a diff-and-repair.
ROLLED_BACK_MAX_LOG = 1_000_000


class RoutingTable(ApplierGate):
    """For each unit: owner, phase, counters and its change log; one epoch for the table."""

    def __init__(self, unit_ids: list[str], lease_s: float = 30.0,
                 freeze_timeout_s: float = 10.0, incarnation: int = 0):
        self.epoch = 1
        self.incarnation = incarnation
        self.on_change: Callable[[], None] | None = None  # told of every new epoch
        self.on_freeze: Callable[[str, float], None] | None = None  # (unit, ms) as one ends
        self.units: dict[str, UnitRoute] = {u: UnitRoute(u) for u in unit_ids}
        self.lease_s = lease_s
        self.freeze_timeout_s = freeze_timeout_s
        base = incarnation << INCARNATION_SHIFT  # see ``records.INCARNATION_SHIFT``
        self.seq = base  # the last seq issued
        self._last_number = base + (1 << INCARNATION_SHIFT) - 1
        self.leases: dict[int, Lease] = {}
        self._tokens = itertools.count(base + 1)
        self.restarted_at: float | None = None
        self.followers_paused_until = 0.0  # background appliers wait (target compaction)
        self.followers_yield_until = 0.0  # ... unless their changes grow old (a cutover)
        self.upkeep_until = 0.0  # a compaction of the target runs: cutovers wait for it
        self.follow_holder: str | None = None  # the follower whose step is under way
        self.follow_since = 0.0
        self.rows = ClientRows()  # what clients wrote, for the appliers (see ``routing.client_rows``)
        self.last_lease_at: float | None = None  # when a client last began a write (``activity``)

    # --- table changes (each bumps the epoch) --------------------------------------------
    def _bump(self) -> int:
        self.epoch += 1
        if self.on_change is not None:
            self.on_change()
        return self.epoch

    def unit(self, unit_id: str) -> UnitRoute:
        try:
            return self.units[unit_id]
        except KeyError:
            raise KeyError(f"unknown unit {unit_id!r}") from None

    def add_unit(self, unit_id: str, value: Any = None) -> bool:
        if unit_id in self.units:
            return False
        self.units[unit_id] = UnitRoute(unit_id, value=value)
        self._bump()
        return True

    def set_phase(self, unit_id: str, phase: Phase, now: float | None = None) -> int:
        now = time.time() if now is None else now
        u = self.unit(unit_id)
        if phase == u.phase:
            return self.epoch
        if phase not in TRANSITIONS[u.phase]:
            raise TransitionError(f"unit {unit_id}: cannot go from {u.phase} to {phase}")
        if u.phase == "frozen" and u.frozen_at is not None:
            u.longest_freeze_ms = max(u.longest_freeze_ms, (now - u.frozen_at) * 1000)
            if self.on_freeze is not None:
                self.on_freeze(unit_id, (now - u.frozen_at) * 1000)
            u.frozen_at = None
        if phase == "frozen":
            u.frozen_at = now
        if phase in CAPTURING and u.phase not in CAPTURING:
            u.log.clear()
            u.acked_seq = self.seq
            u.capture_epoch = self.epoch + 1
        if phase == "target" and u.owner != "target":
            u.owner, u.flips, u.cutover_at = "target", u.flips + 1, now
        elif phase in ("rolled_back", "source") and u.owner != "source":
            u.owner, u.flips = "source", u.flips + 1
        if phase in ("source", "done"):
            u.log.clear()
        if not u.log:
            self._drop_carried(unit_id)
        u.phase = phase
        return self._bump()

    def settled(self, unit_id: str, now: float | None = None) -> int:
        """Entries of the unit's log whose write has ended (or repair entries): what a drain
        must still apply before the owner may flip."""
        now = time.time() if now is None else now
        self._expire(now)
        return sum(1 for e in self.unit(unit_id).log if self._ended(e))

    def settle(self, unit_id: str, phase: Phase, may_switch: bool, force: bool,
               strict: bool = False, now: float | None = None) -> dict[str, Any]:
        """One look of a cutover waiting for a quiet moment (no write of the unit under way,
        every ended one applied). If quiet and ``may_switch`` (the caller has confirmed all
        it applied), switch the owner to ``phase`` at once: a freeze and a flip in one step,
        so no write ever waits. With ``force``, freeze, quiet or not, saying how many writes
        were under way (fenced when they end: see ``end_write``). Else say it is quiet (the
        caller confirms, outside any freeze, and looks again), or how many ended writes wait.
        ``strict``: force only once no ended write waits (writes under way may remain), so the
        freeze has nothing to drain unless one ends meanwhile.

        A unit that ``needs_repair`` (the router restarted since its last diff-and-repair: its
        log may have lost entries) is never quiet, and the answer says ``needs_repair``: the
        caller must repair it first (a freeze of it ends without a flip, see ``flip``)."""
        now = time.time() if now is None else now
        repair = self.unit(unit_id).needs_repair
        open_, waiting = self.open_leases(unit_id, now=now), self.settled(unit_id, now)
        quiet = not open_ and not waiting and not repair
        if quiet and may_switch:
            self.set_phase(unit_id, "frozen", now)
            self.set_phase(unit_id, phase, now)
            return {"state": "switched"}
        if force and not (strict and waiting):
            self.set_phase(unit_id, "frozen", now)
            out = {"state": "frozen", "quiet": quiet, "under_way": open_}
        else:
            out = {"state": "quiet"} if quiet else {"state": "waiting", "settled": waiting}
        return {**out, "needs_repair": True} if repair else out

    def lift_freeze(self, unit_id: str, phase: Phase, now: float | None = None) -> bool:
        """End a freeze without a flip; False if a flip came first."""
        frozen = self.unit(unit_id).phase == "frozen"
        if frozen:
            self.set_phase(unit_id, phase, now)
        return frozen

    def flip(self, unit_id: str, phase: Phase, now: float | None = None) -> bool:
        """End a freeze by flipping the owner (``phase`` target or rolled_back), unless an
        entry is settled and not applied (one that was settled before the freeze and not
        drained, or whose lease expired): after a flip it would be synced the wrong way. Then
        False: drain again. Entries of writes under way, or ended during the freeze, are fine:
        their clients are fenced at ``end_write`` and write again after the freeze.

        Also False while the unit ``needs_repair``: the router restarted during the switch, so
        writes that ended before the restart may have lost their entries and never reach the
        new owner. The switch then runs out of its freeze budget and lifts the freeze; the next
        attempt repairs the unit by diff first."""
        u = self.unit(unit_id)
        if u.phase != "frozen":
            raise TransitionError(f"unit {unit_id}: flip needs a frozen unit, not {u.phase}")
        if u.needs_repair or self.settled(unit_id, now):
            return False
        self.set_phase(unit_id, phase, now)
        return True

    def update_progress(self, unit_id: str, copied: int | None = None, total: int | None = None,
                        error: str | None = None) -> None:
        """Counters only: they do not change routing, so the epoch stays."""
        u = self.unit(unit_id)
        if copied is not None:
            u.copied = copied
        if total is not None:
            u.total = total
        if error is not None:
            u.last_error = error

    # --- client writes --------------------------------------------------------------------
    def begin_writes(self, requests: list[tuple[str, list[Any], Any]], whole: bool = False,
                     now: float | None = None, wide: bool = False) -> list[dict[str, Any]]:
        """``begin_write`` for several units: [(unit_id, ids, value)]. ``whole``: all or
        nothing; while any of the units is frozen none gets a lease (all "wait"), so a write
        spanning units waits for the freeze and then writes once, instead of writing its other
        units first and the frozen one again after the freeze (two engine writes, the second
        behind the freeze). ``wide``: the client asks to skip its look-up of where the ids
        live; granted (``"wide": True`` in every lease) only while the table is quiet (P2a)."""
        now = time.time() if now is None else now
        if whole and any(self._frozen(u, now) for u, _, _ in requests):
            return [{"status": "wait", "epoch": self.epoch} for _ in requests]
        out = [self.begin_write(u, ids, now, value) for u, ids, value in requests]
        if wide and self.quiet() and all(le["status"] == "ok" for le in out):
            for le in out:
                self.leases[le["token"]].wide = le["wide"] = True
        return out

    def quiet(self) -> bool:
        """No unit captures and every unit has one owner (all ``source``, or all ``done``):
        a write that moves a point to another tenant then has nothing to log, and the one
        owner's upsert by id replaces the old copy, so no look-up is needed (P2a)."""
        phases = {u.phase for u in self.units.values()}
        return phases <= {"source"} or phases == {"done"}

    def _frozen(self, unit_id: str, now: float) -> bool:
        u = self.units.get(unit_id)
        if u is None or u.phase != "frozen":
            return False
        if u.frozen_at is not None and now - u.frozen_at > self.freeze_timeout_s:
            # Whoever froze it is gone (a driver or worker died mid-cutover): lift the freeze.
            self.set_phase(unit_id, "catching_up" if u.owner == "source" else "target", now)
            return False
        return True

    def begin_write(self, unit_id: str, ids: list[Any], now: float | None = None,
                    value: Any = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        if unit_id not in self.units:
            self.add_unit(unit_id, value)
        u = self.units[unit_id]
        if self._frozen(unit_id, now):
            return {"status": "wait", "epoch": self.epoch}
        lease = Lease(self._check_numbers(next(self._tokens)), unit_id, self.epoch, u.flips,
                      now, owner=u.owner)
        self.last_lease_at = now
        if u.phase in CAPTURING:
            lease.ids = list(ids)
            if ids:
                u.marks.append((self.seq + 1, now))
            self._log(u, ids, lease.token)
            self.rows.opened(lease.token, ids, before_capture=any(
                (le.unit_id == unit_id or le.wide) and not le.ids
                for le in self.leases.values()))
        self.leases[lease.token] = lease
        return {"status": "ok", "token": lease.token, "owner": u.owner, "epoch": self.epoch,
                "phase": u.phase}

    def _check_numbers(self, number: int) -> int:
        if number > self._last_number:  # 2**40 writes or ids: never in practice
            raise RuntimeError("this router incarnation used up its tokens or sequence "
                               "numbers; kill the router actor (it restarts as a new one)")
        return number

    def end_write(self, token: int, rows: Any = None, nbytes: int = 0) -> dict[str, Any]:
        """Close a lease. ``valid`` is False when the owner changed meanwhile: write again.
        ``rows``: what the client wrote, when its write succeeded (see ``routing.client_rows``).

        A fenced lease that logged ids is not closed yet (``held``): its entries stay
        unsettled until the client ends it again, with its retry to the new owner, or it
        expires. Settled at once, an applier syncing the old owner could read the new one
        before the retry lands there and roll the old owner back for that moment."""
        lease = self.leases.get(token)
        if lease is None:  # expired, or issued before a router restart
            return {"valid": False, "epoch": self.epoch}
        u = self.units[lease.unit_id]
        valid = u.flips == lease.flips
        # A write that ends while its unit is frozen is fenced too, as if the flip had come
        # first: its client writes again once the freeze is over, to whichever owner it leaves.
        # So the freeze never waits for it to be drained, and the flip never refuses for it.
        if lease.ids and not lease.fenced and (not valid or u.phase == "frozen"):
            lease.fenced = True
            return {"valid": False, "epoch": self.epoch, "owner": u.owner, "held": True}
        del self.leases[token]
        overlapped = self._close(lease)
        if (valid and rows is not None and lease.ids and not overlapped
                and not self._near_restart(lease.issued_at)):
            self.rows.keep(token, Carried(lease.unit_id, lease.flips, rows, nbytes))
        return {"valid": valid, "epoch": self.epoch, "owner": u.owner}

    def _close(self, lease: Lease) -> bool:
        return self.rows.closed(lease.token, lease.ids)

    def _ended(self, e: LogEntry) -> bool:
        """Whether the entry's write has ended (a repair entry has no write)."""
        return e.token is None or e.token not in self.leases

    def _near_restart(self, issued_at: float) -> bool:
        """Leases from before a restart are unknown, so overlaps with them are too."""
        return self.restarted_at is not None and issued_at < self.restarted_at + self.lease_s

    def open_leases(self, unit_id: str, before_epoch: int | None = None,
                    now: float | None = None) -> int:
        """Leases of the unit still open (and not expired), optionally only older ones; wide
        leases count for every unit (P2a)."""
        now = time.time() if now is None else now
        self._expire(now)
        n = sum(1 for le in self.leases.values() if (le.unit_id == unit_id or le.wide)
                and (before_epoch is None or le.epoch < before_epoch))
        if self.restarted_at is not None and now - self.restarted_at < self.lease_s:
            n += 1  # leases given out before the restart are unknown: wait them out
        return n

    def written_sides(self, now: float | None = None) -> set[str]:
        """Sides some open lease's client may be writing now (the owner at its grant: a
        fenced lease's write may still be under way on the old owner). Both, for a while
        after a restart: leases given out before it are unknown."""
        now = time.time() if now is None else now
        self._expire(now)
        if self.restarted_at is not None and now - self.restarted_at < self.lease_s:
            return {"source", "target"}
        return {le.owner for le in self.leases.values()}

    def _expire(self, now: float) -> None:
        for tok in [t for t, le in self.leases.items() if now - le.issued_at > self.lease_s]:
            self._close(self.leases.pop(tok))

    # --- the change log -------------------------------------------------------------------
    def take_changes(self, unit_id: str, limit: int = 10_000, holder: str | None = None,
                     now: float | None = None, background: bool = False,
                     owner: Owner | None = None) -> tuple[list[Any], int]:
        """Distinct changed ids whose writes have ended, and a number to ack them with.

        An entry whose write is still under way is not handed out: read now, the owner might
        not hold that write yet, and acking the entry would lose it. One holder at a time
        applies a unit's log: two appliers could re-read an id at different times and write
        the older value last. Another holder gets ``([], -1)`` until the first acks (or its
        hold expires after a lease time). A ``background`` applier (a worker's follower) also
        gets ``([], -1)`` while the unit is frozen or reserved by someone else, so a cutover
        never waits behind it. ``owner``: the side the applier reads from; ``([], -1)`` once
        the unit is owned by the other (it flipped since the applier chose its direction: it
        would copy the old owner's values onto the new one)."""
        now = time.time() if now is None else now
        u = self.unit(unit_id)
        if owner is not None and u.owner != owner:
            return [], -1
        if (holder is not None and u.sync_holder not in (None, holder)
                and now - u.sync_since < self.lease_s):
            return [], -1
        if background and (u.phase == "frozen" or self._reserved(u, holder, now)
                           or now < self.followers_paused_until
                           or (now < self.followers_yield_until
                               and self.oldest_age(unit_id, now) < YIELD_MAX_AGE_S)):
            return [], -1
        self._expire(now)
        entries = [e for e in u.log if self._ended(e)][:limit]
        if not entries:
            u.sync_holder, u.taken = None, []
            return [], u.acked_seq
        if holder is not None:
            u.sync_holder, u.sync_since, u.sync_background = holder, now, background
        u.taken = [e.seq for e in entries]
        seen: dict[Any, None] = {}
        for e in entries:
            seen.setdefault(e.id, None)
        return list(seen), entries[-1].seq

    def carried_for(self, unit_id: str) -> list[tuple[list[Any], Any]]:
        """For the entries just handed out by ``take_changes``: (ids, rows) per client write
        whose rows stand for the owner's current value of those ids (see ``routing.client_rows``)."""
        u = self.unit(unit_id)
        taken = set(u.taken)
        return self.rows.for_entries((e for e in u.log if e.seq in taken), u.flips)

    def _drop_carried(self, unit_id: str) -> None:
        """Forget the rows of writes no entry of the unit's log names any more."""
        self.rows.drop_unused(unit_id, {e.token for e in self.unit(unit_id).log
                                        if e.token is not None})

    def _log(self, u: UnitRoute, ids: list[Any], token: int | None = None) -> None:
        self._check_numbers(self.seq + len(ids))
        for pid in ids:
            self.seq += 1
            u.log.append(LogEntry(self.seq, pid, token))
        for seen in u.watches.values():
            seen.update(ids)
        if u.phase == "rolled_back" and len(u.log) > ROLLED_BACK_MAX_LOG:
            # Nobody may follow a rolled-back unit for a long time (no driver runs): rather
            # than grow without bound in this actor's memory, its next preparation repairs it
            # by diff (P11, P13).
            u.log.clear()
            u.needs_repair = True
            self._drop_carried(u.unit_id)

    def log_ids(self, unit_id: str, ids: list[Any]) -> int:
        """Add ids to the unit's log as if written (a verify found them differing): the one
        applier of the log then repairs them, in order with the client writes."""
        u = self.unit(unit_id)
        self._log(u, ids)
        return len(u.log)

    def watch(self, unit_id: str, name: str) -> None:
        """Start noting every id the unit's log holds or gets, for ``watched``: a verify that
        lets appliers go on while it scans (see ``worker``)."""
        u = self.unit(unit_id)
        u.watches[name] = {e.id for e in u.log}

    def watched(self, unit_id: str, name: str) -> list[Any] | None:
        """Every id in the unit's log since ``watch(name)``: there then, logged since, or there
        now, and ends the watch. None when the watch is unknown (the router restarted since):
        the caller cannot tell which ids changed and must look again."""
        u = self.unit(unit_id)
        seen = u.watches.pop(name, None)
        return None if seen is None else list(seen | {e.id for e in u.log})

    def peek_changes(self, unit_id: str, limit: int = 10_000_000) -> list[Any]:
        """The distinct ids waiting in the log (settled or not), without taking them."""
        seen: dict[Any, None] = {}
        for e in self.unit(unit_id).log[:limit]:
            seen.setdefault(e.id, None)
        return list(seen)

    def ack_changes(self, unit_id: str, seq: int, holder: str | None = None) -> int:
        """Drop the entries handed out by the last ``take_changes`` (up to ``seq``): they are
        applied. Returns the remaining lag."""
        u = self.unit(unit_id)
        if holder is not None and u.sync_holder not in (None, holder):
            return len(u.log)  # a hold that expired and passed on: this apply did not count
        done = {s for s in u.taken if s <= seq}
        u.log = [e for e in u.log if e.seq not in done]
        self.oldest_age(unit_id)  # drops the marks of applied writes
        u.acked_seq = max(u.acked_seq, seq)
        u.sync_holder, u.taken = None, []
        if done:
            self._drop_carried(unit_id)
        return len(u.log)

    def lag(self, unit_id: str) -> int:
        return len(self.unit(unit_id).log)

    # --- persistence ----------------------------------------------------------------------
    def to_dict(self, logs: bool = True) -> dict[str, Any]:
        """The durable state; ``logs=False`` leaves out the change logs (``logs_dict``), which
        the router writes apart and less often: a restarted router repairs by diff anyway."""
        return {"epoch": self.epoch, "incarnation": self.incarnation, "seq": self.seq,
                "lease_s": self.lease_s,
                "freeze_timeout_s": self.freeze_timeout_s,
                "units": {k: v.to_row(logs) for k, v in self.units.items()}}

    def logs_dict(self) -> dict[str, list[list[Any]]]:
        return {k: [e.to_list() for e in u.log] for k, u in self.units.items() if u.log}

    @classmethod
    def from_dict(cls, d: dict[str, Any], restarted: bool = True,
                  now: float | None = None, clients_may_remain: bool = True) -> RoutingTable:
        """Rebuild from durable state, as the next incarnation (whose tokens and seqs exceed
        every one issued before; the caller persists it before serving). After a restart, logs
        may miss their newest entries: capturing units are marked for diff-and-repair. When
        clients of the old table may still hold leases (the actor restarted in the same
        cluster), freezes wait one lease time."""
        t = cls([], lease_s=d.get("lease_s", 30.0),
                freeze_timeout_s=d.get("freeze_timeout_s", 10.0),
                incarnation=d.get("incarnation", 0) + 1)
        for k, v in d["units"].items():
            u = UnitRoute.from_row(v)
            if restarted and u.phase in CAPTURING:
                u.needs_repair = True
            t.units[k] = u
        t.epoch = d["epoch"] + 1
        if restarted and clients_may_remain:
            t.restarted_at = time.time() if now is None else now
        return t

    def settling_s(self, now: float | None = None) -> float:
        """How long leases from before a restart may still be out."""
        if self.restarted_at is None:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, self.restarted_at + self.lease_s - now)

    def status(self) -> list[dict[str, Any]]:
        return [{**u.to_row(logs=False), "lag": len(u.log)} for u in self.units.values()]


