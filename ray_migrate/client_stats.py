"""What clients experience, counted where it happens: requests, errors and latency per op.

Every ``RoutedCollection`` call adds one sample to a bucket of its own process, keyed by the
second it began (wall clock), the op (upsert, delete, search, retrieve, count), the side that
served it (``source``, ``target``, ``both``) and its unit (``*`` when it spans several). A
bucket holds a count, an error count and a fixed-size latency histogram of log-spaced bins, so
percentiles come out of any merge of buckets and merging is adding. Shadow reads
(``ray_migrate.shadow``) are buckets of op ``shadow`` (side: the owner that answered): count,
shadow errors, the shadow's latency histogram, and in ``extra`` the sum of overlap@k, the
owner's latency histogram and the reads skipped because too many shadows were under way. Recording takes a lock and
a dict update: no remote call. The route watcher (``routing.watch.RouteCache``) hands the
buckets to the router about once a second, fire and forget (``routing.client_stats``).
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ray_migrate.errors import InvalidDataError

MIN_MS = 0.05  # the first bin's upper edge; faster calls land in it
GROWTH = 2 ** 0.25  # each bin 19% wider than the one before: a percentile is off by < 19%
BINS = 96  # up to MIN_MS * GROWTH**95, about 710 s; slower calls land in the last bin
OPS = ("upsert", "delete", "search", "retrieve", "count")
ANY_UNIT = "*"

Key = tuple[int, str, str, str]  # (second, op, side, unit)
Row = list[Any]  # [second, op, side, unit, count, errors, {bin: count}(, extra)]
SHADOW = "shadow"  # the op of shadow-read buckets; never counted as a client request


def bin_of(ms: float) -> int:
    """The histogram bin of a latency: bin i holds (edge(i-1), edge(i)]."""
    if ms <= MIN_MS:
        return 0
    return min(BINS - 1, math.ceil(math.log(ms / MIN_MS) / math.log(GROWTH)))


def edge(i: int) -> float:
    """The upper edge of bin ``i``, in ms."""
    return MIN_MS * GROWTH ** i


def merge_hist(into: dict[int, int], other: dict[Any, int]) -> dict[int, int]:
    """Add ``other`` (whose keys may be strings, after JSON) into ``into``."""
    for b, n in other.items():
        into[int(b)] = into.get(int(b), 0) + n
    return into


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, as its bin's upper edge; None when empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return round(edge(b), 3)
    return round(edge(max(hist)), 3)


class Bucket:
    """Counts, errors and the latency histogram of one key; for a shadow bucket also the
    overlap sum, the owner's latency histogram and the skipped reads (``extra``)."""

    __slots__ = ("count", "errors", "hist", "overlap", "owner_hist", "skipped")

    def __init__(self, count: int = 0, errors: int = 0, hist: dict[int, int] | None = None,
                 extra: dict[str, Any] | None = None):
        self.count, self.errors, self.hist = count, errors, hist or {}
        self.overlap, self.owner_hist, self.skipped = 0.0, {}, 0
        if extra:
            self.merge_extra(extra)

    def add(self, ms: float, error: bool) -> None:
        self.count += 1
        self.errors += error
        b = bin_of(ms)
        self.hist[b] = self.hist.get(b, 0) + 1

    def merge(self, count: int, errors: int, hist: dict[Any, int],
              extra: dict[str, Any] | None = None) -> None:
        self.count += count
        self.errors += errors
        merge_hist(self.hist, hist)
        if extra:
            self.merge_extra(extra)

    def merge_extra(self, extra: dict[str, Any]) -> None:
        self.overlap += extra.get("overlap", 0.0)
        merge_hist(self.owner_hist, extra.get("owner_hist", {}))
        self.skipped += extra.get("skipped", 0)

    def merge_bucket(self, other: Bucket) -> None:
        self.merge(other.count, other.errors, other.hist, other.extra())

    def extra(self) -> dict[str, Any] | None:
        """The shadow fields, None for a plain bucket (its row keeps 7 elements)."""
        if not (self.overlap or self.owner_hist or self.skipped):
            return None
        return {"overlap": self.overlap, "owner_hist": self.owner_hist,
                "skipped": self.skipped}

    def row(self, key: Key) -> Row:
        extra = self.extra()
        return [*key, self.count, self.errors, self.hist, *([extra] if extra else [])]

    def shadow_summary(self) -> dict[str, Any]:
        """Shadow reads: how many, mean overlap@k of those that answered, p95 of each side."""
        answered = self.count - self.errors
        return {"reads": self.count, "errors": self.errors, "skipped": self.skipped,
                "overlap_at_k": self.overlap / answered if answered else None,
                "p95_ms_owner": percentile(self.owner_hist, 0.95),
                "p95_ms_shadow": percentile(self.hist, 0.95)}

    def summary(self) -> dict[str, Any]:
        return {"requests": self.count, "errors": self.errors,
                "error_rate": self.errors / self.count if self.count else 0.0,
                "p50_ms": percentile(self.hist, 0.50), "p95_ms": percentile(self.hist, 0.95),
                "p99_ms": percentile(self.hist, 0.99)}


