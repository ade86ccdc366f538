"""Cutover (and rollback) of one unit behind a short write freeze.

Step 1: freeze the unit: new writes wait at the router.
Step 2: wait until every write already under way has ended (its lease closed).
Step 3: drain the last captured changes to the new owner's side.
Step 4: confirm: the unit's counts on both sides, and the content of every drained id.
Step 5: flip the owner, which also lifts the freeze.
If any step fails, or the freeze would last longer than ``max_freeze_ms``, the freeze is lifted
and the unit stays with its owner; the caller catches up and tries again later.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from ray_migrate.backends.base import Backend
from ray_migrate.catchup import UnitSync
from ray_migrate.checksum import Digest
from ray_migrate.router import RouterHandle
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)


@dataclass
class CutoverResult:
    unit_id: str
    ok: bool
    freeze_ms: float
    drained: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Abort(Exception):
    pass


def _confirm(sync: UnitSync, owner_unit: UnitSpec, other_unit: UnitSpec,
             ids: set[Any]) -> None:
    owner_n, other_n = sync.owner.count(owner_unit), sync.other.count(other_unit)
    if owner_n != other_n:
        raise Abort(f"counts differ after the drain: {owner_n} on the owner, {other_n} on the "
                    "other side")
    if not ids:
        return
    want = Digest().add(sync.other.stored_form(sync.transform.apply(sync.owner.fetch(list(ids)))))
    have = Digest().add(sync.other.fetch(list(ids)))
    if want.count != have.count or want.total != have.total:
        raise Abort(f"the {len(ids)} drained ids differ between the two sides")


def switch_unit(router: RouterHandle, owner: tuple[Backend, UnitSpec],
                other: tuple[Backend, UnitSpec], transform: Transform, to_phase: str,
                back_phase: str, max_freeze_ms: int) -> CutoverResult:
    """Move ownership of a unit from ``owner`` to ``other``, each given as (backend, the unit
    in that backend's terms); ``transform`` maps owner rows to the other side."""
    unit, other_unit = owner[1], other[1]
    budget = max_freeze_ms / 1000
    sync = UnitSync(unit, router, owner[0], other[0], transform)
    start = time.perf_counter()
    drained: set[Any] = set()
    # Step 1: freeze.
    router.call("set_phase", unit.unit_id, "frozen")
    try:
        # Step 2: writes under way end first (a stale writer is fenced at end_write anyway).
        if not router.call("wait_leases", unit.unit_id, None, budget):
            raise Abort("writes were still under way when the freeze budget ran out")
        # Step 3: drain.
        left, drained = sync.until(0, max(budget - (time.perf_counter() - start), 0.0))
        if left:
            raise Abort(f"{left} changes still waiting when the freeze budget ran out")
        # Step 4: confirm.
        _confirm(sync, unit, other_unit, drained)
        freeze_ms = (time.perf_counter() - start) * 1000
        if freeze_ms > max_freeze_ms:
            raise Abort(f"the freeze would last {freeze_ms:.0f} ms (max_freeze_ms "
                        f"{max_freeze_ms})")
        # Step 5: flip (this lifts the freeze).
        router.call("set_phase", unit.unit_id, to_phase)
    except Abort as why:
        router.call("set_phase", unit.unit_id, back_phase)
        freeze_ms = (time.perf_counter() - start) * 1000
        log.warning("unit %s: switch to %s aborted after %.0f ms: %s", unit.unit_id, to_phase,
                    freeze_ms, why)
        return CutoverResult(unit.unit_id, False, freeze_ms, len(drained), str(why))
    except BaseException:
        router.call("set_phase", unit.unit_id, back_phase)
        raise
    log.info("unit %s: %s after a %.0f ms freeze (%d ids drained)", unit.unit_id, to_phase,
             freeze_ms, len(drained))
    return CutoverResult(unit.unit_id, True, freeze_ms, len(drained))
