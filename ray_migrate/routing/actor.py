"""The routing-table actor: a named, detached Ray actor around ``routing.RoutingTable``.

It persists the table under ``state_uri`` on every change of owner or phase (and the change
logs at most every ``FLUSH_S``), and a restarted actor rebuilds itself from that state. Callers
never see ``ray.get``: ``RouterHandle`` hides it and retries while the actor restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ray_migrate.priority import process_at_normal_priority
from ray_migrate.routing.presence import Presence, stores_of
from ray_migrate.routing.table import RoutingTable
from ray_migrate.state import StateStore

log = logging.getLogger(__name__)

NAMESPACE = "ray_migrate"
ROUTING_KEY = "routing.json"
CHANGES_KEY = "changes.json"  # the change logs, written apart and at most every FLUSH_S
FLUSH_S = 0.2
PRESENCE_KEY = "presence.json"  # the drivers that run, for a router rebuilt after a crash
RELEASE_EVERY_S = 1.0  # how often the router looks for stores that no one needs


def router_name(migration_id: str) -> str:
    return f"rm:{migration_id}:router"


class Signal:
    """Wakes everyone waiting at the moment it fires, once: an asyncio.Event made by the first
    waiter and dropped when set, so a later waiter waits for the next firing."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout_s: float) -> None:
        """Until the next firing, or ``timeout_s``."""
        if self._event is None:
            self._event = asyncio.Event()
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass

class Router:
    """The actor's body. Async, so waits (leases, freezes) never block other callers."""

    def __init__(self, migration_id: str, state_uri: str, unit_ids: list[str],
                 info: dict[str, Any], lease_s: float = 30.0, freeze_timeout_s: float = 10.0):
        self.store = StateStore(state_uri, migration_id)
        self.info = info  # config and plan, for clients that connect by migration id
        stored = self.store.read(ROUTING_KEY)
        if stored is not None:
            for uid, entries in (self.store.read(CHANGES_KEY) or {}).items():
                if uid in stored["units"]:
                    stored["units"][uid]["log"] = entries
            import ray

            # A fresh actor in a new cluster has no old clients; a reconstructed one may.
            again = ray.get_runtime_context().was_current_actor_reconstructed
            self.table = RoutingTable.from_dict(stored, restarted=True, clients_may_remain=again)
            for u in unit_ids:
                self.table.units.setdefault(u, RoutingTable([u]).units[u])
            log.warning("router %s recovered at epoch %d", migration_id, self.table.epoch)
        else:
            self.table = RoutingTable(unit_ids, lease_s=lease_s,
                                      freeze_timeout_s=freeze_timeout_s)
        self._flushed = 0.0
        # Every client write waits for this actor twice: it must not get the CPU last.
        process_at_normal_priority()
        self._prioritized = False
        self._changed = Signal()  # fired on every new epoch
        self._ended = Signal()  # fired when writes end
        self.table.on_change = self._changed.fire
        self._persist()

    def _persist(self) -> None:
        """Owners, phases and counters: written on every change of the table."""
        self.store.write(ROUTING_KEY, self.table.to_dict(logs=False))

    def _maybe_persist(self) -> None:
        """The change logs, at most every FLUSH_S. They spare a restarted router some repair
        work, nothing more: it marks capturing units for diff-and-repair in any case."""
        if time.monotonic() - self._flushed >= FLUSH_S:
            self._persist_logs()

    def _persist_logs(self) -> None:
        self.store.write(CHANGES_KEY, self.table.logs_dict())
        self._flushed = time.monotonic()

    async def describe(self) -> dict[str, Any]:
        return {**self.info, "epoch": self.table.epoch, "state_uri": self.store.uri,
                "pid": os.getpid()}

    async def routes(self) -> dict[str, Any]:
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
                           whole: bool = False) -> list[dict[str, Any]]:
        """``RoutingTable.begin_writes``: several units in one call, all or nothing if
        ``whole``."""
        if not self._prioritized:  # the event loop's thread may start after __init__
            self._prioritized = True
            process_at_normal_priority()
        epoch = self.table.epoch
        out = self.table.begin_writes(requests, whole)
        if self.table.epoch != epoch:  # a new unit, or a stale freeze lifted
            self._persist()
        elif any(ids and self.table.units[u].phase != "source" for u, ids, _ in requests):
            self._maybe_persist()
        return out

    async def end_writes(self, tokens: list[int],
                         carried: dict[int, tuple[Any, int]] | None = None
                         ) -> list[dict[str, Any]]:
        """``end_write`` for several leases; ``carried``: token -> (rows, nbytes) of the
        writes that succeeded, for the appliers (see ``routing.client_rows``)."""
        carried = carried or {}
        out = [self.table.end_write(t, *carried.get(t, (None, 0))) for t in tokens]
        self._ended.fire()
        return out

    async def set_phase(self, unit_id: str, phase: str) -> int:
        epoch = self.table.set_phase(unit_id, phase)  # type: ignore[arg-type]
        self._persist()
        return epoch

    async def lift_freeze(self, unit_id: str, phase: str) -> bool:
        """``RoutingTable.lift_freeze``: unfreeze unless a flip came first."""
        lifted = self.table.lift_freeze(unit_id, phase)  # type: ignore[arg-type]
        if lifted:
            self._persist()
        return lifted

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
            out = self.table.settle(unit_id, phase, may_switch, force,  # type: ignore[arg-type]
                                    strict)
            left = deadline - loop.time()
            if out["state"] != "waiting" or out["settled"] or left <= 0:
                break
            await self._ended.wait(left)
        if out["state"] in ("switched", "frozen"):
            self._persist()
        return {**out, "waited_ms": (loop.time() - begun) * 1000}

    async def flip(self, unit_id: str, phase: str) -> bool:
        """``RoutingTable.flip``: False when an entry settled since the drain (drain again)."""
        if not self.table.flip(unit_id, phase):  # type: ignore[arg-type]
            return False
        self._persist()
        return True

    async def set_phases(self, unit_ids: list[str], phase: str) -> int:
        for u in unit_ids:
            self.table.set_phase(u, phase)  # type: ignore[arg-type]
        self._persist()
        return self.table.epoch

    async def update_progress(self, unit_id: str, copied: int | None = None,
                              total: int | None = None, error: str | None = None) -> None:
        self.table.update_progress(unit_id, copied, total, error)
        self._maybe_persist()

    async def clear_repair(self, unit_id: str) -> None:
        self.table.unit(unit_id).needs_repair = False
        self._persist()

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
                           holder: str | None = None, background: bool = False
                           ) -> tuple[list[Any], int, list[tuple[list[Any], Any]]]:
        """(ids, seq to ack them with, the clients' rows that stand for some of them)."""
        ids, seq = self.table.take_changes(unit_id, limit, holder, background=background)
        return ids, seq, self.table.carried_for(unit_id) if ids else []

    async def log_ids(self, unit_id: str, ids: list[Any]) -> int:
        lag = self.table.log_ids(unit_id, ids)
        self._maybe_persist()
        return lag

    async def take_many(self, unit_ids: list[str], limit: int, holder: str
                        ) -> dict[str, tuple[list[Any], int, list[tuple[list[Any], Any]]]]:
        return {u: (ids, seq, self.table.carried_for(u)) for u, (ids, seq)
                in self.table.take_many(unit_ids, limit, holder).items()}

    async def ack_many(self, seqs: dict[str, int], holder: str) -> None:
        """Ack a follower step (``take_many``), which also ends it."""
        for uid, seq in seqs.items():
            self.table.ack_changes(uid, seq, holder)
        self.table.end_follow(holder)
        self._maybe_persist()

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
        return self.table.lags()

    async def peek_changes(self, unit_id: str) -> list[Any]:
        return self.table.peek_changes(unit_id)

    async def watch(self, unit_id: str, name: str) -> None:
        self.table.watch(unit_id, name)

    async def watched(self, unit_id: str, name: str) -> list[Any] | None:
        return self.table.watched(unit_id, name)

    async def ack_changes(self, unit_id: str, seq: int, holder: str | None = None) -> int:
        lag = self.table.ack_changes(unit_id, seq, holder)
        self._maybe_persist()
        return lag

    async def unit(self, unit_id: str) -> dict[str, Any]:
        u = self.table.unit(unit_id)
        return {"owner": u.owner, "phase": u.phase, "lag": len(u.log), "flips": u.flips,
                "capture_epoch": u.capture_epoch, "needs_repair": u.needs_repair,
                "longest_freeze_ms": u.longest_freeze_ms}

    async def settling_s(self) -> float:
        return self.table.settling_s()

    async def flush(self) -> None:
        self._persist()
        self._persist_logs()

    # --- presence: drivers, clients and the hosted stores' lifetime (``routing.presence``) --
    def _presence(self) -> Presence:
        """Made on first use (in the event loop), with the release loop; a rebuilt router
        trusts the drivers it had written down, a fresh one waits for its driver's word."""
        p: Presence | None = getattr(self, "_presence_state", None)
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
        from ray_migrate.backends.qdrant_host import release_hosted_qdrant

        async with self._releasing:
            table = await self.routes()
            released = []
            for path in self._presence().to_release(table["units"], table["epoch"],
                                                    ignore_jobs=ignore_jobs or ()):
                if await asyncio.to_thread(release_hosted_qdrant, path):
                    released.append(path)
            return released

    async def _release_loop(self) -> None:
        """Releases what lapsed clients left (and stores called again after a release):
        only clients call stores once no driver runs, so it looks only while some are known."""
        while True:
            await asyncio.sleep(RELEASE_EVERY_S)
            if not self._presence().clients:
                continue
            try:
                await self._release_unneeded()
            except Exception as err:  # noqa: BLE001 - looked at again next time
                log.warning("releasing hosted stores: %s: %s", type(err).__name__, err)


def start_router(migration_id: str, state_uri: str, unit_ids: list[str],
                 info: dict[str, Any], lease_s: float = 30.0,
                 freeze_timeout_s: float = 10.0) -> RouterHandle:
    """Get or create the detached router; it outlives the driver and restarts when killed."""
    import ray

    actor = ray.remote(Router).options(
        name=router_name(migration_id), namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True, max_restarts=-1, max_task_retries=-1, num_cpus=0,
        max_concurrency=1000,
    ).remote(migration_id, state_uri, unit_ids, info, lease_s, freeze_timeout_s)
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


class RouterHandle:
    """Calls the router and waits for the answer; retries while a killed router restarts."""

    def __init__(self, actor: Any):
        self.actor = actor

    def call(self, method: str, *args: Any, timeout_s: float = 60.0, **kwargs: Any) -> Any:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get(getattr(self.actor, method).remote(*args, **kwargs))
            except (RayActorError, ActorUnavailableError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)