class ClientStats:
    """One process's buckets since they were last taken. ``clock``: wall time, injectable;
    ``migration_id``: the migration whose Ray metrics the calls also go to (None: none)."""

    def __init__(self, clock: Callable[[], float] = time.time, migration_id: str | None = None):
        self.clock, self.migration_id = clock, migration_id
        self._lock = threading.Lock()
        self._buckets: dict[Key, Bucket] = {}
        self._tags = threading.local()

    def tag(self, side: str | None = None, units: Iterable[str] | None = None) -> None:
        """What the call under way on this thread touches (sides and units), for its sample."""
        t = self._tags
        if side is not None:
            was = getattr(t, "side", None)
            t.side = side if was in (None, side) else "both"
        if units is not None:
            seen = set(getattr(t, "units", ())) | set(units)
            t.units = seen

    def _begin(self) -> None:
        self._tags.side, self._tags.units = None, set()

    def _finish(self, op: str, began: float, t0: float, error: bool) -> float:
        """Record the call under way on this thread; returns its ms."""
        t = self._tags
        side, units = getattr(t, "side", None) or "none", getattr(t, "units", set())
        unit = next(iter(units)) if len(units) == 1 else ANY_UNIT
        ms = (time.perf_counter() - t0) * 1000
        self.record(op, began, ms, error, side, unit)
        return ms

    def record(self, op: str, began: float, ms: float, error: bool,
               side: str = "none", unit: str = ANY_UNIT) -> None:
        key = (int(began), op, side, unit)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = Bucket()
            bucket.add(ms, error)

    def shadow(self, began: float, owner: str, unit: str, owner_ms: float,
               shadow_ms: float | None, overlap: float | None, skipped: bool = False) -> None:
        """One shadow read of ``unit`` answered by ``owner``: its overlap@k and both
        latencies; ``overlap`` None: the shadow failed (an error); ``skipped``: not run."""
        key = (int(began), SHADOW, owner, unit)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = Bucket()
            if skipped:
                bucket.skipped += 1
                return
            bucket.add(owner_ms if shadow_ms is None else shadow_ms, overlap is None)
            bucket.overlap += overlap or 0.0
            b = bin_of(owner_ms)
            bucket.owner_hist[b] = bucket.owner_hist.get(b, 0) + 1

    def take(self) -> list[Row]:
        """Every bucket recorded since the last take, as plain rows (for the router)."""
        with self._lock:
            buckets, self._buckets = self._buckets, {}
        return [b.row(key) for key, b in sorted(buckets.items())]


F = TypeVar("F", bound=Callable[..., Any])


def timed(op: str) -> Callable[[F], F]:
    """Record each call of a ``RoutedCollection`` method, timed once: in its ``stats`` (for
    the router: the report, the gates) and as a Ray metric (``backend`` ``routed``). Bad input
    is not counted at all: it is refused before any engine sees a request."""
    from ray_migrate import metrics

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            stats: ClientStats = self.stats
            stats._begin()
            began, t0 = stats.clock(), time.perf_counter()
            error = True
            try:
                out = fn(self, *args, **kwargs)
                error = False
                return out
            except (ValueError, InvalidDataError):  # bad input, refused before any engine call
                error = None
                raise
            finally:
                if error is not None:
                    ms = stats._finish(op, began, t0, error=error)
                    if stats.migration_id is not None:
                        metrics.client_call(stats.migration_id, op, "routed", ms, error)
        return call  # type: ignore[return-value]
    return wrap


__all__ = ["ANY_UNIT", "BINS", "OPS", "SHADOW", "Bucket", "ClientStats", "bin_of", "edge", "merge_hist",
           "percentile", "timed"]
