"""Who may apply change logs, and when: the rules by which a cutover, a compaction of the
target and the workers' followers keep out of each other's way.

Mixed into ``table.RoutingTable``, whose units, lease time and follower fields it reads and
sets; plain Python, tested through that table.
"""

from __future__ import annotations

import time

from ray_migrate.routing.records import UnitRoute


class ApplierGate:
    """Reservations for a cutover, the upkeep window, and pauses and yields of followers."""

    units: dict[str, UnitRoute]
    lease_s: float
    upkeep_until: float
    followers_paused_until: float
    followers_yield_until: float

    def unit(self, unit_id: str) -> UnitRoute:
        raise NotImplementedError

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
