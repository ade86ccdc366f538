"""Who still needs a migration's hosted Qdrant stores, and when the router releases them.

A Qdrant local folder is held by one actor (``backends.qdrant_host``) while anyone may call
it; only once it is released can another process open the folder. The router keeps this
record and runs the policy, since it outlives the driver:

1. A driver runs from ``driver_started`` to ``driver_exited`` (``Presence.driver_runs``: the
   one place a driver lease plugs in). While one runs, nothing is released. A router rebuilt
   after a crash trusts the drivers it had written down.
2. A client is present from its ``hello`` until its ``goodbye``. Its one outstanding routes
   watch is its heartbeat: a client with no watch under way for ``LAPSE_S`` has gone (a
   crashed client lapses at most a watch period plus ``LAPSE_S`` after its last watch began).
3. A side is needed while a unit routes to it (it owns the unit, or may own it again: a unit
   on the target can still roll back) and, once none does, by a live client whose routes
   are older than the epoch at which the side stopped being routed to.
4. When no driver runs, a store is released unless a live client needs one of its sides.
   When a driver exits, clients of its own Ray job do not count (they end with it), so a
   folder is free for its own process to open the moment ``run_migration`` returns.

Plain Python with injected clocks (``now``), tested without Ray; ``routing.actor`` calls it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

LAPSE_S = 2.0  # no watch under way for this long: the client has gone
ROUTES_TO_SOURCE = frozenset({"target", "frozen"})  # a rollback may still bring these back


@dataclass
class Client:
    client_id: str
    job_id: str = ""
    pid: int = 0
    host: str = ""
    epoch: int = -1  # the routing epoch of its cached table, as its last watch said
    watching: int = 0  # its watch calls under way
    last_seen: float = 0.0

    def live(self, now: float) -> bool:
        return self.watching > 0 or now - self.last_seen < LAPSE_S


def driver_key(info: dict[str, Any]) -> str:
    return f"{info.get('job_id', '')}:{info.get('pid', 0)}@{info.get('host', '')}"


class Presence:
    """Clients and drivers of one migration, and which of its stores to release."""

    def __init__(self, stores: dict[str, set[str]], drivers: dict[str, int] | None = None):
        self.stores = stores  # folder -> the sides ("source", "target") it holds
        self.clients: dict[str, Client] = {}
        self.drivers: dict[str, int] = dict(drivers or {})  # driver key -> starts not ended
        self.store_node: str | None = None  # the first driver's node, where it opened them
        self.unrouted_at: dict[str, int] = {}  # side -> the epoch it was first seen unrouted
        self.last_seen: float | None = None  # any client's last sign of life (``activity``)

    # --- drivers --------------------------------------------------------------------------
    def driver_started(self, info: dict[str, Any]) -> None:
        key = driver_key(info)
        self.drivers[key] = self.drivers.get(key, 0) + 1
        self.store_node = self.store_node or info.get("node_id")

    def driver_exited(self, info: dict[str, Any]) -> None:
        key = driver_key(info)
        left = self.drivers.get(key, 1) - 1
        if left > 0:
            self.drivers[key] = left
        else:
            self.drivers.pop(key, None)

    def driver_runs(self) -> bool:
        """Some driver (or command) started and has not exited, nor died (``forget_dead``)."""
        return bool(self.drivers)

    def forget_dead(self, dead_jobs: Iterable[str]) -> bool:
        """Forget the drivers whose Ray job has ended without their word (killed): otherwise
        their stores were held for good. Returns whether one was forgotten."""
        dead = set(dead_jobs)
        gone = [k for k in self.drivers if k.partition(":")[0] in dead]
        for k in gone:
            del self.drivers[k]
        return bool(gone)

    # --- clients --------------------------------------------------------------------------
    def client(self, info: dict[str, Any], now: float | None = None) -> Client:
        """The client's record, made or refreshed from what it says of itself."""
        now = time.time() if now is None else now
        cid = str(info["client_id"])
        c = self.clients.get(cid)
        if c is None:
            c = self.clients[cid] = Client(cid)
        c.job_id, c.pid, c.host = str(info.get("job_id", "")), int(info.get("pid", 0)), \
            str(info.get("host", ""))
        c.last_seen = self.last_seen = now
        return c

    def watch_began(self, info: dict[str, Any], epoch: int, now: float | None = None) -> None:
        c = self.client(info, now)
        c.watching += 1
        c.epoch = max(c.epoch, epoch)

    def watch_ended(self, client_id: str, now: float | None = None) -> None:
        c = self.clients.get(client_id)
        if c is not None:
            c.watching = max(0, c.watching - 1)
            c.last_seen = self.last_seen = time.time() if now is None else now

    def goodbye(self, client_id: str) -> None:
        self.clients.pop(client_id, None)

    def live_clients(self, now: float | None = None,
                     ignore_jobs: Iterable[str] = ()) -> list[Client]:
        now = time.time() if now is None else now
        skip = set(ignore_jobs)
        for cid in [k for k, c in self.clients.items() if not c.live(now)]:
            del self.clients[cid]  # lapsed
        return [c for c in self.clients.values() if c.job_id not in skip]

    # --- the policy -----------------------------------------------------------------------
    def routed(self, units: dict[str, tuple[str, str]], epoch: int) -> set[str]:
        """Sides some unit routes to now (owner, or the source while a rollback may come);
        notes the epoch from which each other side is unrouted."""
        sides = {owner for owner, _ in units.values()}
        if any(phase in ROUTES_TO_SOURCE for _, phase in units.values()):
            sides.add("source")
        for side in ("source", "target"):
            if side in sides:
                self.unrouted_at.pop(side, None)
            else:
                self.unrouted_at.setdefault(side, epoch)
        return sides

    def needed(self, units: dict[str, tuple[str, str]], epoch: int, now: float | None = None,
               ignore_jobs: Iterable[str] = ()) -> set[str]:
        """Sides a live client (not of ``ignore_jobs``) may call (statement 3)."""
        clients = self.live_clients(now, ignore_jobs)
        if not clients:
            return set()
        sides = self.routed(units, epoch)
        for side, since in self.unrouted_at.items():
            if any(c.epoch < since for c in clients):
                sides.add(side)  # a client may still hold routes to it
        return sides

    def to_release(self, units: dict[str, tuple[str, str]], epoch: int,
                   now: float | None = None, ignore_jobs: Iterable[str] = ()) -> list[str]:
        """Stores to release now (statement 4): none while a driver runs."""
        self.routed(units, epoch)  # note the epochs even while a driver runs
        if self.driver_runs():
            return []
        need = self.needed(units, epoch, now, ignore_jobs)
        return sorted(path for path, sides in self.stores.items() if not sides & need)

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """What ``status`` may show: live clients and whether a driver runs."""
        return {"driver_runs": self.driver_runs(), "drivers": dict(self.drivers),
                "clients": [{"client_id": c.client_id, "job_id": c.job_id, "pid": c.pid,
                             "host": c.host, "epoch": c.epoch}
                            for c in self.live_clients(now)]}


def stores_of(config: dict[str, Any]) -> dict[str, set[str]]:
    """The Qdrant local folders of a migration's config (as the router's info holds it), with
    the sides each holds (both, when source and target share a folder)."""
    import os

    out: dict[str, set[str]] = {}
    for side in ("source", "target"):
        ep = config.get(side) or {}
        if ep.get("kind") == "qdrant" and ep.get("path") and ep["path"] != ":memory:":
            out.setdefault(os.path.abspath(ep["path"]), set()).add(side)
    return out
