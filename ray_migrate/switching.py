"""A unit worker's cutover or rollback of one unit: hold the unit, settle it, then switch.

``cutover.switch_unit`` does the switch itself (freeze, drain, flip); here a worker reserves
the unit so followers step aside, lifts a freeze a dead switch left, refuses a unit in the
wrong phase, repairs an unsettled log, and picks the owner and the other side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ray_migrate.backends import Backend
from ray_migrate.cutover import Direction, switch_result, switch_unit
from ray_migrate.errors import TerminalError
from ray_migrate.priority import urgent
from ray_migrate.routing.records import Owner
from ray_migrate.units import UnitSpec

if TYPE_CHECKING:
    from ray_migrate.worker import UnitWorker

log = logging.getLogger(__name__)


class UnitSwitch:
    """One cutover or rollback (``way``) of one unit by ``worker``."""

    def __init__(self, worker: UnitWorker, spec: UnitSpec, way: Direction):
        self.worker, self.spec, self.way = worker, spec, way
        self.router = worker.router
        # Who holds the unit (its reservation and its log): one switch at a time runs in a
        # worker (its tasks run one by one).
        self.holder = f"switch:{worker.who}"

    def run(self) -> dict[str, Any]:
        """Move the unit's ownership ``way``, holding the unit meanwhile; an unsettled log
        (``needs_repair``) is diffed and repaired first."""
        spec, way, w = self.spec, self.way, self.worker
        # Writers of the unit wait for its freeze: the switch runs at normal CPU priority,
        # while copy and verify keep the low one Ray gives workers.
        with urgent(), self._reserved() as held:
            if not held:
                return switch_result(spec, False, "another cutover or rollback holds the unit, "
                                     "or a catch-up step on it did not end in time")
            phase = self._phase()
            if phase == "frozen":
                phase = self._lift_orphaned()
            if phase in way.already:
                return switch_result(spec, True, way.already_says.format(phase=phase))
            transform = w.forward if way.owner == "source" else w.inverse
            if transform is None:
                raise TerminalError(f"unit {spec.unit_id}: the transform has no inverse, so "
                                    f"the source was not kept in sync; {way.name} is refused")
            if phase not in way.start:
                raise TerminalError(way.refuses.format(unit=spec.unit_id, phase=phase))
            if not self._repaired():
                return switch_result(spec, False, way.differs)
            owner, other = self._sides(way.owner)
            cut = w.cfg.cutover
            return switch_unit(self.router, owner, other, transform, way.to_phase,
                               way.back_phase, cut.max_freeze_ms, cut.ready_lag,
                               self.holder).to_dict()

    def _phase(self) -> str:
        return self.router.call("unit", self.spec.unit_id)["phase"]

    @contextmanager
    def _reserved(self) -> Iterator[bool]:
        """Hold the unit for a cutover or rollback: followers step aside meanwhile."""
        try:
            yield bool(self.router.call("reserve", self.spec.unit_id, self.holder))
        finally:
            self.router.call("release", self.spec.unit_id, self.holder)

    def _lift_orphaned(self) -> str:
        """The unit is frozen while this switch holds it: the switch that froze it died (a
        freeze lasts ``max_freeze_ms``, far less than a reservation). Lift the freeze now,
        rather than let the unit's writers wait for the router's stale-freeze timeout; the
        unit stays with its owner and this switch goes on from there. Returns the phase."""
        unit_id = self.spec.unit_id
        st = self.router.call("unit", unit_id)
        back = "catching_up" if st["owner"] == "source" else "target"
        if self.router.call("lift_freeze", unit_id, back):
            log.warning("unit %s: lifted the freeze of a switch that died in it", unit_id)
        return self._phase()

    def _repaired(self) -> bool:
        """Wait out leases from before a router restart; then, if the unit's log may lack
        writes (``needs_repair``: the router restarted while capturing, or the unit came back
        to capture from a phase that did not), diff and repair it. False: a difference is left."""
        unit_id = self.spec.unit_id
        time.sleep(self.router.call("settling_s"))
        if not self.router.call("unit", unit_id)["needs_repair"]:
            return True
        if not self.worker._verify_live(self.spec, reverse=self.way.owner == "target").equal:
            return False
        self.router.call("clear_repair", unit_id)
        return True

    def _sides(self, owner: Owner
               ) -> tuple[tuple[Backend, UnitSpec], tuple[Backend, UnitSpec]]:
        """(the owner, the other side), each as (backend, the unit in that backend's terms)."""
        w, spec = self.worker, self.spec
        source, target = (w.source, spec), (w.target, w.forward.target_unit(spec))
        return (source, target) if owner == "source" else (target, source)
