"""The routing-table actor: a named, detached Ray actor around ``routing.RoutingTable``.

It persists the table under ``state_uri`` on every change of owner or phase (and the change
logs at most every ``FLUSH_S``), and a restarted actor rebuilds itself from that state: the
rules are ``routing.durable``'s. Callers never see ``ray.get``: ``RouterHandle`` hides it and
retries while the actor restarts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Any

from ray_migrate import metrics
from ray_migrate.priority import process_at_normal_priority
from ray_migrate.routing.activity import ClientActivity
from ray_migrate.routing.client_stats import StatsSeries
from ray_migrate.routing.durable import CHANGES_KEY, FLUSH_S, ROUTING_KEY, DurableTable
from ray_migrate.routing.handle import RouterHandle, Signal
from ray_migrate.routing.presence import Presence, stores_of
from ray_migrate.state import StateStore

log = logging.getLogger(__name__)

NAMESPACE = "ray_migrate"
PRESENCE_KEY = "presence.json"  # the drivers that run, for a router rebuilt after a crash
RELEASE_EVERY_S = 1.0  # how often the router looks for stores that no one needs
METRICS_EVERY_S = 1.0  # how often the units' phases and lags go to the metrics
RELEASE_DRAIN_S = 10.0  # at most this long a release waits for writes under way on the store
__all__ = ["CHANGES_KEY", "FLUSH_S", "NAMESPACE", "ROUTING_KEY", "Router", "RouterHandle",
           "get_router", "router_name", "start_router"]


def router_name(migration_id: str) -> str:
    return f"rm:{migration_id}:router"


class Router:
    """The actor's body. Async, so waits (leases, freezes) never block other callers."""

    def __init__(self, migration_id: str, state_uri: str, unit_ids: list[str],
                 info: dict[str, Any], lease_s: float = 30.0, freeze_timeout_s: float = 10.0,
                 state_options: dict[str, str] | None = None):
        import ray

        self.store = StateStore(state_uri, migration_id, state_options)
        # Config (without credentials) and plan, for clients that connect by migration id.
        self.info = info
        # A fresh actor in a new cluster has no old clients; a reconstructed one may.
        again = ray.get_runtime_context().was_current_actor_reconstructed
        self.durable = DurableTable.open(self.store, unit_ids, lease_s, freeze_timeout_s,
                                         clients_may_remain=again, name=migration_id)
        self.table = self.durable.table
        self.stats = StatsSeries.open(self.store)  # clients' requests, copy progress
        # Every client write waits for this actor twice: it must not get the CPU last.
        process_at_normal_priority()
        self._prioritized = False
        self._changed = Signal()  # fired on every new epoch
        self._ended = Signal()  # fired when writes end
        self.table.on_change = self._changed.fire
        self.table.on_freeze = functools.partial(metrics.freeze, migration_id)
        self._metrics_task: asyncio.Task | None = None  # started with the event loop
        self._driver: dict[str, Any] | None = None  # the lease holder (``claim_driver``)
        self._presence_state: Presence | None = None  # made in the event loop (``_presence``)

    async def _metrics_loop(self) -> None:
        """Every unit's phase and catch-up lag to the metrics, every METRICS_EVERY_S."""
        mid = self.store.migration_id
        while True:
            for unit_id, (phase, lag, _reserved, age) in self.table.lags().items():
                metrics.unit_state(mid, unit_id, phase, lag, age)
            await asyncio.sleep(METRICS_EVERY_S)

    def _start_metrics(self) -> None:
        if self._metrics_task is None:
            self._metrics_task = asyncio.get_running_loop().create_task(self._metrics_loop())

    async def describe(self) -> dict[str, Any]:
        return {**self.info, "epoch": self.table.epoch, "state_uri": self.store.uri,
                "pid": os.getpid()}

    async def routes(self) -> dict[str, Any]:
        self._start_metrics()
        return {"epoch": self.table.epoch,
                "units": {k: (u.owner, u.phase) for k, u in self.table.units.items()}}

    async def wait_routes(self, epoch: int, timeout_s: float = 10.0) -> dict[str, Any]:
        """``routes`` as soon as the epoch differs from ``epoch`` (at once if it does now), or
        after ``timeout_s``: clients keep their cached table current with one such call
        outstanding, instead of asking on every read."""
        if self.table.epoch == epoch:
            await self._changed.wait(timeout_s)
        return await self.routes()

    async def status(self) -> dict[str, Any]:
        return {"epoch": self.table.epoch, "units": self.table.status()}

    async def begin_write(self, unit_id: str, ids: list[Any], value: Any = None
                          ) -> dict[str, Any]:
        return (await self.begin_writes([(unit_id, ids, value)]))[0]

    async def end_write(self, token: int) -> dict[str, Any]:
        return (await self.end_writes([token]))[0]

    async def begin_writes(self, requests: list[tuple[str, list[Any], Any]],
                           whole: bool = False, wide: bool = False,
                           wait_s: float = 0.0) -> list[dict[str, Any]]:
        """``RoutingTable.begin_writes``: several units in one call, all or nothing if
        ``whole``; ``wide``: without the client's look-up, if the table is quiet (P2a).
        ``wait_s``: while every answer would be "wait" (the units frozen, nothing granted),
        wait up to this long for the next change of the table (a freeze lifted or flipped)
        and ask again, so a write meeting a freeze is granted the moment it ends instead of
        its client polling the router through the freeze (P9)."""
        if not self._prioritized:  # the event loop's thread may start after __init__
            self._prioritized = True
            process_at_normal_priority()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            out = self.durable.begin_writes(requests, whole, wide=wide)
            left = deadline - loop.time()
            if left <= 0 or any(le["status"] == "ok" for le in out):
                return out
            await self._changed.wait(left)

    async def end_writes(self, tokens: list[int],
                         carried: dict[int, tuple[Any, int]] | None = None
                         ) -> list[dict[str, Any]]:
        """``end_write`` for several leases; ``carried``: token -> (rows, nbytes) of the
        writes that succeeded, for the appliers (see ``routing.client_rows``)."""
        out = self.durable.end_writes(tokens, carried)
        self._ended.fire()
        return out

    async def set_phase(self, unit_id: str, phase: str) -> int:
        self._start_metrics()
        return self.durable.set_phase(unit_id, phase)  # type: ignore[arg-type]

    async def lift_freeze(self, unit_id: str, phase: str) -> bool:
        """``RoutingTable.lift_freeze``: unfreeze unless a flip came first."""
        return self.durable.lift_freeze(unit_id, phase)  # type: ignore[arg-type]

    async def settle(self, unit_id: str, phase: str, may_switch: bool, force: bool,
                     wait_s: float = 0.0, strict: bool = False) -> dict[str, Any]:
        """``RoutingTable.settle``, in one step of this actor. ``wait_s``: while the answer
        would be that writes are under way and none has ended (nothing for the caller to do
        but look again), wait up to this long for one to end, then answer. A cutover waiting
        for a quiet moment makes one call per write that ends, instead of polling. The answer
        says how long it waited (``waited_ms``)."""
        loop = asyncio.get_running_loop()
        begun = loop.time()
        deadline = begun + wait_s
        while True:
            out = self.durable.settle(unit_id, phase, may_switch,  # type: ignore[arg-type]
                                      force, strict)
            left = deadline - loop.time()
            if out["state"] != "waiting" or out["settled"] or left <= 0:
                break
            await self._ended.wait(left)
        return {**out, "waited_ms": (loop.time() - begun) * 1000}

    async def flip(self, unit_id: str, phase: str) -> bool:
        """``RoutingTable.flip``: False when an entry settled since the drain (drain again)."""
        return self.durable.flip(unit_id, phase)  # type: ignore[arg-type]

    async def set_phases(self, unit_ids: list[str], phase: str) -> int:
        return self.durable.set_phases(unit_ids, phase)  # type: ignore[arg-type]

    async def update_progress(self, unit_id: str, copied: int | None = None,
                              total: int | None = None, error: str | None = None) -> None:
        unit = self.table.units.get(unit_id)
        if copied is not None and unit is not None:
            self.stats.add_copied(unit_id, copied - unit.copied)
            self.stats.maybe_persist(self.store)
        self.durable.update_progress(unit_id, copied, total, error)

    async def push_client_stats(self, client_id: str, rows: list[list[Any]]) -> None:
        """A client's request statistics since its last push (``routing.client_stats``)."""
        self.stats.add_client(client_id, rows)
        self.stats.maybe_persist(self.store)

    async def client_stats(self, since: float | None = None, until: float | None = None
                           ) -> dict[str, Any]:
        """``StatsSeries.summary``: the series, and per op, unit and side, over a window."""
        return self.stats.summary(since, until)

    async def client_window(self, since: float, until: float, units: list[str] | None = None,
                            side: str | None = None, ops: list[str] | None = None
                            ) -> dict[str, Any]:
        """``StatsSeries.window``: one merged summary, for the SLO gates and the throttle."""
        return self.stats.window(since, until, units, side, ops)

    async def client_newest(self) -> int | None:
        """The second of the newest client bucket handed in (``StatsSeries.newest``)."""
        return self.stats.newest()

    async def client_activity(self) -> dict[str, Any]:
        """What clients did lately (``routing.activity``): a wave's pause with nothing to
        observe ends early."""
        p = self._presence()
        return ClientActivity(live_clients=len(p.live_clients()), last_seen=p.last_seen,
                              last_lease=self.table.last_lease_at,
                              newest_stats=self.stats.newest()).to_dict()

    async def clear_repair(self, unit_id: str) -> None:
        self.durable.clear_repair(unit_id)

    async def wait_leases(self, unit_id: str, before_epoch: int | None = None,
                          timeout_s: float = 30.0) -> bool:
        """Wait until the unit's open leases (older than ``before_epoch``) have ended."""
        deadline = time.monotonic() + timeout_s
        while self.table.open_leases(unit_id, before_epoch) > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    async def take_changes(self, unit_id: str, limit: int = 10_000,
                           holder: str | None = None, background: bool = False,
                           owner: str | None = None
                           ) -> tuple[list[Any], int, list[tuple[list[Any], Any]]]:
        """(ids, seq to ack them with, the clients' rows that stand for some of them).
        ``owner``: the side the caller reads from (nothing if the unit is owned by the
        other)."""
        ids, seq = self.table.take_changes(unit_id, limit, holder, background=background,
                                           owner=owner)  # type: ignore[arg-type]
        return ids, seq, self.table.carried_for(unit_id) if ids else []

    async def log_ids(self, unit_id: str, ids: list[Any]) -> int:
        return self.durable.log_ids(unit_id, ids)

    async def take_many(self, unit_ids: list[str], limit: int, holder: str,
                        owner: str | None = None
                        ) -> dict[str, tuple[list[Any], int, list[tuple[list[Any], Any]]]]:
        """``take_changes`` of several units for a follower that reads from ``owner``."""
        return {u: (ids, seq, self.table.carried_for(u)) for u, (ids, seq)
                in self.table.take_many(unit_ids, limit, holder,
                                        owner=owner).items()}  # type: ignore[arg-type]

    async def ack_many(self, seqs: dict[str, int], holder: str) -> None:
        """Ack a follower step (``take_many``), which also ends it."""
        self.durable.ack_many(seqs, holder)

    async def reserve(self, unit_id: str, holder: str, timeout_s: float = 10.0) -> bool:
        """Reserve the unit for a cutover and wait until a follower's step on it has ended."""
        deadline = time.monotonic() + timeout_s
        while not self.table.reserve(unit_id, holder):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    async def release(self, unit_id: str, holder: str) -> None:
        self.table.release(unit_id, holder)

    async def begin_upkeep(self, seconds: float) -> bool:
        return self.table.begin_upkeep(seconds)

    async def end_upkeep(self) -> None:
        self.table.end_upkeep()

    async def pause_followers(self, seconds: float) -> None:
        self.table.pause_followers(seconds)

    async def yield_followers(self, seconds: float) -> None:
        self.table.yield_followers(seconds)

    async def quiet_followers(self, seconds: float, timeout_s: float = 2.0) -> bool:
        """Followers yield for ``seconds`` (``RoutingTable.yield_followers``); wait until their
        steps under way have ended, so a freeze does not share the CPU with them. False if one
        did not end in time."""
        self.table.yield_followers(seconds)
        deadline = time.monotonic() + timeout_s
        while self.table.followers_busy():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def lags(self) -> dict[str, tuple[str, int, bool, float]]:
        self._start_metrics()
        return self.table.lags()

    async def peek_changes(self, unit_id: str) -> list[Any]:
        return self.table.peek_changes(unit_id)

    async def watch(self, unit_id: str, name: str) -> None:
        self.table.watch(unit_id, name)

    async def watched(self, unit_id: str, name: str) -> list[Any] | None:
        return self.table.watched(unit_id, name)

    async def ack_changes(self, unit_id: str, seq: int, holder: str | None = None) -> int:
        return self.durable.ack_changes(unit_id, seq, holder)

    async def unit(self, unit_id: str) -> dict[str, Any]:
        self._start_metrics()
        u = self.table.unit(unit_id)
        return {"owner": u.owner, "phase": u.phase, "lag": len(u.log), "flips": u.flips,
                "capture_epoch": u.capture_epoch, "needs_repair": u.needs_repair,
                "longest_freeze_ms": u.longest_freeze_ms}

    async def settling_s(self) -> float:
        return self.table.settling_s()

    async def flush(self) -> None:
        self.durable.flush()
        self.stats.persist(self.store)

    # --- the witness of the driver lease (``ray_migrate.lease``), and the run's last step ---
    async def claim_driver(self, info: dict[str, Any], expire_s: float,
                           replace: str | None = None) -> dict[str, Any] | None:
        """Record ``info`` as the migration's running driver, or renew it; answer the other
        live driver instead, if there is one (None: granted). One call at a time, so two
        drivers never both win. ``replace``: the token of a driver the caller knows is dead
        (its pid is gone). A restarted router knows no driver until the holder's next beat."""
        now = time.time()
        held = self._driver
        if (held is not None and held["token"] not in (info["token"], replace)
                and now - held["seen_at"] <= expire_s):
            return held
        self._driver = {**info, "seen_at": now}
        return None

    async def release_driver(self, token: str) -> None:
        held = self._driver
        if held is not None and held["token"] == token:
            self._driver = None

    async def running_driver(self, expire_s: float) -> dict[str, Any] | None:
        """The driver that holds the lease, as it last renewed it, or None."""
        held = self._driver
        return held if held is not None and time.time() - held["seen_at"] <= expire_s else None

    async def finish_units(self, unit_ids: list[str]) -> list[str]:
        """End the rollback window: mark done those of these units that are on the target and
        held by no switch. Answer the ones a rollback holds or freezes now (ask again once it
        is over); a unit rolled back meanwhile stays rolled back."""
        busy, done, now = [], [], time.time()
        for uid in unit_ids:
            u = self.table.units.get(uid)
            if u is not None and (u.phase == "frozen" or (
                    u.phase == "target" and self.table._reserved(u, None, now))):
                busy.append(uid)
            elif u is not None and u.phase == "target":
                self.table.set_phase(uid, "done")
                done.append(uid)
        if done:
            self.durable.persist()
        return busy

    # --- presence: drivers, clients and the hosted stores' lifetime (``routing.presence``) --
    def _presence(self) -> Presence:
        """Made on first use (in the event loop), with the release loop; a rebuilt router
        trusts the drivers it had written down, a fresh one waits for its driver's word."""
        p = self._presence_state
        if p is None:
            import ray

            drivers = None
            if ray.get_runtime_context().was_current_actor_reconstructed:
                drivers = (self.store.read(PRESENCE_KEY) or {}).get("drivers")
            p = self._presence_state = Presence(stores_of(self.info.get("config") or {}),
                                                drivers)
            self._releasing = asyncio.Lock()
            if p.stores:
                self._release_task = asyncio.get_running_loop().create_task(
                    self._release_loop())
        return p

    async def hello(self, client: dict[str, Any]) -> dict[str, Any]:
        """A client connects: its record, and the routes and the stores' node for it."""
        self._presence().client(client)
        return {**await self.routes(),
                "store_node": self._presence().store_node}

    async def watch_routes(self, client: dict[str, Any], epoch: int,
                           timeout_s: float = 10.0) -> dict[str, Any]:
        """``wait_routes`` that is also the client's heartbeat while it is under way."""
        p = self._presence()
        p.watch_began(client, epoch)
        try:
            return await self.wait_routes(epoch, timeout_s)
        finally:
            p.watch_ended(client["client_id"])

    async def goodbye(self, client_id: str) -> list[str]:
        """A client closes: release what no one needs now; answers once released."""
        self._presence().goodbye(client_id)
        return await self._release_unneeded()

    async def driver_started(self, info: dict[str, Any]) -> None:
        self._presence().driver_started(info)
        self.store.write(PRESENCE_KEY, {"drivers": self._presence().drivers})

    async def driver_exited(self, info: dict[str, Any], release: bool = True) -> list[str]:
        """A driver ends. With ``release``, release at once what no live client of another
        Ray job needs (its own clients end with it); the rest goes when no one needs it."""
        self._presence().driver_exited(info)
        self.store.write(PRESENCE_KEY, {"drivers": self._presence().drivers})
        return await self.release_unneeded(info) if release else []

    async def release_unneeded(self, info: dict[str, Any]) -> list[str]:
        """Release now what no live client outside ``info``'s Ray job needs."""
        return await self._release_unneeded([info.get("job_id", "")])

    async def presence(self) -> dict[str, Any]:
        return self._presence().summary()

    async def _release_unneeded(self, ignore_jobs: list[str] | None = None) -> list[str]:
        from ray_migrate.backends.qdrant_host import release_hosted_qdrant_async

        async with self._releasing:
            table = await self.routes()
            released = []
            presence = self._presence()
            for path in presence.to_release(table["units"], table["epoch"],
                                            ignore_jobs=ignore_jobs or ()):
                await self._writes_drained(presence.stores[path])
                if await release_hosted_qdrant_async(path):
                    released.append(path)
            return released

    async def _writes_drained(self, sides: set[str]) -> None:
        """Wait (bounded) until no open lease writes to ``sides``. A client's write begun on
        a unit's old owner just before its flip (a fenced lease) may still be under way there
        when no unit routes to it any more: releasing the store under it would kill the call,
        and the client's store proxy would host the folder again to retry it."""
        deadline = time.monotonic() + RELEASE_DRAIN_S
        while sides & self.table.written_sides() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _release_loop(self) -> None:
        """Releases what lapsed clients left (and stores called again after a release), and
        what a driver killed without a word held: it looks while clients or drivers are
        known."""
        while True:
            await asyncio.sleep(RELEASE_EVERY_S)
            p = self._presence()
            if not p.clients and not p.drivers:
                continue
            try:
                if p.drivers and p.forget_dead(await asyncio.to_thread(dead_jobs)):
                    self.store.write(PRESENCE_KEY, {"drivers": p.drivers})
                await self._release_unneeded()
            except Exception as err:  # noqa: BLE001 - looked at again next time
                log.warning("releasing hosted stores: %s: %s", type(err).__name__, err)

    # --- a unit back in capture whose log may lack writes (``worker.prepare``) -------------
    async def mark_repair(self, unit_id: str) -> None:
        """The unit's log may lack writes (it comes back to capture from a phase that logged
        none, over a copy already made): diff and repair it before it is ready or switches."""
        self.table.unit(unit_id).needs_repair = True
        self.durable.persist()


