"""A unit's verify while writes and their catch-up go on, and its repair rounds.

``verify.verify_unit`` compares the two sides; here the router's watch of the unit's change log
says which differences are writes still on their way, and the others are repaired through the
log, in order with client writes (P6 in docs/PROTOCOL.md).
"""

from __future__ import annotations

import logging
import uuid

from ray_migrate.catchup import UnitSync
from ray_migrate.config import MigrationConfig
from ray_migrate.routing.actor import RouterHandle
from ray_migrate.verify import UnitVerdict, verify_unit

log = logging.getLogger(__name__)


def verify_live(sync: UnitSync, router: RouterHandle, unit_id: str,
                cfg: MigrationConfig) -> UnitVerdict:
    """Verify while writes and their catch-up go on: a difference is fine only if its id
    was in the change log at some moment of the verify (``RoutingTable.watch``). Such an
    id is either still waiting, so the catch-up or the drain at cutover applies it, or
    was applied meanwhile, by a re-read of the owner after its write ended, which is the
    value a scan on either side may have missed. Any other differing id is added to the
    log, so the log's one applier repairs it in order with client writes (a repair of its
    own could write an older value over a newer one), and the unit is verified again.
    ``sync``: the unit's catch-up from its owner to the copy (either direction)."""
    batch = max(cfg.copy_cfg.batch_size, 1000)
    verdict: UnitVerdict | None = None
    for _ in range(cfg.verify.max_repair_rounds + 1):
        name = f"verify:{uuid.uuid4().hex}"
        router.call("watch", unit_id, name)
        verdict = verify_unit(sync.unit, sync.owner, sync.other, sync.transform, batch)
        touched = router.call("watched", unit_id, name)
        if touched is None:  # the router restarted meanwhile: look again
            log.warning("unit %s: the router lost the verify's watch; verifying again", unit_id)
            continue
        if verdict.equal:
            return verdict
        explained = set(touched)
        differ = verdict.missing_ids + verdict.extra_ids + verdict.changed_ids
        unexplained = [i for i in differ if i not in explained]
        if not unexplained:
            verdict.equal, verdict.pending = True, len(differ)
            return verdict
        log.warning("unit %s: repairing %d ids that differ", unit_id, len(unexplained))
        router.call("log_ids", unit_id, unexplained)
        sync.until(cfg.cutover.ready_lag, timeout_s=30)
    assert verdict is not None  # max_repair_rounds >= 0: one verify at least
    return verdict
