"""Ray dashboard (Prometheus) metrics of a migration: every metric is defined here, once.

The code records through the small functions below; each is a local call into Ray's core worker
(``ray.util.metrics``), which the node's metrics agent exports on ``--metrics-export-port``. No
remote call, no lock held across a call, nothing that waits: the client's write path records
and goes on. A process not connected to Ray records nothing, and a failed record is logged
once and ignored: metrics never break a migration or a client call.

Ray exports a metric ``name`` as ``ray_<name>`` (so ``ray_ray_migrate_points_copied_total``:
counters get ``_total``; histograms ``_bucket``, ``_count`` and ``_sum``). Every tag key a
metric declares must be given on every record. Tags: ``migration`` always; ``unit`` on unit
metrics; ``op`` and ``backend`` on client metrics, where ``backend`` is the side an engine call
went to (``source``/``target``), or ``routed`` for the whole client call.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

PREFIX = "ray_migrate_"
EXPORT_PREFIX = "ray_"  # what Ray puts before every name in its export
# ``unit_phase``: one gauge whose value is the phase's number (a single series per unit, so a
# dashboard plots a unit's path as a step line and ``max by (unit)`` stays meaningful).
PHASE_NUMBERS: dict[str, int] = {
    "source": 0, "capturing": 1, "copying": 2, "catching_up": 3, "ready": 4, "frozen": 5,
    "target": 6, "done": 7, "rolled_back": 8, "failed": 9}
LATENCY_MS_BOUNDS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
FREEZE_MS_BOUNDS = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
RUN = ("migration",)
UNIT = ("migration", "unit")
CLIENT = ("migration", "op", "backend")
SHADOW = ("migration", "unit", "backend")  # backend: the owner whose answer was returned
OVERLAP_BOUNDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]

# name (without PREFIX) -> (kind, description, tag keys, histogram boundaries)
DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "units_total": ("gauge", "units of the migration (driver)", RUN, None),
    "units_copied": ("gauge", "units copied: catching up, ready or beyond (driver)", RUN, None),
    "units_on_target": ("gauge", "units the target owns (driver)", RUN, None),
    "points_copied": ("counter", "points written to the target by the bulk copy", UNIT, None),
    "copy_points_per_s": ("gauge", "copy throughput of the unit's latest batch", UNIT, None),
    "catchup_lag_ids": ("gauge", "ids written by clients, not yet applied to the other side",
                        UNIT, None),
    "catchup_lag_s": ("gauge", "age of the oldest change not yet applied, seconds", UNIT, None),
    "unit_phase": ("gauge", "the unit's phase as a number: " + ", ".join(
        f"{n}={p}" for p, n in PHASE_NUMBERS.items()), UNIT, None),
    "freeze_ms": ("histogram", "each freeze of a unit (cutover or rollback), ms", UNIT,
                  FREEZE_MS_BOUNDS),
    "verify_mismatches": ("gauge", "ids that differ in the unit's latest verify", UNIT, None),
    "verify_runs": ("counter", "verifies of the unit", UNIT, None),
    "client_requests": ("counter", "client calls", CLIENT, None),
    "client_errors": ("counter", "client calls that raised", CLIENT, None),
    "client_latency_ms": ("histogram", "client call latency, ms", CLIENT, LATENCY_MS_BOUNDS),
    "shadow_reads": ("counter", "client searches also run on the side that does not own "
                     "the unit (reads.shadow_percent)", SHADOW, None),
    "shadow_errors": ("counter", "shadow reads that failed (never seen by the application)",
                      SHADOW, None),
    "shadow_overlap": ("histogram", "overlap@k of a shadow read with the owner's answer",
                       SHADOW, OVERLAP_BOUNDS),
    "shadow_latency_ms": ("histogram", "shadow read latency, ms", SHADOW, LATENCY_MS_BOUNDS),
}

_lock = threading.Lock()
_made: dict[str, Any] = {}
_warned: set[str] = set()


def exported_name(name: str, suffix: str = "") -> str:
    """The name in Ray's Prometheus export: ``points_copied`` -> ``ray_ray_migrate_...``."""
    return EXPORT_PREFIX + PREFIX + name + suffix


def _metric(name: str) -> Any | None:
    """The metric, made on first use in a process connected to Ray (Ray registers it with the
    core worker, which must exist); None otherwise."""
    m = _made.get(name)
    if m is not None:
        return m
    import ray

    if not ray.is_initialized():
        return None
    from ray.util import metrics as rm

    with _lock:
        if name not in _made:
            kind, desc, tags, bounds = DEFINITIONS[name]
            if kind == "histogram":
                _made[name] = rm.Histogram(PREFIX + name, desc, boundaries=bounds,
                                           tag_keys=tags)
            else:
                cls = rm.Counter if kind == "counter" else rm.Gauge
                _made[name] = cls(PREFIX + name, desc, tag_keys=tags)
        return _made[name]