def dead_jobs() -> set[str]:
    """The Ray jobs of this cluster that have ended (their driver process is gone), as the
    GCS knows them; empty when it cannot tell (then nobody is taken for dead)."""
    import ray

    try:
        jobs = ray._private.worker.global_worker.gcs_client.get_all_job_info()
        return {job_id.hex() for job_id, info in jobs.items() if info.is_dead}
    except Exception as err:  # noqa: BLE001 - an internal API: never fatal
        log.debug("cannot list Ray jobs: %s: %s", type(err).__name__, err)
        return set()


def start_router(migration_id: str, state_uri: str, unit_ids: list[str],
                 info: dict[str, Any], lease_s: float = 30.0,
                 freeze_timeout_s: float = 10.0,
                 state_options: dict[str, str] | None = None) -> RouterHandle:
    """Get or create the detached router; it outlives the driver and restarts when killed.
    ``info`` is handed to every client: no credentials in it. ``state_options``: the
    credentials of an ``s3://`` ``state_uri`` (actor arguments, never printed)."""
    import ray

    actor = ray.remote(Router).options(
        name=router_name(migration_id), namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True, max_restarts=-1, max_task_retries=-1, num_cpus=0,
        max_concurrency=1000,
    ).remote(migration_id, state_uri, unit_ids, info, lease_s, freeze_timeout_s, state_options)
    handle = RouterHandle(actor)
    handle.call("flush")
    from ray_migrate.routing.watch import process_info

    handle.call("driver_started", process_info())  # see ``routing.presence``
    return handle


def get_router(migration_id: str) -> RouterHandle:
    import ray

    try:
        return RouterHandle(ray.get_actor(router_name(migration_id), namespace=NAMESPACE))
    except ValueError:
        from ray_migrate.errors import TerminalError

        raise TerminalError(
            f"no router for migration {migration_id!r} in this Ray cluster: start the "
            "migration with `ray-migrate run CONFIG` (or connect to the cluster that runs it)"
        ) from None
