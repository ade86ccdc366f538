"""One migration's driver-side steps (``Migration``), which ``driver`` runs in order, and
the record of who switched a unit last, which a run's report reads.

A ``Migration`` either drives (``start()``: it takes the driver lease and starts the unit
workers) or only looks and switches through the running router (``start(workers=False)``:
``verify``, ``cutover`` and ``rollback``, which never disturb a run).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ray_migrate.backends import Backend, open_backend
from ray_migrate.cluster import check_feasible, probe_address
from ray_migrate.config import MigrationConfig
from ray_migrate.errors import ClusterError, TerminalError
from ray_migrate.estimate import ESTIMATE_KEY
from ray_migrate.lease import DriverLease, describe
from ray_migrate.plan import Plan, load_or_make_plan, save_plan
from ray_migrate.pool import run_on_pool, start_workers
from ray_migrate.preflight import preflight
from ray_migrate.priority import background
from ray_migrate.report import RunReport, UnitReport
from ray_migrate.report_files import write_report_files
from ray_migrate.retry import with_retries
from ray_migrate.routing.actor import RouterHandle, get_router, start_router
from ray_migrate.routing.records import TransitionError
from ray_migrate.routing.watch import process_info
from ray_migrate.state import TARGET_KEY, StateStore, safe_name
from ray_migrate.units import UnitSpec
from ray_migrate.verify import load_verdict
from ray_migrate.worker import NAMESPACE, UnitWorker

log = logging.getLogger(__name__)

REPORT_KEY = "report.json"
FINALIZED_KEY = "finalized.json"
FOLLOWER_PAUSE_S = 30.0
VERDICT_KEYS = ("source_count", "target_count", "source_checksum", "target_checksum", "equal",
                "differing_buckets", "missing_ids", "extra_ids", "changed_ids", "pending",
                "missing_count", "extra_count", "changed_count", "ids_file")


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` (or RAY_ADDRESS / a running local one), else start
    one. ClusterError, within ``cluster.PROBE_S``, when nothing listens at the address: ``ray.init``
    itself would retry for minutes."""
    import ray

    if ray.is_initialized():
        return
    given = address or os.environ.get("RAY_ADDRESS")
    probe_address(given)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=True,
                 configure_logging=False)
    except ConnectionError as err:
        raise ClusterError(f"could not join a Ray cluster at {given or 'auto'!r}: {err}; "
                           "start one (`ray start --head`) or fix --address / RAY_ADDRESS"
                           ) from None


def prepare_target(cfg: MigrationConfig, plan: Plan) -> Backend:
    """Create the target from the plan, or check that the existing one can hold the source."""
    target = open_backend(cfg.target, payload_schema=plan.target_info.payload_schema)
    if target.exists():
        target.check_compatible(plan.target_info)
        log.info("target %s exists and can hold the source", cfg.target.name)
    else:
        target.create(plan.target_info)
        StateStore.of(cfg).write(TARGET_KEY, {"created": time.time()})
        log.info("created target %s", cfg.target.name)
    return target


