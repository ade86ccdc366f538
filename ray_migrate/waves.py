"""Rolling cutover in waves, the rollback window, and manual cutover and rollback.

A wave is a cumulative size: ``[1, "25%", "100%"]`` cuts one unit over (the canary, the
smallest unit), then units until a quarter are on the target, then the rest, pausing
``pause_s`` between waves. Meanwhile the workers' followers keep every waiting unit caught up
(and, in the rollback window, every cut-over unit's source), so the driver only waits.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ray_migrate import failpoints, slo
from ray_migrate.errors import ConfigError
from ray_migrate.migration import Migration, record_switch
from ray_migrate.parity import recall_gate
from ray_migrate.pool import run_on_pool
from ray_migrate.report import DONE_PHASES
from ray_migrate.routing.activity import ClientActivity
from ray_migrate.units import UnitSpec
from ray_migrate.worker import UnitWorker

log = logging.getLogger(__name__)

POLL_S = 0.5
MANUAL_CATCH_UP_S = 120.0
SWITCH_WAIT_S = 60.0  # the window's end waits this long at most for a rollback under way


def wave_sizes(waves: list[int | str], n_units: int) -> list[int]:
    """Cumulative unit counts per wave; the last wave always takes every unit."""
    sizes: list[int] = []
    for w in waves:
        size = w if isinstance(w, int) else math.ceil(float(w[:-1]) / 100 * n_units)
        size = min(max(size, sizes[-1] if sizes else 1), n_units)
        if not sizes or size > sizes[-1]:
            sizes.append(size)
    if not sizes or sizes[-1] < n_units:
        sizes.append(n_units)
    return sizes


def _phases(m: Migration) -> dict[str, str]:
    assert m.router is not None
    return {row["unit_id"]: row["phase"] for row in m.router.call("status")["units"]}


def _cut(m: Migration, units: list[UnitSpec]) -> list[UnitSpec]:
    """Cut these units over, retrying aborted freezes; returns the units that did not move."""
    todo = list(units)
    for attempt in range(1, m.cfg.cutover.max_attempts + 1):
        failed: list[UnitSpec] = []

        def on_result(unit: UnitSpec, res: dict[str, Any], failed: list = failed,
                      attempt: int = attempt) -> None:
            failpoints.hit("driver.cut", unit=unit.unit_id)  # a unit of the wave answered
            row = m._row(unit.unit_id)
            row.cutover_attempts += 1
            m.event("cutover", unit=unit.unit_id, ok=res["ok"], freeze_ms=res.get("freeze_ms"),
                    reason=res.get("reason"))
            if res["ok"]:
                row.freeze_ms = max(row.freeze_ms or 0.0, res["freeze_ms"])
                row.cutover_how = res.get("how")
            else:
                row.error = f"cutover attempt {attempt}: {res['reason']}"
                failed.append(unit)

        pool = m.workers[: m.cfg.cutover.concurrency]
        errors = run_on_pool(pool, "cutover", todo, on_result)
        for unit_id, error in errors.items():
            m._row(unit_id).status, m._row(unit_id).error = "failed", error
        if not failed:
            return []
        log.warning("%d units did not cut over (attempt %d); they catch up before the next try",
                    len(failed), attempt)
        time.sleep(min(0.5 * attempt, 3.0))
        todo = failed
    return todo


def cutover_in_waves(m: Migration) -> None:
    """Auto mode: cut every ready unit over, wave by wave. A unit this run found failed or
    differing is left where it is: it stops alone, the others go on."""
    cfg = m.cfg.cutover
    units = sorted(m.units(), key=lambda u: (u.estimated_count, u.unit_id))
    left_out = [u.unit_id for u in units if not m._row(u.unit_id).ok]
    if left_out:
        log.warning("units %s failed or differ: they stay on the source", left_out)
        units = [u for u in units if u.unit_id not in left_out]
    sizes = wave_sizes(list(cfg.waves), len(units))
    for i, size in enumerate(sizes, start=1):
        if m.stopped_by_gate:
            return
        m.check_lease()
        phases = _phases(m)
        done = [u for u in units if phases.get(u.unit_id) in DONE_PHASES]
        ready = [u for u in units if phases.get(u.unit_id) in ("ready", "catching_up")]
        wave = ready[: max(size - len(done), 0)]
        if not wave:
            continue
        failpoints.hit("waves.wave", wave=i)  # the wave chosen, nothing cut over yet
        log.info("wave %d/%d: cutting over %s", i, len(sizes), [u.unit_id for u in wave])
        m.event("wave", wave=i, units=[u.unit_id for u in wave])
        started = time.time()
        left = _cut(m, wave)
        for u in left:
            m._row(u.unit_id).status = "failed"
        m.last_wave = slo.WaveSpan(i, [u.unit_id for u in wave if u not in left], started,
                                   time.time())
        if i < len(sizes):
            _pause(m, cfg.pause_s, m.last_wave)
            gate_wave(m)


def gate_wave(m: Migration) -> bool:
    """Judge the last wave by what the clients saw since it (``slo``); on a breach roll its
    units back, as ``ray-migrate rollback`` does, and stop the rollout. Whether it passed."""
    span, m.last_wave = m.last_wave, None
    gates = m.cfg.cutover.gates
    if span is None or not span.units or not slo.active(gates) or m.stopped_by_gate:
        return True
    assert m.router is not None
    router = m.router
    until = time.time()
    if not slo.wait_for_buckets(lambda: router.call("client_newest"), until):
        log.info("no client statistics arrived after the wave's window (no client, or a "
                 "late one): judging what the router has")
    verdict = slo.judge(gates, lambda *a: router.call("client_window", *a), span, until)
    m.report.gates.append(verdict.to_dict())
    m.event("gate", wave=span.wave, units=span.units, ok=verdict.ok,
            reason=verdict.reason or "; ".join(verdict.notes) or None, **verdict.measured)
    for note in verdict.notes:
        log.info("wave %d: %s", span.wave, note)
    if verdict.ok:
        log.info("wave %d passed the SLO gates: %s", span.wave, verdict.measured)
        return True
    log.error("%s: rolling back %s and stopping the rollout", verdict.reason, span.units)
    m.stopped_by_gate = m.report.stopped = verdict.reason
    _roll_back(m, span.units, f"{verdict.reason}; rolled back automatically")
    return False


def _roll_back(m: Migration, unit_ids: list[str], why: str) -> None:
    """Roll these units back the way ``ray-migrate rollback`` does (``switch_units``), the
    reason in each unit's ``last_error`` (``status``) and report row."""
    assert m.router is not None
    for uid in unit_ids:  # before the flip, which writes the routing table out
        m.router.call("update_progress", uid, error=why)
    results = switch_units(m, unit_ids, "rollback")
    for uid, res in results.items():
        row = m._row(uid)
        row.error = why if res["ok"] else f"{why}, but the rollback failed: {res['reason']}"
        if not res["ok"]:
            log.error("unit %s: %s", uid, row.error)
            m.router.call("update_progress", uid, error=row.error)


