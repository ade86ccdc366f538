"""Shadow reads: a share of client searches also runs on the side that does not own the data.

``reads.shadow_percent`` of searches whose scope holds units on the target (phase ``target``,
still followed back to the source) or units ``ready`` on the source run a second time, in the
background, on the other side: the source for the first, the target for the second. The
application always gets the owner's answer, at the owner's speed: the shadow runs after it
in the client's own small thread pool, at most ``MAX_IN_FLIGHT`` at a time (a read that finds
them all busy is skipped and counted), and a shadow's error or slowness is only counted. Each
shadow read records overlap@k (ids in common / k) and both latencies in the client's
statistics (``ClientStats.shadow``, which go to the router) and as Ray metrics.

Retrieve is not shadowed: it returns stored points, which verify compares exactly already.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from ray_migrate import metrics
from ray_migrate.client_stats import ANY_UNIT, ClientStats

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2  # shadow reads under way at once per client; more are skipped
Routes = dict[str, tuple[str, str]]
# search(routes) -> the ids of the top-k over the units of ``routes``, each on its side
Search = Callable[[Routes], list[Any]]


def shadow_routes(routes: Routes) -> Routes:
    """The units a shadow read covers, each routed to the side that does not own it: units
    on the target still followed back (``target``) and units ready to move (``ready``)."""
    out = {}
    for unit, (owner, phase) in routes.items():
        if owner == "target" and phase == "target":
            out[unit] = ("source", phase)
        elif owner == "source" and phase == "ready":
            out[unit] = ("target", phase)
    return out


class Shadow:
    """A client's shadow reads. ``rng``: decides which reads are shadowed (injectable)."""

    def __init__(self, percent: float, stats: ClientStats, migration_id: str,
                 rng: random.Random | None = None, max_in_flight: int = MAX_IN_FLIGHT):
        self.percent, self.stats, self.migration_id = percent, stats, migration_id
        self.rng = rng or random.Random()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._pool: ThreadPoolExecutor | None = None  # started by the first shadow read
        self._futures: set[Future] = set()
        self._lock = threading.Lock()

    def sampled(self) -> bool:
        return self.percent > 0 and self.rng.random() * 100 < self.percent

    def after_search(self, search: Search, scope: Routes, owner_ids: list[Any],
                     owner_ms: float, k: int, began: float) -> bool:
        """Shadow this search (the owner's answer ``owner_ids`` over ``scope`` in
        ``owner_ms``) if it is sampled and covers units to shadow; True if started."""
        if self.percent <= 0:
            return False
        flipped = shadow_routes(scope)
        if not flipped or not self.sampled():
            return False
        owners = {scope[u][0] for u in flipped}
        owner = owners.pop() if len(owners) == 1 else "both"
        unit = next(iter(flipped)) if len(flipped) == 1 else ANY_UNIT
        if not self._slots.acquire(blocking=False):
            self.stats.shadow(began, owner, unit, owner_ms, None, None, skipped=True)
            return False
        # A scope only partly shadowed: the owner's answer over the same units, to compare.
        same = None if len(flipped) == len(scope) else {u: scope[u] for u in flipped}
        job = (search, flipped, same, owner_ids, owner_ms, k, began, owner, unit)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-shadow")
            fut = self._pool.submit(self._run, *job)
            self._futures.add(fut)
        fut.add_done_callback(self._done)
        return True

    def _done(self, fut: Future) -> None:
        with self._lock:
            self._futures.discard(fut)

    def _run(self, search: Search, flipped: Routes, same: Routes | None, owner_ids: list[Any],
             owner_ms: float, k: int, began: float, owner: str, unit: str) -> None:
        t0 = time.perf_counter()
        overlap = None
        try:
            if same is not None:
                owner_ids = search(same)
                owner_ms = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
            shadow_ids = search(flipped)
            overlap = len(set(shadow_ids) & set(owner_ids)) / k
        except Exception as err:  # noqa: BLE001 - a shadow never reaches the application
            log.debug("shadow read of %s failed: %s: %s", unit, type(err).__name__, err)
        finally:
            self._slots.release()
        shadow_ms = (time.perf_counter() - t0) * 1000
        try:
            self.stats.shadow(began, owner, unit, owner_ms, shadow_ms, overlap)
            metrics.shadow_read(self.migration_id, unit, owner, overlap, shadow_ms)
        except Exception as err:  # noqa: BLE001 - statistics never break a client
            log.debug("shadow read not recorded: %s", err)

    def drain(self, timeout_s: float | None = None) -> None:
        """Wait for the shadow reads under way (tests, and ``close``)."""
        with self._lock:
            futures = list(self._futures)
        wait(futures, timeout=timeout_s)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["MAX_IN_FLIGHT", "Shadow", "shadow_routes"]
