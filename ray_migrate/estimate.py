"""How long a run will take, estimated by ``ray-migrate plan`` before anything is migrated.

A short sample: read up to ``max_points`` points (at most ``share`` of the collection, and at
least a few hundred so a rate is measurable) from the source, for at most half of
``budget_s``; write them, transformed, for at most the other half, into a scratch place of the
target's kind that is removed afterwards. The real target's data is never touched:

- a local Qdrant folder or LanceDB directory: a temporary one beside it
  (``<path>.rm-estimate-<hex>``: same disk), deleted afterwards;
- a Qdrant server or a LanceDB object store: a scratch collection/table
  ``<name>_rm_estimate_<hex>`` beside the target's, dropped afterwards.

The estimate is the bulk copy at the slower of the two rates times the workers that can run at
once (``copy.workers``, at most one per unit, capped by ``copy.max_points_per_s``), plus a
verify (both sides read once at the read rate), plus the fixed waits of the cutover (``pause_s``
between waves, the rollback window). A rough figure: it assumes rates hold at scale and that
the workers do not share one disk's throughput. It is saved beside the plan (``estimate.json``),
and the run's report sets it beside the actual duration.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from ray_migrate.backends.base import Backend
from ray_migrate.config import MigrationConfig
from ray_migrate.plan import Plan
from ray_migrate.transform import Transform

log = logging.getLogger(__name__)

ESTIMATE_KEY = "estimate.json"
BUDGET_S = 3.0
SHARE = 0.02
MAX_POINTS = 5000
MIN_POINTS = 200
SCRATCH = "rm-estimate"


@dataclass
class Estimate:
    seconds: float
    read_points_per_s: float
    write_points_per_s: float
    sampled_points: int
    sample_s: float  # what the sample took, scratch set-up and removal included
    total_points: int
    parallel: int

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def sample_size(total: int, share: float = SHARE, max_points: int = MAX_POINTS) -> int:
    """Points to sample: ``share`` of ``total``, at least MIN_POINTS, at most ``max_points``,
    never more than there are."""
    return min(total, max_points, max(MIN_POINTS, int(total * share)))


def read_sample(source: Backend, plan: Plan, n: int, batch: int, budget_s: float,
                clock: Callable[[], float] = time.perf_counter) -> tuple[pa.Table | None, float]:
    """Up to ``n`` points from the largest units, for at most ``budget_s``: (them, points/s)."""
    parts: list[pa.Table] = []
    got, t0 = 0, clock()
    for unit in sorted(plan.units, key=lambda u: -u.estimated_count):
        for table, _cursor in source.scan(unit, min(batch, n)):
            parts.append(table)
            got += table.num_rows
            if got >= n or clock() - t0 >= budget_s:
                break
        if got >= n or clock() - t0 >= budget_s:
            break
    took = clock() - t0
    if not got:
        return None, 0.0
    return pa.concat_tables(parts).slice(0, n), got / max(took, 1e-6)


def write_rate(target: Backend, rows: pa.Table, batch: int, budget_s: float,
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Points/s of appends of ``rows`` in ``batch``-sized writes, for at most ``budget_s``."""
    done, t0 = 0, clock()
    for start in range(0, rows.num_rows, batch):
        part = rows.slice(start, batch)
        target.append(part)
        done += part.num_rows
        if clock() - t0 >= budget_s:
            break
    return done / max(clock() - t0, 1e-6)


@contextlib.contextmanager
def scratch_target(cfg: MigrationConfig, plan: Plan) -> Iterator[Backend]:
    """A created, empty collection of the target's kind, where the target lives; removed on
    the way out, whatever happens (see the module's doc)."""
    from ray_migrate.backends import open_backend

    ep, tag = cfg.target, uuid.uuid4().hex[:10]
    local = (ep.kind == "qdrant" and ep.path) or (ep.kind == "lancedb" and "://" not in ep.uri)
    if local:
        where = f"{(ep.path if ep.kind == 'qdrant' else ep.uri).rstrip('/')}.{SCRATCH}-{tag}"
        scratch = ep.model_copy(update={"path" if ep.kind == "qdrant" else "uri": where})
    else:
        name = f"{ep.collection if ep.kind == 'qdrant' else ep.table}_rm_estimate_{tag}"
        scratch = ep.model_copy(update={"collection" if ep.kind == "qdrant" else "table": name})
    backend = open_backend(scratch, payload_schema=plan.target_info.payload_schema,
                           hosted=False)
    try:
        backend.create(plan.target_info)
        yield backend
    finally:
        if not local:
            _drop(scratch, backend)
        backend.close()
        if local:
            shutil.rmtree(where, ignore_errors=True)


def _drop(scratch: Any, backend: Backend) -> None:
    try:
        if scratch.kind == "qdrant":
            from qdrant_client import QdrantClient

            client = QdrantClient(url=scratch.url, api_key=scratch.api_key)
            client.delete_collection(scratch.collection)
            client.close()
        else:
            import lancedb

            lancedb.connect(scratch.uri, storage_options=scratch.storage_options or None
                            ).drop_table(scratch.table)
    except Exception as err:  # noqa: BLE001 - say what is left, never fail the plan for it
        log.warning("estimate: the scratch %s could not be removed: %s",
                    getattr(scratch, "collection", None) or scratch.table, err)


def estimate_run(cfg: MigrationConfig, plan: Plan, source: Backend,
                 budget_s: float = BUDGET_S) -> Estimate | None:
    """Sample both sides (bounded by ``budget_s``) and estimate the run; None for an empty
    source."""
    t0 = time.perf_counter()
    total = plan.source_info.count
    n = sample_size(total)
    if n <= 0:
        return None
    rows, read_pps = read_sample(source, plan, n, cfg.copy_cfg.batch_size, budget_s / 2)
    if rows is None:
        return None
    with scratch_target(cfg, plan) as target:
        write_pps = write_rate(target, Transform(cfg.transform).apply(rows),
                               cfg.copy_cfg.batch_size, budget_s / 2)
    parallel = max(1, min(cfg.copy_cfg.workers, len(plan.units)))
    rate = min(read_pps, write_pps) * parallel
    if cfg.copy_cfg.max_points_per_s:
        rate = min(rate, cfg.copy_cfg.max_points_per_s)
    seconds = total / rate
    if cfg.verify.enabled:
        seconds += 2 * total / (read_pps * parallel)
    if cfg.cutover.mode == "auto":
        seconds += cfg.cutover.pause_s * max(len(cfg.cutover.waves) - 1, 0) \
            + cfg.rollback.window_s
    return Estimate(seconds, read_pps, write_pps, rows.num_rows, time.perf_counter() - t0,
                    total, parallel)


__all__ = ["ESTIMATE_KEY", "Estimate", "estimate_run", "sample_size", "scratch_target"]