def _pause(m: Migration, seconds: float, wave: slo.WaveSpan | None = None) -> None:
    """Wait between waves (the followers keep units in sync); log the largest lag. After a
    ``wave``, the pause ends at once while no client was connected, took a write lease or
    was counted since the wave began: there is nothing to observe (``routing.activity``). A
    client seen once makes it run its full length. The rollback window passes no wave."""
    assert m.router is not None
    start = time.monotonic()
    deadline = start + seconds
    worst, why_full = 0, None if wave is not None else "the rollback window"
    while (left := deadline - time.monotonic()) > 0:
        if why_full is None:
            assert wave is not None
            why_full = _observed(m, wave.started)
            if why_full is None:
                _pause_ended(m, wave, seconds, time.monotonic() - start)
                return
        time.sleep(min(POLL_S, left))
        lags = m.router.call("lags")
        worst = max([worst, *(lag for phase, lag, _, _ in lags.values()
                              if phase in ("ready", "target"))])
    if seconds:
        log.info("pause of %.0fs over; at most %d changes waited in a unit", seconds, worst)
    if wave is not None:
        m.event("pause", wave=wave.wave, seconds=seconds, waited_s=round(
            time.monotonic() - start, 3), ended_early=False, reason=why_full)


def _observed(m: Migration, since: float) -> str | None:
    """Why the pause after a wave that began at ``since`` runs its full length (a client
    was active since then), or None: nothing to observe."""
    assert m.router is not None
    try:
        return ClientActivity.from_dict(m.router.call("client_activity")).since(since)
    except Exception as err:  # noqa: BLE001 - a router of an older version: pause as told
        return f"the router could not tell ({type(err).__name__}: {err})"


