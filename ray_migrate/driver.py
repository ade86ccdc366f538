"""The driver: a whole run in order (``run_migration``), and a verify (``verify_migration``).

Its steps are ``migration.Migration``'s (plan, target, router and workers, prepare the units,
finalize the target), then ``waves``' (cut over wave by wave, hold the rollback window) while
``upkeep`` compacts the target (and a LanceDB source) while live.

The driver holds no state that matters: the plan, checkpoints, routing table and reports are
under ``state_uri``, so a driver that dies is replaced by running the same command again.

Who owns what: the driver that runs the migration holds its lease (``lease``) for as long as it
runs and owns the unit workers, which die with it. The router is detached and outlives every
driver. The other commands (verify, cutover, rollback) hold no lease and start no actors: they
work in their own process through the running router, so they never disturb a run.
"""

from __future__ import annotations

from collections.abc import Callable

from ray_migrate.config import MigrationConfig
from ray_migrate.finalize import OverlappedFinalize
from ray_migrate.migration import Migration, connect, release_local_stores
from ray_migrate.report import RunReport
from ray_migrate.upkeep import LiveUpkeep
from ray_migrate.waves import cutover_in_waves, hold_rollback_window

__all__ = ["Migration", "connect", "release_local_stores", "run_migration", "verify_migration"]


def run_migration(cfg: MigrationConfig, address: str | None = None,
                  release_stores: bool = True,
                  on_started: Callable[[Migration], None] | None = None) -> RunReport:
    """Migrate every unit; in auto mode cut them over in waves. Safe to run again: it resumes,
    and a finished migration is a no-op. ``on_started`` runs once the router is up."""
    m = Migration(cfg, address)
    try:
        m.start()  # steps 1 to 3: plan, target, router, lease and workers
        if on_started is not None:
            on_started(m)
        # Step 4: capture, copy and catch up every unit, then verify them; step 5 (compact
        # and index the bulk-loaded target) starts once every copy ended, beside the verifies.
        with OverlappedFinalize(m) as fin:
            m.prepare_units(on_copied=fin.copied)
            fin.prepared()
        m.check_lease()
        if cfg.cutover.mode == "auto":  # a failed unit stays; the others go (``waves``)
            with LiveUpkeep(m):  # step 6: the waves, then the rollback window
                cutover_in_waves(m)
                for _ in range(3):  # tenants first written during the waves are units too
                    if m.stopped_by_gate:  # an SLO breach stopped the rollout (``slo``)
                        break
                    new = m.new_units()
                    if not new:
                        break
                    m.prepare_units(new)
                    cutover_in_waves(m)
                hold_rollback_window(m)
    finally:
        report = m.close(release_stores)
    return report


def verify_migration(cfg: MigrationConfig, address: str | None = None,
                     release_stores: bool = True, parity: bool = False) -> RunReport:
    """Verify every unit of a planned migration without copying anything; a run going on
    meanwhile is not disturbed (no lease, no actor started). ``parity``: measure query
    parity too (also when ``verify.parity`` is set)."""
    m = Migration(cfg, address, command="verify")
    try:
        m.start(workers=False)
        m.verify_units(parity=parity)
    finally:
        report = m.close(release_stores)
    return report
