"""Unit workers: a plain class with the logic, and a Ray actor facade around it.

Each worker opens its own backends inside its own process (clients never cross Ray); a Qdrant
local folder is reached through the actor that owns it. Workers take small picklable unit
descriptions and return small dicts.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ray_migrate.backends import Backend, open_backend
from ray_migrate.config import MigrationConfig
from ray_migrate.copy import copy_unit
from ray_migrate.plan import Plan
from ray_migrate.state import StateStore
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec
from ray_migrate.verify import verify_unit

log = logging.getLogger(__name__)

NAMESPACE = "ray_migrate"
READY_TIMEOUT_S = 120.0


def worker_name(migration_id: str, index: int) -> str:
    return f"rm:{migration_id}:worker:{index}"


class UnitWorker:
    """Takes units through the phases. Usable without Ray (tests, single-process runs)."""

    def __init__(self, cfg: MigrationConfig, plan: dict[str, Any], index: int = 0):
        self.cfg = cfg
        self.plan = Plan.from_dict(plan)
        self.index = index
        self.store = StateStore(cfg.state_uri, cfg.migration_id)
        self.transform = Transform(cfg.transform)
        self._source: Backend | None = None
        self._target: Backend | None = None

    @property
    def source(self) -> Backend:
        if self._source is None:
            self._source = open_backend(self.cfg.source)
        return self._source

    @property
    def target(self) -> Backend:
        if self._target is None:
            self._target = open_backend(self.cfg.target,
                                        payload_schema=self.plan.target_info.payload_schema)
        return self._target

    def ready(self) -> dict[str, Any]:
        return {"index": self.index, "pid": os.getpid()}

    def copy(self, unit: dict[str, Any]) -> dict[str, Any]:
        spec = UnitSpec.from_dict(unit)
        result = copy_unit(spec, self.source, self.target, self.transform, self.store,
                           self.cfg.copy_cfg)
        return {**result.to_dict(), "points_per_s": result.points_per_s, "worker": self.index}

    def verify(self, unit: dict[str, Any]) -> dict[str, Any]:
        spec = UnitSpec.from_dict(unit)
        verdict = verify_unit(spec, self.source, self.target, self.transform,
                              batch_size=max(self.cfg.copy_cfg.batch_size, 1000))
        return verdict.to_dict()


def start_workers(cfg: MigrationConfig, plan: Plan, count: int) -> list[Any]:
    """Start ``count`` named worker actors; a killed one restarts and retries its task."""
    import ray

    res = cfg.copy_cfg.worker_resources
    options: dict[str, Any] = {
        "namespace": NAMESPACE,
        "num_cpus": res.num_cpus,
        "max_restarts": 4,
        "max_task_retries": 4,
    }
    if res.memory_mb:
        options["memory"] = res.memory_mb * 1024 * 1024
    if res.resources:
        options["resources"] = dict(res.resources)
    cpus = ray.cluster_resources().get("CPU", 0)
    if res.num_cpus > 0 and count * res.num_cpus > cpus:
        fit = max(1, int(cpus // res.num_cpus))
        log.warning("copy.workers=%d with %.1f CPU each does not fit the cluster's %.0f CPUs; "
                    "starting %d (lower copy.worker_resources.num_cpus to run more)",
                    count, res.num_cpus, cpus, fit)
        count = fit
    actor_cls = ray.remote(UnitWorker)
    plan_dict = plan.to_dict()
    workers = []
    for i in range(count):
        name = worker_name(cfg.migration_id, i)
        stale = _existing(name)
        if stale is not None:
            log.warning("killing leftover worker %s from an earlier driver", name)
            ray.kill(stale, no_restart=True)
            _wait_gone(name)
        workers.append(actor_cls.options(name=name, **options).remote(cfg, plan_dict, i))
    ready, pending = ray.wait([w.ready.remote() for w in workers], num_returns=len(workers),
                              timeout=READY_TIMEOUT_S)
    if pending:
        from ray_migrate.errors import TerminalError

        for w in workers:
            ray.kill(w, no_restart=True)
        raise TerminalError(
            f"{len(pending)} of {len(workers)} unit workers did not start within "
            f"{READY_TIMEOUT_S:.0f}s: the cluster lacks the resources in "
            "copy.worker_resources (see `ray status`)")
    return workers


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