def _record(name: str, value: float, tags: dict[str, str]) -> None:
    try:
        m = _metric(name)
        if m is None:
            return
        kind = DEFINITIONS[name][0]
        if kind == "counter":
            if value > 0:  # Ray refuses 0
                m.inc(value, tags=tags)
        elif kind == "gauge":
            m.set(value, tags=tags)
        else:
            m.observe(value, tags=tags)
    except Exception as err:  # noqa: BLE001 - metrics must never break the caller
        if name not in _warned:
            _warned.add(name)
            log.warning("metric %s not recorded: %s", name, err)


def _unit(migration: str, unit: str) -> dict[str, str]:
    return {"migration": str(migration), "unit": str(unit)}


# --- what the code calls ------------------------------------------------------------------
def run_units(migration: str, total: int, copied: int, on_target: int) -> None:
    """The run's units as its driver sees them (driver, ``progress.RunProgress``)."""
    tags = {"migration": str(migration)}
    _record("units_total", total, tags)
    _record("units_copied", copied, tags)
    _record("units_on_target", on_target, tags)


def points_copied(migration: str, unit: str, n: int, points_per_s: float | None = None) -> None:
    """A copy batch of ``n`` points written (worker)."""
    tags = _unit(migration, unit)
    _record("points_copied", n, tags)
    if points_per_s is not None:
        _record("copy_points_per_s", points_per_s, tags)


def copy_ended(migration: str, unit: str) -> None:
    """The unit's copy is over: its throughput gauge goes back to 0."""
    _record("copy_points_per_s", 0.0, _unit(migration, unit))


def unit_state(migration: str, unit: str, phase: str, lag_ids: int, lag_s: float) -> None:
    """A unit's phase and catch-up lag, as the router sees them (router)."""
    tags = _unit(migration, unit)
    _record("unit_phase", PHASE_NUMBERS.get(phase, -1), tags)
    _record("catchup_lag_ids", lag_ids, tags)
    _record("catchup_lag_s", lag_s, tags)


def freeze(migration: str, unit: str, ms: float) -> None:
    """A freeze of the unit ended after ``ms`` (router)."""
    _record("freeze_ms", ms, _unit(migration, unit))


def verified(migration: str, unit: str, mismatches: int) -> None:
    """A verify of the unit found ``mismatches`` differing ids (0: equal)."""
    tags = _unit(migration, unit)
    _record("verify_runs", 1, tags)
    _record("verify_mismatches", mismatches, tags)


def client_call(migration: str, op: str, backend: str, ms: float, error: bool) -> None:
    """One client call (``backend`` ``routed``) or one engine call of it (``source`` or
    ``target``): counted, timed, and counted as an error if it raised."""
    tags = {"migration": str(migration), "op": op, "backend": backend}
    _record("client_requests", 1, tags)
    _record("client_latency_ms", ms, tags)
    if error:
        _record("client_errors", 1, tags)


def shadow_read(migration: str, unit: str, owner: str, overlap: float | None,
                ms: float) -> None:
    """One shadow read (``ray_migrate.shadow``): its overlap@k, None if it failed."""
    tags = {"migration": str(migration), "unit": str(unit), "backend": owner}
    _record("shadow_reads", 1, tags)
    _record("shadow_latency_ms", ms, tags)
    if overlap is None:
        _record("shadow_errors", 1, tags)
    else:
        _record("shadow_overlap", overlap, tags)


# --- the client's instrumentation ---------------------------------------------------------
ENGINE_OPS = {"upsert": "upsert", "append": "upsert", "update_in_place": "upsert",
              "delete_many": "delete",
              "fetch": "retrieve", "search": "search", "count": "count"}


class TimedBackend:
    """A client's backend whose engine calls are counted and timed (``backend`` = its side);
    everything else passes through untouched."""

    def __init__(self, backend: Any, migration: str, side: str):
        self._backend, self._migration, self._side = backend, migration, side

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        op = ENGINE_OPS.get(name)
        if op is None or not callable(attr):
            return attr
        return functools.partial(_timed_call, attr, self._migration, op, self._side)


def _timed_call(fn: Callable[..., Any], migration: str, op: str, backend: str,
                *args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    error = True
    try:
        out = fn(*args, **kwargs)
        error = False
        return out
    finally:
        client_call(migration, op, backend, (time.perf_counter() - t0) * 1000, error)


__all__ = ["DEFINITIONS", "PHASE_NUMBERS", "TimedBackend", "client_call", "copy_ended",
           "exported_name", "freeze", "points_copied", "run_units", "shadow_read", "unit_state",
           "verified"]
