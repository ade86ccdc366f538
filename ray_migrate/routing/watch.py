"""A client's view of the routing table: its cached routes, the watch that keeps them
current, and its presence at the router.

From ``connect`` to ``close`` one ``watch_routes`` call is always outstanding: it returns as
soon as the table changes (so the cache follows every change within a round trip) and it is
the client's heartbeat, which keeps the stores it may call alive (``routing.presence``).
Every write's answer carries the table's epoch as well: a client that sees a newer one asks
for the table again before its next read, so it always reads its own writes. While the watch
fails (the router restarts), reads ask the router every time and the watch keeps trying.
``close`` and an atexit hook say goodbye, so the router can release what no one needs.
While it waits, the watch thread also hands the client's request statistics
(``client_stats.ClientStats``) to the router about every ``STATS_EVERY_S``, fire and forget.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import threading
import time
import uuid
import weakref
from typing import Any

from ray_migrate.routing.actor import RouterHandle, get_router

log = logging.getLogger(__name__)

WATCH_S = 10.0  # how long one wait for a change of the routing table lasts
RETRY_MAX_S = 1.0  # the longest pause between failed watches (under presence.LAPSE_S)
GOODBYE_S = 30.0  # a goodbye waits this long, at most, for the router's releases
STATS_EVERY_S = 1.0  # how often the client's request statistics go to the router


def process_info() -> dict[str, Any]:
    """This process as the router knows it: Ray job, pid, host and node."""
    import os
    import socket

    import ray

    ctx = ray.get_runtime_context()
    return {"job_id": ctx.get_job_id(), "pid": os.getpid(), "host": socket.gethostname(),
            "node_id": ctx.get_node_id()}


class RouteCache:
    """The routes of one client, kept current by its watch."""

    def __init__(self, router: RouterHandle, migration_id: str, stats: Any = None):
        self.router = router
        self.stats = stats  # a ``client_stats.ClientStats``, or None
        self._stats_at = time.monotonic()
        self.migration_id = migration_id
        self.me = {"client_id": uuid.uuid4().hex, **process_info()}
        self._lock = threading.Lock()
        self._routes: dict[str, Any] | None = None  # unit -> (owner, phase), at _routes_epoch
        self._routes_epoch = -1
        self._epoch_seen = -1  # the epoch of the latest answer from the router
        self._watch_ok = False  # the last watch call answered (or hello did, before any)
        self._closed = False
        hello = router.call("hello", self.me)
        self.store_node: str | None = hello.get("store_node")
        self.take(hello)
        self._watch_ok = True
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="rm-routes")
        self._watcher.start()
        atexit.register(_goodbye_at_exit, weakref.ref(self))

    @property
    def client_id(self) -> str:
        return self.me["client_id"]

    def routes(self) -> dict[str, tuple[str, str]]:
        """unit -> (owner, phase): the cached table while the watch keeps it current and no
        newer epoch has been seen since, else asked of the router."""
        with self._lock:
            if (self._routes is not None and self._routes_epoch == self._epoch_seen
                    and self._watch_ok and self._watcher.is_alive()):
                return self._routes
        out = self.router.call("routes")
        self.take(out)
        return out["units"]

    def take(self, out: dict[str, Any]) -> None:
        """Keep a table unless an answer that arrived first was newer (epochs only grow)."""
        with self._lock:
            if out["epoch"] >= self._routes_epoch:
                self._routes, self._routes_epoch = out["units"], out["epoch"]
            self._epoch_seen = max(self._epoch_seen, out["epoch"])

    def saw_epoch(self, epoch: int) -> None:
        with self._lock:
            self._epoch_seen = max(self._epoch_seen, epoch)

    def _watch(self) -> None:
        """One watch outstanding until closed; on failure pause (at most RETRY_MAX_S) and
        watch again, through a fresh handle if the router was replaced. Stops when Ray shuts
        down in this process (it waits in short slices, so it never blocks the shutdown)."""
        import ray

        failures = 0
        while not self._closed:
            try:
                out = self._watch_once(self._routes_epoch)
                if out is None:
                    return
                self.take(out)
                self._watch_ok, failures = True, 0
            except BaseException as err:  # noqa: BLE001 - reads ask the router meanwhile
                if not ray.is_initialized() or isinstance(err, SystemExit):
                    return
                self._watch_ok = False
                failures += 1
                log.debug("routing watch: %s: %s", type(err).__name__, err)
                time.sleep(min(0.1 * failures, RETRY_MAX_S))
                self._refresh_handle()

    def _watch_once(self, epoch: int) -> dict[str, Any] | None:
        """One watch call: the routes once they differ from ``epoch`` (or after WATCH_S);
        None when closed or Ray shut down meanwhile."""
        import ray

        # Not retried by Ray: a router killed for good would keep it pending.
        answer = self.router.actor.watch_routes.options(max_task_retries=0).remote(
            self.me, epoch, WATCH_S).future()
        while True:  # a Python future: this thread is never inside a Ray call here
            try:
                return answer.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if self._closed or not ray.is_initialized():
                    return None
                if time.monotonic() - self._stats_at >= STATS_EVERY_S:
                    self.push_stats()

    def push_stats(self, wait_s: float = 0.0) -> None:
        """Hand the statistics recorded since the last time to the router: fire and forget,
        or waiting up to ``wait_s`` (at close). Rows of a failed hand-over go with the next."""
        self._stats_at = time.monotonic()
        rows = self.stats.take() if self.stats is not None else []
        if not rows:
            return
        ref = self.router.actor.push_client_stats.remote(self.client_id, rows)
        if wait_s <= 0:
            return
        import ray

        try:
            ray.get(ref, timeout=wait_s)
        except Exception as err:  # noqa: BLE001 - statistics are never worth failing for
            log.debug("client statistics not handed over: %s: %s", type(err).__name__, err)

    def _refresh_handle(self) -> None:
        try:
            self.router.actor = get_router(self.migration_id).actor
        except Exception:  # noqa: BLE001 - no router now: keep the old handle and try again
            pass

    def close(self) -> None:
        """Stop watching and say goodbye; the router releases at once what no live client
        needs any more, and answers once it has."""
        if self._closed:
            return
        self._closed = True
        import ray

        if not ray.is_initialized():
            return
        try:
            self.push_stats(wait_s=5.0)
            released = ray.get(self.router.actor.goodbye.remote(self.client_id),
                               timeout=GOODBYE_S)
            if released:
                log.info("released on goodbye: %s", released)
        except Exception as err:  # noqa: BLE001 - the client lapses after a watch period
            log.warning("goodbye to the router failed (%s: %s); the router will notice "
                        "within a watch period", type(err).__name__, err)


def _goodbye_at_exit(ref: weakref.ReferenceType[RouteCache]) -> None:
    cache = ref()
    if cache is not None:
        cache.close()


__all__ = ["GOODBYE_S", "WATCH_S", "RouteCache", "process_info"]
