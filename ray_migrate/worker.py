"""Unit workers: a plain class with the logic, and a Ray actor facade around it.

Each worker opens its own backends inside its own process (clients never cross Ray); a Qdrant
local folder is reached through the actor that owns it. Workers take small picklable unit
descriptions and return small dicts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from ray_migrate import metrics
from ray_migrate.backends import Backend, open_backend
from ray_migrate.catchup import UnitSync
from ray_migrate.config import MigrationConfig, ParityConfig
from ray_migrate.copy import copy_unit
from ray_migrate.cutover import CUTOVER, ROLLBACK, Direction
from ray_migrate.errors import TerminalError
from ray_migrate.follower import (
    BACK_EVERY_S,
    FOLLOW_BACKOFF_MAX_S,
    FOLLOW_BACKOFF_S,
    Follower,
    backoff_s,
)
from ray_migrate.parity import plan_parity, recall_gate
from ray_migrate.plan import Plan
from ray_migrate.priority import urgent
from ray_migrate.routing.actor import RouterHandle, get_router
from ray_migrate.routing.records import CAPTURING
from ray_migrate.state import TARGET_KEY, StateStore
from ray_migrate.switching import UnitSwitch
from ray_migrate.throttle import AdaptiveGate, RouterLatency, gate_of
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec
from ray_migrate.verify import UnitVerdict, save_verdict, spill_ids, verify_unit
from ray_migrate.verify_live import verify_live

log = logging.getLogger(__name__)

NAMESPACE = "ray_migrate"

# The follower's names stay importable from here (tests, bench/conflicts.py).
__all__ = ["BACK_EVERY_S", "FOLLOW_BACKOFF_MAX_S", "FOLLOW_BACKOFF_S", "NAMESPACE", "UnitWorker",
           "backoff_s", "worker_name"]


def _actor_id() -> str | None:
    """This worker actor's id, the same after Ray restarts it: what its switches and its
    follower hold (a unit's reservation, its log, the follower's turn) a task that Ray runs
    again after the kill takes back at once, instead of waiting a lease time
    (``cutover.write_lease_s``) for the dead holder's hold to lapse. None outside an actor."""
    try:
        import ray

        return ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - then a fresh holder, as before
        return None


def worker_name(migration_id: str, index: int) -> str:
    return f"rm:{migration_id}:worker:{index}"


