"""The driver: plan, prepare the target, run units over a pool of worker actors, verify, report.

The driver holds no state that matters: the plan, checkpoints and reports are under
``state_uri``, so a driver that dies is replaced by running the same command again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ray_migrate.backends import Backend, open_backend
from ray_migrate.config import MigrationConfig
from ray_migrate.plan import Plan, load_or_make_plan, save_plan
from ray_migrate.report import RunReport, UnitReport
from ray_migrate.state import StateStore
from ray_migrate.units import UnitSpec
from ray_migrate.worker import NAMESPACE, start_workers

log = logging.getLogger(__name__)

REPORT_KEY = "report.json"
FINALIZED_KEY = "finalized.json"
MAX_UNIT_ATTEMPTS = 3


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` (or RAY_ADDRESS / a running local one), else start one."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=True,
             configure_logging=False)


def prepare_target(cfg: MigrationConfig, plan: Plan) -> Backend:
    """Create the target from the plan, or check that the existing one can hold the source."""
    target = open_backend(cfg.target, payload_schema=plan.target_info.payload_schema)
    if target.exists():
        target.check_compatible(plan.target_info)
        log.info("target %s exists and can hold the source", cfg.target.name)
    else:
        target.create(plan.target_info)
        log.info("created target %s", cfg.target.name)
    return target


def run_on_pool(workers: list[Any], method: str, units: list[UnitSpec],
                on_result: Callable[[UnitSpec, Any], None]) -> dict[str, str]:
    """Run ``method`` for every unit, each worker one unit at a time; return errors by unit.

    A task whose actor died (after Ray's own restarts and task retries) goes back on the queue,
    up to MAX_UNIT_ATTEMPTS; other errors are collected, not raised, so every unit is tried.
    """
    import ray
    from ray.exceptions import RayActorError

    queue = deque(units)
    attempts: dict[str, int] = {}
    running: dict[Any, tuple[UnitSpec, int]] = {}
    idle = list(range(len(workers)))
    errors: dict[str, str] = {}
    while queue or running:
        while queue and idle:
            unit, w = queue.popleft(), idle.pop()
            attempts[unit.unit_id] = attempts.get(unit.unit_id, 0) + 1
            ref = getattr(workers[w], method).remote(unit.to_dict())
            running[ref] = (unit, w)
        done, _ = ray.wait(list(running), num_returns=1)
        unit, w = running.pop(done[0])
        idle.append(w)
        try:
            on_result(unit, ray.get(done[0]))
        except RayActorError as err:
            if attempts[unit.unit_id] < MAX_UNIT_ATTEMPTS:
                log.warning("unit %s: worker %d died (%s); trying again", unit.unit_id, w, err)
                queue.append(unit)
            else:
                errors[unit.unit_id] = f"worker died {MAX_UNIT_ATTEMPTS} times: {err}"
        except Exception as err:  # noqa: BLE001 - reported per unit
            cause = getattr(err, "cause", None) or err
            log.error("unit %s: %s failed: %s", unit.unit_id, method, cause)
            errors[unit.unit_id] = f"{type(cause).__name__}: {cause}"
    return errors


def _copy_all(workers: list[Any], units: list[UnitSpec], rows: dict[str, UnitReport]) -> None:
    done = [0]

    def on_result(unit: UnitSpec, res: dict[str, Any]) -> None:
        done[0] += 1
        row = rows[unit.unit_id]
        row.status, row.copied, row.copied_now = res["status"], res["copied"], res["copied_now"]
        row.seconds, row.points_per_s = res["seconds"], res["points_per_s"]
        log.info("copy %d/%d: unit %s %s, %d points (%.0f points/s)", done[0], len(units),
                 unit.unit_id, res["status"], res["copied_now"], res["points_per_s"])

    for unit_id, error in run_on_pool(workers, "copy", units, on_result).items():
        rows[unit_id].status, rows[unit_id].error = "failed", error


def _verify_all(workers: list[Any], units: list[UnitSpec], rows: dict[str, UnitReport]) -> None:
    def on_result(unit: UnitSpec, v: dict[str, Any]) -> None:
        row = rows[unit.unit_id]
        for key in ("source_count", "target_count", "source_checksum", "target_checksum",
                    "equal", "differing_buckets", "missing_ids", "extra_ids", "changed_ids"):
            setattr(row, key, v[key])
        if not v["equal"]:
            log.error("unit %s differs: source %d points, target %d", unit.unit_id,
                      v["source_count"], v["target_count"])

    for unit_id, error in run_on_pool(workers, "verify", units, on_result).items():
        rows[unit_id].error = f"verify failed: {error}"
        rows[unit_id].equal = False


def _finalize(cfg: MigrationConfig, target: Backend, store: StateStore,
              copied_now: int) -> dict[str, Any]:
    """Compact and index a LanceDB target once after the bulk load (again only if new data)."""
    if copied_now == 0 and store.read(FINALIZED_KEY) is not None:
        return {"skipped": "nothing new was copied"}
    result = target.finalize(cfg.lance)
    store.write(FINALIZED_KEY, {"at": time.time(), **result})
    return result


def run_migration(cfg: MigrationConfig, address: str | None = None,
                  release_stores: bool = True) -> RunReport:
    """Copy and verify every unit. Safe to run again: it resumes, and a finished run is a no-op."""
    connect(address)
    store = StateStore(cfg.state_uri, cfg.migration_id)
    report = RunReport(migration_id=cfg.migration_id)
    source = open_backend(cfg.source)
    try:
        # Step 1: plan (or reuse the stored plan, so unit ids and checkpoints stay valid).
        plan = load_or_make_plan(cfg, source, store, save=False)
        report.warnings = list(plan.warnings)
        rows = {u.unit_id: UnitReport(unit_id=u.unit_id) for u in plan.units}
        report.units = list(rows.values())
        log.info("migration %s: %d units, %d points", cfg.migration_id, len(plan.units),
                 plan.source_info.count)
        # Step 2: prepare the target before anything is written.
        target = prepare_target(cfg, plan)
        save_plan(plan, store)
        # Step 3: the worker pool.
        workers = start_workers(cfg, plan, min(cfg.copy_cfg.workers, max(len(plan.units), 1)))
        try:
            # Step 4: copy every unit (resuming from checkpoints).
            _copy_all(workers, plan.units, rows)
            # Step 5: compact and index the target after the bulk load.
            report.finalize = _finalize(cfg, target, store, report.total_copied_now)
            # Step 6: verify each copied unit.
            if cfg.verify.enabled:
                ok_units = [u for u in plan.units if rows[u.unit_id].status != "failed"]
                _verify_all(workers, ok_units, rows)
        finally:
            _stop(workers)
    finally:
        if release_stores:
            release_local_stores(cfg)
    # Step 7: report.
    report.finished_at = time.time()
    store.write(REPORT_KEY, report.model_dump(mode="json"))
    return report


def verify_migration(cfg: MigrationConfig, address: str | None = None,
                     release_stores: bool = True) -> RunReport:
    """Verify every unit of a planned migration without copying anything."""
    connect(address)
    store = StateStore(cfg.state_uri, cfg.migration_id)
    report = RunReport(migration_id=cfg.migration_id, command="verify")
    try:
        plan = load_or_make_plan(cfg, open_backend(cfg.source), store)
        rows = {u.unit_id: UnitReport(unit_id=u.unit_id, status="skipped") for u in plan.units}
        report.units = list(rows.values())
        workers = start_workers(cfg, plan, min(cfg.copy_cfg.workers, max(len(plan.units), 1)))
        try:
            _verify_all(workers, plan.units, rows)
        finally:
            _stop(workers)
    finally:
        if release_stores:
            release_local_stores(cfg)
    report.finished_at = time.time()
    store.write("verify.json", report.model_dump(mode="json"))
    return report


def _stop(workers: list[Any]) -> None:
    import ray

    for w in workers:
        ray.kill(w, no_restart=True)


def release_local_stores(cfg: MigrationConfig) -> None:
    """Let go of Qdrant local folders so other processes can open them after the run."""
    from ray_migrate.backends.qdrant_host import release_hosted_qdrant

    for ep in (cfg.source, cfg.target):
        if ep.kind == "qdrant" and ep.path:
            release_hosted_qdrant(ep.path)
