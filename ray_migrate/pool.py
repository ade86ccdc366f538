"""The unit workers as a pool of Ray actors: start them, and run one method per unit on them.

``worker.UnitWorker`` holds the logic; here it becomes named actors, which only the holder of
the migration's driver lease starts, and the driver hands them units one at a time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ray_migrate.cluster import worker_needs
from ray_migrate.config import MigrationConfig
from ray_migrate.errors import ClusterError, TerminalError
from ray_migrate.lease import DriverLease, describe
from ray_migrate.plan import Plan
from ray_migrate.units import UnitSpec
from ray_migrate.worker import NAMESPACE, UnitWorker, worker_name

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0
# glibc's malloc keeps one arena per thread (8 x cores), each holding freed memory: with
# Lance's scan and write threads a worker's peak grew with the source (1M vs 100k points:
# 542 vs 393 MB, 436 vs 366 MB with 2 arenas and SCAN_CACHE).
WORKER_ENV = {"MALLOC_ARENA_MAX": "2"}
MAX_UNIT_ATTEMPTS = 3


def start_workers(cfg: MigrationConfig, plan: Plan, count: int, lease: DriverLease
                  ) -> list[Any]:
    """Start ``count`` named worker actors; a killed one restarts and retries its task. Only
    the holder of the driver lease starts them: a worker of the same name still there is a
    leftover of a driver that is dead (its lease lapsed), never of a live one."""
    import ray

    if not lease.held:
        raise TerminalError(f"migration {cfg.migration_id!r}: workers are started only by the "
                            "driver that holds the migration's lease")
    count = _fitting(cfg, count)
    actor_cls = ray.remote(UnitWorker)
    options = _actor_options(cfg)
    plan_dict = plan.to_dict()
    workers = []
    for i in range(count):
        name = worker_name(cfg.migration_id, i)
        stale = _existing(name)
        if stale is not None:
            log.warning("killing leftover worker %s of a dead driver%s", name,
                        f" ({describe(lease.replaced)})" if lease.replaced else "")
            ray.kill(stale, no_restart=True)
            _wait_gone(name)
        workers.append(actor_cls.options(name=name, **options).remote(cfg, plan_dict, i,
                                                                      follow=True))
    ready, pending = ray.wait([w.ready.remote() for w in workers], num_returns=len(workers),
                              timeout=READY_TIMEOUT_S)
    if pending:
        for w in workers:
            ray.kill(w, no_restart=True)
        raise ClusterError(
            f"{len(pending)} of {len(workers)} unit workers did not start within "
            f"{READY_TIMEOUT_S:.0f}s: the cluster lacks the resources in "
            f"copy.worker_resources ({worker_needs(cfg)}; see `ray status`)")
    return workers


def _actor_options(cfg: MigrationConfig) -> dict[str, Any]:
    res = cfg.copy_cfg.worker_resources
    options: dict[str, Any] = {
        "namespace": NAMESPACE,
        "num_cpus": res.num_cpus,
        "max_restarts": 4,
        "max_task_retries": 4,
        "runtime_env": {"env_vars": dict(WORKER_ENV)},  # merged with the job's env_vars
    }
    if res.memory_mb:
        options["memory"] = res.memory_mb * 1024 * 1024
    if res.resources:
        options["resources"] = dict(res.resources)
    return options


def _fitting(cfg: MigrationConfig, count: int) -> int:
    """As many of ``count`` workers as the cluster's CPUs hold."""
    import ray

    res = cfg.copy_cfg.worker_resources
    cpus = ray.cluster_resources().get("CPU", 0)
    if res.num_cpus > 0 and count * res.num_cpus > cpus:
        fit = max(1, int(cpus // res.num_cpus))
        log.warning("copy.workers=%d with %.1f CPU each does not fit the cluster's %.0f CPUs; "
                    "starting %d (lower copy.worker_resources.num_cpus to run more)",
                    count, res.num_cpus, cpus, fit)
        return fit
    return count


def _wait_gone(name: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _existing(name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)


def _existing(name: str) -> Any:
    import ray

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def run_on_pool(workers: list[Any], method: str, units: list[UnitSpec],
                on_result: Callable[[UnitSpec, Any], None], **kwargs: Any) -> dict[str, str]:
    """Run ``method`` for every unit (with ``kwargs``), each worker one unit at a time; return
    errors by unit.

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
            ref = getattr(workers[w], method).remote(unit.to_dict(), **kwargs)
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