class UnitWorker:
    """Takes units through the phases. Usable without Ray (tests, single-process runs).

    Every method works out where the unit stands from the router and the checkpoints, not from
    memory, so any worker can take any unit, and a restarted one carries on.
    """

    def __init__(self, cfg: MigrationConfig, plan: dict[str, Any], index: int = 0,
                 follow: bool = False):
        if not logging.getLogger().handlers:  # an actor process: progress goes to the job log
            logging.basicConfig(level=logging.INFO,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.cfg = cfg
        self.plan = Plan.from_dict(plan)
        self.index = index
        self.store = StateStore.of(cfg)
        self.forward = Transform(cfg.transform)
        self.inverse = Transform(cfg.transform, inverse=True) if cfg.transform.invertible \
            else None
        self._source: Backend | None = None
        self._target: Backend | None = None
        self._router: RouterHandle | None = None
        self._gate: AdaptiveGate | None = None  # the adaptive throttle, one per worker
        self.who = _actor_id() or uuid.uuid4().hex[:12]  # see ``_actor_id``
        self.follower = Follower(self)
        if follow:
            threading.Thread(target=self._follow, daemon=True, name="rm-follower").start()

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

    @property
    def router(self) -> RouterHandle:
        if self._router is None:
            self._router = get_router(self.cfg.migration_id)
        return self._router

    @property
    def gate(self) -> AdaptiveGate | None:
        """The adaptive throttle (``copy.throttle``), its baseline taken before this worker's
        first copy: one per worker, so later units are judged against the same baseline."""
        if self._gate is None:
            self._gate = gate_of(self.cfg.copy_cfg.throttle, RouterLatency(self.router))
            if self._gate is not None:
                self._gate.start()
        return self._gate

    def ready(self) -> dict[str, Any]:
        return {"index": self.index, "pid": os.getpid()}

    def _forward(self, spec: UnitSpec) -> UnitSync:
        return UnitSync(spec, self.router, self.source, self.target, self.forward,
                        holder=f"sync:{self.who}", side="source")

    def _back(self, spec: UnitSpec) -> UnitSync:
        return UnitSync(self.forward.target_unit(spec), self.router, self.target, self.source,
                        self.inverse, holder=f"sync:{self.who}", side="target")

    def _phase(self, unit_id: str) -> str:
        return self.router.call("unit", unit_id)["phase"]

    # --- copy, catch up, verify -----------------------------------------------------------
    def copy(self, unit: dict[str, Any], listing: str | None = None) -> dict[str, Any]:
        """Capture, copy and catch up a unit (``catching_up``): the driver copies every unit
        first, so finalize overlaps the verifies (``prepare`` then takes it to ready)."""
        return self.prepare(unit, listing, verify=False)

    def begin_capture(self, unit: dict[str, Any]) -> str:
        """Start capturing the unit's writes, if it is not past that: a unit on the source
        (or rolled back, or failed) goes to ``capturing``; a cutover that died half-way has its
        freeze lifted. Returns the unit's phase."""
        spec = UnitSpec.from_dict(unit)
        uid, router = spec.unit_id, self.router
        st = router.call("unit", uid)
        if st["phase"] == "frozen":  # a cutover that died half-way: its freeze is lifted
            router.call("set_phase", uid, "ready" if st["owner"] == "source" else "target")
            return self.begin_capture(unit)
        if st["phase"] in ("source", "rolled_back", "failed"):
            save_verdict(self.store, uid, None)  # copied again: an earlier verdict is void
            if st["phase"] not in CAPTURING and self.store.load_checkpoint(uid) is not None:
                # Its writes since capture stopped are in no log, and its copy (checkpoint)
                # stands: only a diff finds them. Marked first, so a crash here keeps it.
                router.call("mark_repair", uid)
            router.call("set_phase", uid, "capturing")
        return self._phase(uid)

    def start_copy(self, unit: dict[str, Any]) -> str:
        """Capture the unit's writes, then, once every write that began before capture has
        ended, let its copy begin (``copying``). Returns the unit's phase."""
        phase = self.begin_capture(unit)
        uid = unit["unit_id"]
        if phase == "capturing":
            st = self.router.call("unit", uid)
            # Writes that began before capture must land before the scan starts.
            if not self.router.call("wait_leases", uid, st["capture_epoch"],
                                    self.cfg.cutover.write_lease_s + 5):
                raise TerminalError(f"unit {uid}: writes from before capture never ended")
            self.router.call("set_phase", uid, "copying")
            phase = "copying"
        return phase

    def prepare(self, unit: dict[str, Any], listing: str | None = None,
                verify: bool = True) -> dict[str, Any]:
        """Capture, copy, catch up and (``verify``) verify a unit, so it is ready for cutover.

        ``listing``: the source's token of ids listed for this unit's scan once it was
        ``copying`` (``Backend.list_units``); its scan starts from there."""
        spec = UnitSpec.from_dict(unit)
        uid, router, cut = spec.unit_id, self.router, self.cfg.cutover
        out: dict[str, Any] = {"unit_id": uid, "worker": self.index}
        phase = self.start_copy(unit)
        if phase in ("target", "done"):
            return {**out, "phase": phase, "status": "skipped"}
        st = router.call("unit", uid)
        if st["phase"] == "copying":
            fresh = self.store.read(TARGET_KEY) is not None
            result = copy_unit(spec, self.source, self.target, self.forward, self.store,
                               self.cfg.copy_cfg, on_batch=self._progress(uid),
                               fresh_target=fresh, gate=self.gate,
                               start_at={"listing": listing} if listing else None)
            out.update(result.to_dict(), points_per_s=result.points_per_s)
            router.call("update_progress", uid, copied=result.copied)
            metrics.copy_ended(self.cfg.migration_id, uid)
            router.call("set_phase", uid, "catching_up")
        else:
            out["status"] = "skipped"
        with urgent():  # like a follower's step: the log grows while this waits for the CPU
            self._forward(spec).until(cut.ready_lag, timeout_s=60)
        if not verify:
            return {**out, "phase": self._phase(uid)}
        if self.cfg.verify.enabled or st.get("needs_repair"):
            verdict = self._verify_live(spec)
            save_verdict(self.store, uid, verdict)
            out["verdict"] = spill_ids(self.store, verdict).to_dict()
            if not verdict.equal:
                return {**out, "phase": self._phase(uid)}
            router.call("clear_repair", uid)
        if self.cfg.verify.parity is not None:  # the recall gate, before the unit is ready
            out["parity"] = self.parity(unit)
            why = recall_gate(out["parity"], self.cfg.cutover.gates.min_recall)
            if why:
                log.error("unit %s: %s", uid, why)
                router.call("update_progress", uid, error=why)
                return {**out, "phase": self._phase(uid), "gate": why}
        router.call("set_phase", uid, "ready")
        return {**out, "phase": "ready"}

    def _progress(self, unit_id: str) -> Any:
        mid = self.cfg.migration_id  # metrics count the points this copy writes, from its start
        last = [(self.store.load_checkpoint(unit_id) or {}).get("copied", 0), time.monotonic()]

        def on_batch(copied: int) -> None:  # fire and forget: progress is only shown
            self.router.actor.update_progress.remote(unit_id, copied)
            now = time.monotonic()
            metrics.points_copied(mid, unit_id, copied - last[0],
                                  (copied - last[0]) / max(now - last[1], 1e-6))
            last[:] = [copied, now]

        return on_batch

    def _verify_live(self, spec: UnitSpec, reverse: bool = False) -> UnitVerdict:
        """The unit's live verify and repair rounds (``verify_live``); ``reverse``: the target
        owns the unit and the source is the copy."""
        sync = self._back(spec) if reverse else self._forward(spec)
        return verify_live(sync, self.router, spec.unit_id, self.cfg)

    def catch_up(self, unit: dict[str, Any], timeout_s: float = 1.0) -> dict[str, Any]:
        """Catch up for at most ``timeout_s``: forward before cutover, back to the source
        after it."""
        spec = UnitSpec.from_dict(unit)
        phase = self._phase(spec.unit_id)
        with urgent():
            if phase in ("catching_up", "ready"):
                lag, _ = self._forward(spec).until(0, timeout_s=timeout_s)
            elif phase == "target" and self.inverse is not None:
                lag, _ = self._back(spec).until(0, timeout_s=timeout_s)
            else:
                lag = self.router.call("unit", spec.unit_id)["lag"]
        return {"unit_id": spec.unit_id, "phase": phase, "lag": lag}

    def verify(self, unit: dict[str, Any]) -> dict[str, Any]:
        spec = UnitSpec.from_dict(unit)
        verdict = verify_unit(spec, self.source, self.target, self.forward,
                              batch_size=max(self.cfg.copy_cfg.batch_size, 1000))
        return spill_ids(self.store, verdict).to_dict()

    def parity(self, unit: dict[str, Any], cfg: ParityConfig | None = None
               ) -> dict[str, Any] | None:
        """Query parity of the unit (``ray_migrate.parity``), from source to target."""
        return plan_parity(self.plan, UnitSpec.from_dict(unit), self.source, self.target,
                           self.forward, cfg or self.cfg.verify.parity or ParityConfig(),
                           batch_size=max(self.cfg.copy_cfg.batch_size, 1000))

    # --- the follower: keeps waiting units caught up (``follower.Follower``) ---------------
    def _follow(self) -> None:
        """The follower's loop (``Follower.run``): the thread ``follow=True`` starts."""
        self.follower.run()

    def stop_following(self) -> None:
        self.follower.stop()

    # --- cutover and rollback: one switch, two directions (``switching.UnitSwitch``) -------
    def cutover(self, unit: dict[str, Any]) -> dict[str, Any]:
        return self._switch(unit, CUTOVER)

    def rollback(self, unit: dict[str, Any]) -> dict[str, Any]:
        return self._switch(unit, ROLLBACK)

    def _switch(self, unit: dict[str, Any], way: Direction) -> dict[str, Any]:
        return UnitSwitch(self, UnitSpec.from_dict(unit), way).run()