def _pause_ended(m: Migration, wave: slo.WaveSpan, seconds: float, waited: float) -> None:
    why = "no client was connected, took a write lease or made a request since the wave began"
    log.info("pause of %.0fs after wave %d ended early: %s", seconds, wave.wave, why)
    m.event("pause", wave=wave.wave, seconds=seconds, waited_s=round(waited, 3),
            ended_early=True, reason=why)


def hold_rollback_window(m: Migration) -> None:
    """Keep syncing target writes back to the source for ``rollback.window_s``; then the
    cut-over units are done and capture stops."""
    window = m.cfg.rollback.window_s
    if window > 0:
        log.info("rollback window: syncing target writes back to the source for %.0fs", window)
        _pause(m, window)
        gate_wave(m)  # the last wave, judged over the window: before its units are done
    assert m.router is not None
    m.check_lease()
    # A unit that an operator rolls back now (``ray-migrate rollback``) stays rolled back:
    # the router marks done only the units still on the target, and waits for a rollback
    # under way to end first.
    finished = [uid for uid, phase in _phases(m).items() if phase in ("target", "frozen")]
    deadline = time.monotonic() + SWITCH_WAIT_S
    while finished:
        finished = m.router.call("finish_units", finished)
        if finished and time.monotonic() >= deadline:
            log.warning("units %s stay on the target unfinished: a switch held them for %.0fs",
                        finished, SWITCH_WAIT_S)
            break
        if finished:
            time.sleep(POLL_S)


def _recall_gate(m: Migration, worker: UnitWorker, unit: UnitSpec) -> str | None:
    """Why a manual cutover of this unit is refused: its target recall is below
    ``cutover.gates.min_recall`` (measured now), else None. The reason is shown by status."""
    if m.cfg.cutover.gates.min_recall is None:
        return None
    row = m._row(unit.unit_id)
    row.parity = worker.parity(unit.to_dict())
    why = recall_gate(row.parity, m.cfg.cutover.gates.min_recall)
    if why:
        assert m.router is not None
        m.router.call("update_progress", unit.unit_id, error=why)
    return why


def switch_units(m: Migration, unit_ids: list[str] | None, method: str) -> dict[str, Any]:
    """Manual ``cutover`` or ``rollback`` of some units (all eligible ones when None), run in
    this process with a plain worker (the run's worker actors may still be busy)."""
    assert m.plan is not None
    worker = UnitWorker(m.cfg, m.plan.to_dict())
    units = {u.unit_id: u for u in m.units()}
    phases = _phases(m)
    if unit_ids:
        unknown = [u for u in unit_ids if u not in units]
        if unknown:
            raise ConfigError(f"--units: unknown units {unknown}; units are: "
                              f"{sorted(units)[:20]}")
        chosen = [units[u] for u in unit_ids]
    else:
        wanted = ("ready", "catching_up") if method == "cutover" else ("target",)
        chosen = [u for uid, u in units.items() if phases.get(uid) in wanted]
    results = {}
    for unit in chosen:
        # In manual mode nothing followed the unit since `run` ended: work off the backlog
        # first, so the attempts below only have the last changes to take.
        worker.catch_up(unit.to_dict(), timeout_s=MANUAL_CATCH_UP_S)
        res: dict[str, Any] = {}
        why = _recall_gate(m, worker, unit) if method == "cutover" else None
        for _ in range(0 if why else m.cfg.cutover.max_attempts):
            res = getattr(worker, method)(unit.to_dict())
            if res["ok"]:
                break
            worker.catch_up(unit.to_dict())
        if why:
            res = {"ok": False, "reason": why, "freeze_ms": 0.0, "drained": 0}
        results[unit.unit_id] = res
        m.event(method, unit=unit.unit_id, ok=res["ok"], freeze_ms=res.get("freeze_ms"),
                reason=res.get("reason"))
        row = m._row(unit.unit_id)
        if res["ok"]:
            row.freeze_ms, row.cutover_how = res["freeze_ms"], res.get("how")
        else:
            row.status, row.error = "failed", res["reason"]
        record_switch(m.store, unit.unit_id, method, m.report.command, res)
    return results