class Migration:
    """One migration's driver-side steps; ``driver.run_migration`` runs them in order."""

    def __init__(self, cfg: MigrationConfig, address: str | None = None,
                 command: str = "run"):
        self.cfg = cfg
        self.address = address
        self.store = StateStore.of(cfg)
        self.report = RunReport(migration_id=cfg.migration_id, command=command,
                                expect_cutover=command == "run" and cfg.cutover.mode == "auto")
        self.rows: dict[str, UnitReport] = {}
        self.events: list[dict[str, Any]] = []  # waves, cutovers, rollbacks: for the report
        self.workers: list[Any] = []
        self.plan: Plan | None = None
        self.target: Backend | None = None
        self.source: Backend | None = None
        self.router: RouterHandle | None = None
        self.lease: DriverLease | None = None
        self.last_wave: Any = None  # the last wave not yet judged (``slo.WaveSpan``)
        self.stopped_by_gate: str | None = None  # an SLO breach stopped the rollout

    # --- Steps 1 to 3: plan, target, router and workers -----------------------------------
    def start(self, workers: bool = True) -> None:
        """Plan, prepare the target and start (or join) the router; with ``workers``, this is
        the migration's driver: it takes the driver lease (refusing while another driver
        runs), then starts the unit workers."""
        lease = DriverLease(self.store, self.report.command) if workers else None
        if lease is not None:
            lease.check()  # at once, before connecting to Ray
        # Before Ray starts and before anything is written: the source, the plan, the target.
        self.plan = preflight(self.cfg, self.store)
        connect(self.address)
        if lease is not None:
            check_feasible(self.cfg)  # before the target, the router and the workers
        self._start(lease)

    def _start(self, lease: DriverLease | None) -> None:
        cfg = self.cfg
        # Step 1: plan (or reuse the stored plan, so unit ids and checkpoints stay valid).
        plan = self.plan or load_or_make_plan(cfg, open_backend(cfg.source), self.store,
                                              save=False)
        self.plan = plan
        self.report.warnings = list(plan.warnings)
        self.report.estimate = self.store.read(ESTIMATE_KEY)  # `ray-migrate plan`'s, if any
        # Step 2: prepare the target before anything is written.
        self.target = prepare_target(cfg, plan)
        save_plan(plan, self.store)
        # Step 3: the routing table (detached, durable) and the worker pool.
        # Clients get the config from the router: without credentials (``public_dump``).
        info = {"config": cfg.public_dump(), "redacted": cfg.redacted(), "plan": plan.to_dict()}
        self.router = start_router(
            cfg.migration_id, cfg.state_uri, [u.unit_id for u in plan.units], info,
            lease_s=cfg.cutover.write_lease_s,
            freeze_timeout_s=max(10.0, 20 * cfg.cutover.max_freeze_ms / 1000),
            state_options=cfg.state_storage_options)
        running_on = self.router.call("describe")["state_uri"]
        if running_on != self.store.uri:
            raise TerminalError(
                f"a router for migration {cfg.migration_id!r} already runs in this cluster with "
                f"state_uri {running_on!r}; use another migration_id or the same state_uri")
        for u in self.units():
            self.rows.setdefault(u.unit_id, UnitReport(unit_id=u.unit_id))
        self.report.units = list(self.rows.values())
        log.info("migration %s: %d units, %d points", cfg.migration_id, len(self.rows),
                 plan.source_info.count)
        if lease is not None:
            lease.acquire(self.router)
            self.lease = lease
            n = min(cfg.copy_cfg.workers, max(len(self.rows), 1))
            try:
                self.workers = start_workers(cfg, plan, n, lease)
            except BaseException:
                lease.release()
                raise

    def check_lease(self) -> None:
        """Stop driving once another driver took this one's lease over (it took this one for
        dead): both would cut units over."""
        if self.lease is not None and self.lease.lost is not None:
            raise TerminalError(f"this driver lost the lease of migration "
                                f"{self.cfg.migration_id!r} to {describe(self.lease.lost)}")

    def units(self) -> list[UnitSpec]:
        """The plan's units, and units the router added for tenants first seen while running."""
        assert self.plan is not None and self.router is not None
        known = {u.unit_id: u for u in self.plan.units}
        for row in self.router.call("status")["units"]:
            if row["unit_id"] not in known:
                fld = row["unit_id"].partition("=")[0]
                known[row["unit_id"]] = UnitSpec(row["unit_id"], "tenant", field=fld,
                                                 value=row["value"])
        return list(known.values())

    def event(self, kind: str, **what: Any) -> None:
        """Something the run's report marks on its time line (``report_files``)."""
        self.events.append({"t": time.time(), "kind": kind, **what})

    def _row(self, unit_id: str) -> UnitReport:
        if unit_id not in self.rows:
            self.rows[unit_id] = UnitReport(unit_id=unit_id)
            self.report.units = list(self.rows.values())
        return self.rows[unit_id]

    # --- Step 4: capture, copy, catch up and verify every unit ----------------------------
    def prepare_units(self, units: list[UnitSpec] | None = None,
                      on_copied: Callable[[], None] | None = None) -> None:
        """Take these units (default: all) to ready; units on the target are skipped. With
        ``on_copied``, every unit is copied first (``UnitWorker.copy``), then ``on_copied()``
        runs (finalize starts: ``finalize``), then the units verify."""
        todo = units or self.units()
        listing = self.list_source(self.capture_for_copy(todo))
        if on_copied is not None:
            failed = self._run_prepare("copy", todo, listing)  # stay failed, as in one pass
            todo = [u for u in todo if u.unit_id not in failed]
            on_copied()
            listing = None  # copied: the listing is spent
        self._run_prepare("prepare", todo, listing)

    def _run_prepare(self, method: str, units: list[UnitSpec],
                     listing: str | None = None) -> set[str]:
        """Run a worker method on every unit, the results into the report; the units that
        failed. ``listing``: the source's one-pass listing of the units (``list_source``)."""
        def on_result(unit: UnitSpec, res: dict[str, Any]) -> None:
            row = self._row(unit.unit_id)
            if not (res.get("status") == "skipped" and row.status != "pending"):
                row.status = res.get("status", row.status)  # not a copy's by its verify
            for key in ("copied", "copied_now", "seconds", "points_per_s"):
                if key in res:
                    setattr(row, key, res[key])
            v = res.get("verdict")
            if v is not None:
                self._set_verdict(row, v)
            if res.get("parity") is not None:
                row.parity = res["parity"]
            if res.get("gate"):  # not cut over: the waves leave a unit that is not ok
                row.status, row.error = "failed", res["gate"]
            elif res.get("phase") in ("target", "done", "ready") and row.equal is None:
                self._earlier_verdict(row)
            log.info("unit %s: %s (%d points copied now)", unit.unit_id, res.get("phase"),
                     res.get("copied_now", 0))

        errors = run_on_pool(self.workers, method, units, on_result, listing=listing)
        for unit_id, error in errors.items():
            self._row(unit_id).status, self._row(unit_id).error = "failed", error
            self._failed_in_router(unit_id, error)
        return set(errors)

    def capture_for_copy(self, units: list[UnitSpec]) -> list[UnitSpec]:
        """Where the source lists many units in one pass (``Capabilities.lists_units``: Qdrant
        local mode, where each unit's own listing is a pass over the whole collection),
        start capture for every unit at once and let their copies begin; return the units
        whose scans start from the start (no checkpointed cursor). Elsewhere: nothing, each
        unit's prepare does it. A unit whose capture fails here is left to its prepare,
        which fails it with the reason."""
        source = self._source()
        if not units or not source.capabilities.lists_units:
            return []
        assert self.plan is not None
        worker = UnitWorker(self.cfg, self.plan.to_dict())
        for u in units:  # every unit first: their leases from before capture end together
            self._try(u, worker.begin_capture)
        fresh = []
        for u in units:
            ckpt = self.store.load_checkpoint(u.unit_id) or {}
            if (self._try(u, worker.start_copy) == "copying" and ckpt.get("cursor") is None
                    and ckpt.get("status") != "copied"):
                fresh.append(u)
        return fresh

    def list_source(self, units: list[UnitSpec]) -> str | None:
        """List the ids of ``units`` in one pass over the source, for their scans (see
        ``Backend.list_units``). Only for units that capture: ``capture_for_copy``'s."""
        if not units:
            return None
        started = time.perf_counter()
        token = self._source().list_units(units)
        seconds = time.perf_counter() - started
        self.event("listing", units=len(units), seconds=round(seconds, 3))
        log.info("listed the source's ids of %d units in one pass (%.1fs)", len(units), seconds)
        return token

    def _source(self) -> Backend:
        if self.source is None:
            self.source = open_backend(self.cfg.source)
        return self.source

    @staticmethod
    def _try(unit: UnitSpec, step: Any) -> str | None:
        try:
            return step(unit.to_dict())
        except Exception as err:  # noqa: BLE001 - its prepare meets it again and reports it
            log.warning("unit %s: %s", unit.unit_id, err)
            return None

    def _failed_in_router(self, unit_id: str, error: str) -> None:
        """A unit whose prepare failed is ``failed`` in the routing table too, with the reason,
        so `ray-migrate status` says so (it stayed ``copying`` before, with no reason); a
        later run prepares it again (with a diff-and-repair, see ``UnitWorker.prepare``)."""
        assert self.router is not None
        self.router.call("update_progress", unit_id, error=error)
        try:
            self.router.call("set_phase", unit_id, "failed")
        except TransitionError as err:  # on the target already: the error is shown
            log.warning("unit %s: not marked failed: %s", unit_id, err)

    def new_units(self) -> list[UnitSpec]:
        """Units the router added for tenants first written while the migration ran."""
        assert self.router is not None
        fresh = {r["unit_id"] for r in self.router.call("status")["units"]
                 if r["phase"] == "source"}
        return [u for u in self.units() if u.unit_id in fresh]

    def _earlier_verdict(self, row: UnitReport) -> None:
        """A unit this run did not verify: what the last verify of it found, or unverified."""
        v = load_verdict(self.store, row.unit_id)
        if v is None or not v.get("equal"):  # a difference found then was repaired since
            row.unverified = True
            return
        self._set_verdict(row, v)
        row.note = row.note or "verified by an earlier run"

    def _set_verdict(self, row: UnitReport, v: dict[str, Any]) -> None:
        for key in VERDICT_KEYS:
            if key in v:  # a verdict stored by an older version lacks the counts
                setattr(row, key, v[key])
        if not v["equal"]:
            row.status = "failed"
            row.error = row.error or "source and target differ after repair"
            log.error("unit %s differs: source %d points, target %d", row.unit_id,
                      v["source_count"], v["target_count"])

    def verify_units(self, parity: bool = False) -> None:
        """Compare every unit, in this process with a plain worker: no actor is started, so
        a run going on meanwhile keeps its workers (it may show units it is still copying as
        different). ``parity`` (or ``verify.parity``): measure query parity too."""
        assert self.plan is not None
        worker = UnitWorker(self.cfg, self.plan.to_dict())
        for unit in self.units():
            row = self._row(unit.unit_id)
            try:
                v = worker.verify(unit.to_dict())
            except Exception as err:  # noqa: BLE001 - reported per unit
                log.error("unit %s: verify failed: %s", unit.unit_id, err)
                row.error, row.equal = f"verify failed: {type(err).__name__}: {err}", False
                continue
            for key in VERDICT_KEYS:
                setattr(row, key, v[key])
            row.unverified = False
            if parity or self.cfg.verify.parity is not None:
                self._parity(worker, unit, row)

    def _parity(self, worker: UnitWorker, unit: UnitSpec, row: UnitReport) -> None:
        try:
            row.parity = worker.parity(unit.to_dict())
        except Exception as err:  # noqa: BLE001 - reported per unit
            log.error("unit %s: query parity failed: %s", unit.unit_id, err)
            row.error = f"query parity failed: {type(err).__name__}: {err}"
            row.status = "failed"

    # --- Step 5: compact and index the target after the bulk load -------------------------
    def finalize_target(self, copied_now: int | None = None, attempts: int = 5) -> None:
        """Compact and index the target (followers paused), unless nothing new was copied
        (``copied_now``, default: the report's) since an earlier run finalized it.
        ``attempts``: tries of a finalize that meets a conflicting write."""
        copied_now = self.report.total_copied_now if copied_now is None else copied_now
        if copied_now == 0 and self.store.read(FINALIZED_KEY) is not None:
            self.report.finalize = {"skipped": "nothing new was copied"}
            return
        assert self.target is not None and self.router is not None
        target, router = self.target, self.router
        stop = threading.Event()

        def keep_paused() -> None:  # a driver that dies here lets the pause lapse
            while not stop.is_set():
                router.call("pause_followers", FOLLOWER_PAUSE_S)
                stop.wait(FOLLOWER_PAUSE_S / 3)

        holder = threading.Thread(target=keep_paused, daemon=True, name="rm-finalize-pause")
        holder.start()
        try:
            # A catch-up step that began before the pause, or a client writing to a unit
            # already on the target (a resumed run), makes the compaction conflict: retry.
            with background():  # bulk work: the application and the router come first
                result = with_retries(lambda: target.finalize(self.cfg.lance),
                                      attempts=attempts, backoff_s=1.0,
                                      what="finalize the target")
        finally:
            stop.set()
            holder.join()
            router.call("pause_followers", 0)
        self.store.write(FINALIZED_KEY, {"at": time.time(), **result})
        self.report.finalize = result

    # --- the end --------------------------------------------------------------------------
    def close(self, release_stores: bool = True) -> RunReport:
        """Stop the workers, write the report and, last, let go of the driver lease."""
        import ray

        try:
            for w in self.workers:
                ray.kill(w, no_restart=True)
            self.workers = []
            if self.router is not None:
                for row in self.router.call("status")["units"]:
                    self._final_row(row)
            # This driver ends: the router releases the Qdrant local stores that no other live
            # process (a running driver, a client of another job) needs, at once if
            # ``release_stores``, else when it next looks.
            release_local_stores(self.cfg, self.router, release=release_stores)
            self.report.finished_at = time.time()
            if self.router is not None:  # refused before it started: nothing is written
                key = REPORT_KEY if self.report.command == "run" else \
                    f"{self.report.command}.json"
                self.store.write(key, self.report.model_dump(mode="json"))
                if self.report.command == "run":
                    write_report_files(self)
        finally:
            if self.lease is not None:
                self.lease.release()
        return self.report

    def _final_row(self, row: dict[str, Any]) -> None:
        """A unit's row as the router has it at the end: phase, owner, why it failed or who
        rolled it back."""
        r = self._row(row["unit_id"])
        r.phase, r.owner = row["phase"], row["owner"]
        if row["longest_freeze_ms"]:  # the router's view; the cutover's may be longer
            r.freeze_ms = max(r.freeze_ms or 0.0, row["longest_freeze_ms"])
        if row["phase"] == "failed":  # a follower failed it: its reason comes first
            r.status, r.error = "failed", row["last_error"] or r.error or "failed"
        elif row["last_error"] and not r.error:
            r.error = row["last_error"]
        if row["phase"] == "rolled_back":
            r.note = switch_note(self.store, r.unit_id, "rollback", self.report.started_at)


