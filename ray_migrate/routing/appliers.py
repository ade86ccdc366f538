"""Who may apply change logs, and when: the rules by which a cutover, a compaction of the
target and the workers' followers keep out of each other's way.

Mixed into ``table.RoutingTable``, whose units, lease time and follower fields it reads and
sets; plain Python, tested through that table.
"""

from __future__ import annotations

import time
from typing import Any

from ray_migrate.routing.records import Owner, UnitRoute

# While a cutover runs, followers leave alone the units whose oldest waiting change is younger
# than this (``yield_followers``): a bound on how far behind a cutover lets them fall.
YIELD_MAX_AGE_S = 0.5


class ApplierGate:
    """Reservations for a cutover, the upkeep window, and pauses and yields of followers."""

    units: dict[str, UnitRoute]
    lease_s: float
    upkeep_until: float
    followers_paused_until: float
    followers_yield_until: float
    follow_holder: str | None
    follow_since: float

    def unit(self, unit_id: str) -> UnitRoute:
        raise NotImplementedError

    def take_changes(self, unit_id: str, limit: int = 10_000, holder: str | None = None,
                     now: float | None = None, background: bool = False,
                     owner: Owner | None = None) -> tuple[list[Any], int]:
        raise NotImplementedError

    # --- followers: one step at a time, over many units ------------------------------------
    def take_many(self, unit_ids: list[str], limit: int, holder: str,
                  now: float | None = None, owner: Owner | None = None
                  ) -> dict[str, tuple[list[Any], int]]:
        """``take_changes`` for a background holder over several units, up to ``limit`` ids
        in all: a follower applies them in one write, so the target gets few versions.
        ``owner``: the side it reads from; units owned by the other are left out.

        One follower step at a time, whichever worker runs it: two at once write the same
        LanceDB table together, and their commits conflict and retry (measured: steps of 1 to
        3 s instead of a few hundred ms). Another holder gets nothing until ``end_follow``
        (or a lease time, if its worker died)."""
        now = time.time() if now is None else now
        if self.follow_holder not in (None, holder) and now - self.follow_since < self.lease_s:
            return {}
        out: dict[str, tuple[list[Any], int]] = {}
        left = limit
        for uid in unit_ids:
            if left <= 0:
                break
            ids, seq = self.take_changes(uid, left, holder, now, background=True, owner=owner)
            if ids:
                out[uid] = (ids, seq)
                left -= len(ids)
        if out:
            self.follow_holder, self.follow_since = holder, now
        return out

    def end_follow(self, holder: str) -> None:
        if self.follow_holder == holder:
            self.follow_holder = None

    def oldest_age(self, unit_id: str, now: float | None = None) -> float:
        """Seconds since the write of the oldest change in the unit's log began (0 for an
        empty log, or when unknown: entries from before a restart or of a repair)."""
        now = time.time() if now is None else now
        u = self.unit(unit_id)
        if not u.log:
            u.marks.clear()
            return 0.0
        first = u.log[0].seq
        drop = 0
        while drop + 1 < len(u.marks) and u.marks[drop + 1][0] <= first:
            drop += 1
        del u.marks[:drop]
        return now - u.marks[0][1] if u.marks and u.marks[0][0] <= first else 0.0

    def lags(self, now: float | None = None) -> dict[str, tuple[str, int, bool, float]]:
        """Per unit (phase, waiting entries, reserved, age of the oldest waiting change in
        seconds): what followers poll."""
        now = time.time() if now is None else now
        return {k: (u.phase, len(u.log), self._reserved(u, None, now), self.oldest_age(k, now))
                for k, u in self.units.items()}

    # --- cutovers, upkeep and the followers' manners ------------------------------------

    def _reserved(self, u: UnitRoute, holder: str | None, now: float) -> bool:
        return (u.reserved_by is not None and u.reserved_by != holder
                and now - u.reserved_at < self.lease_s)

    def reserve(self, unit_id: str, holder: str, now: float | None = None) -> bool:
        """Hold the unit for ``holder`` (a cutover or rollback about to start): background
        appliers stop taking its log. Returns whether the unit is now held for ``holder`` and
        the applier that may still hold the log is done (``sync_holder`` free or ours); the
        caller waits for that before it drains. False while another cutover holds it: a
        reservation lapses after a lease time, so a cutover that died blocks nobody for long."""
        now = time.time() if now is None else now
        u = self.unit(unit_id)
        if self._reserved(u, holder, now) or now < self.upkeep_until:
            return False
        u.reserved_by, u.reserved_at = holder, now
        return u.sync_holder in (None, holder) or now - u.sync_since >= self.lease_s

    def release(self, unit_id: str, holder: str) -> None:
        u = self.unit(unit_id)
        if u.reserved_by == holder:
            u.reserved_by = None

    def begin_upkeep(self, seconds: float, now: float | None = None) -> bool:
        """A compaction of the target may start: no unit is frozen or reserved for a cutover,
        and none is reserved until ``end_upkeep`` (or ``seconds``, if the driver died). A
        compaction rewrites the target's files and takes the CPU; a freeze must not share the
        machine with it."""
        now = time.time() if now is None else now
        if any(u.phase == "frozen" or self._reserved(u, None, now) for u in self.units.values()):
            return False
        self.upkeep_until = now + seconds
        return True

    def end_upkeep(self) -> None:
        self.upkeep_until = 0.0

    def pause_followers(self, seconds: float, now: float | None = None) -> None:
        """Background appliers take nothing for ``seconds`` (0 resumes them): a compaction of
        the target fails on every concurrent update, so the driver pauses them meanwhile."""
        now = time.time() if now is None else now
        self.followers_paused_until = now + seconds if seconds > 0 else 0.0

    def yield_followers(self, seconds: float, now: float | None = None) -> None:
        """Background appliers leave alone, for ``seconds`` (0 ends it), every unit whose
        oldest waiting change is younger than ``YIELD_MAX_AGE_S``: a cutover runs and should
        not share the machine with them, but a waiting unit may not fall further behind than
        that."""
        now = time.time() if now is None else now
        self.followers_yield_until = now + seconds if seconds > 0 else 0.0

    def followers_busy(self, now: float | None = None) -> bool:
        """Whether a follower holds some unit's log (its step is under way)."""
        now = time.time() if now is None else now
        return any(u.sync_background and u.sync_holder is not None
                   and now - u.sync_since < self.lease_s for u in self.units.values())