def release_local_stores(cfg: MigrationConfig, router: RouterHandle | None = None,
                         release: bool = True) -> list[str]:
    """Let go of the migration's Qdrant local folders, so other processes can open them.

    With ``router`` (the one this driver started), tell it that this driver exited: it
    releases at once (with ``release``) every store that no live client of another process
    needs, and the others once their last client has gone (``routing.presence``). Without
    one, ask the migration's router, if any, to release what no other process needs; with no
    router at all, release every folder. Returns the folders released now."""
    import ray

    from ray_migrate.backends.qdrant_host import release_hosted_qdrant

    if not ray.is_initialized():  # the driver never joined a cluster: no store was opened
        return []
    me = process_info()
    try:
        if router is not None:
            return router.call("driver_exited", me, release, timeout_s=30)
        return get_router(cfg.migration_id).call("release_unneeded", me, timeout_s=30)
    except TerminalError:  # no router: nothing else can need the folders
        pass
    except Exception as err:  # noqa: BLE001 - an unreachable router cannot decide for us
        log.warning("the router could not release the stores (%s: %s); releasing them here",
                    type(err).__name__, err)
    if not release:
        return []
    released = []
    for ep in (cfg.source, cfg.target):
        if ep.kind == "qdrant" and ep.path and release_hosted_qdrant(ep.path):
            released.append(ep.path)
    return released


def _switch_key(unit_id: str) -> str:
    return f"switches/{safe_name(unit_id)}.json"


def record_switch(store: StateStore, unit_id: str, method: str, command: str,
                  res: dict[str, Any]) -> None:
    """Who switched the unit last, and when: a run going on meanwhile reports it."""
    store.write(_switch_key(unit_id), {
        "method": method, "ok": res["ok"], "reason": res.get("reason"), "at": time.time(),
        "command": command, "host": socket.gethostname(), "pid": os.getpid()})


def switch_note(store: StateStore, unit_id: str, method: str, since: float) -> str:
    """'rolled back at 12:00:01 by `ray-migrate rollback` (pid 7 on host h)', for the report
    of a unit found rolled back at the end of a run."""
    rec = store.read(_switch_key(unit_id))
    what = {"rollback": "rolled back", "cutover": "cut over"}[method]
    if not rec or rec["method"] != method or not rec["ok"]:
        return f"{what} by a command this run did not see"
    when = time.strftime("%H:%M:%S" if rec["at"] >= since else "%Y-%m-%d %H:%M:%S",
                         time.localtime(rec["at"]))  # a date: before this run
    return (f"{what} at {when} by `ray-migrate {rec['command']}` (pid {rec['pid']} on host "
            f"{rec['host']})")
