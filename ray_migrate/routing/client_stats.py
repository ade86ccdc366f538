"""The router's time series of a migration: client requests, errors and latency, and points
copied, per second, merged from every client and worker.

Clients hand in their buckets (``ray_migrate.client_stats``) about once a second; workers'
copy progress arrives through ``update_progress`` (the delta of each unit's copied count).
Memory is bounded: buckets stay per second for ``FINE_S``, then are merged per minute, and
dropped after ``KEEP_S``. The series is written to ``client_stats.json`` at most every
``PERSIST_S`` and on the router's flush, and read back by a restarted router. Plain Python
with an injected clock: ``routing.actor`` wraps it; the run's report and the SLO gates read
``summary``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

from ray_migrate.client_stats import SHADOW, Bucket, Key, Row, merge_hist

log = logging.getLogger(__name__)

STATS_KEY = "client_stats.json"
FINE_S = 3600  # per-second buckets are kept this long
COARSE_S = 60  # then merged into buckets this wide
KEEP_S = 7 * 86400  # and dropped after this long
COMPACT_EVERY_S = 60.0
PERSIST_S = 10.0


class Documents(Protocol):
    def read(self, key: str, default: Any = None) -> Any: ...

    def write(self, key: str, doc: Any) -> None: ...


class StatsSeries:
    """Client buckets and copy progress by second (or minute, once older than ``FINE_S``)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.buckets: dict[Key, Bucket] = {}
        self.copied: dict[tuple[int, str], int] = defaultdict(int)  # (second, unit) -> points
        self.clients: set[str] = set()
        self._compacted = clock()
        self._persisted = clock()
        self._dirty = False

    # --- in ------------------------------------------------------------------------------
    def add_client(self, client_id: str, rows: list[Row]) -> None:
        """Merge one client's buckets (``ClientStats.take``)."""
        self.clients.add(client_id)
        for t, op, side, unit, count, errors, hist, *extra in rows:
            key = (self._slot(int(t)), op, side, unit)
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = Bucket()
            bucket.merge(count, errors, hist, extra[0] if extra else None)
        self._changed()

    def add_copied(self, unit_id: str, points: int, now: float | None = None) -> None:
        """``points`` more copied for the unit (a worker's progress delta)."""
        if points > 0:
            self.copied[(self._slot(int(self.clock() if now is None else now)), unit_id)] \
                += points
            self._changed()

    def _slot(self, t: int) -> int:
        return t - t % COARSE_S if t < self.clock() - FINE_S else t

    def _changed(self) -> None:
        self._dirty = True
        if self.clock() - self._compacted >= COMPACT_EVERY_S:
            self.compact()

    def compact(self) -> None:
        """Merge buckets older than ``FINE_S`` per minute; drop those older than ``KEEP_S``."""
        now = self.clock()
        self._compacted = now
        old = [k for k in self.buckets if k[0] < now - FINE_S and k[0] % COARSE_S]
        for key in old:
            b = self.buckets.pop(key)
            if key[0] >= now - KEEP_S:
                into = (key[0] - key[0] % COARSE_S, *key[1:])
                self.buckets.setdefault(into, Bucket()).merge_bucket(b)
        for key in [k for k in self.buckets if k[0] < now - KEEP_S]:
            del self.buckets[key]
        for (t, unit) in [k for k in self.copied if k[0] < now - FINE_S and k[0] % COARSE_S]:
            n = self.copied.pop((t, unit))
            if t >= now - KEEP_S:
                self.copied[(t - t % COARSE_S, unit)] += n
        for key in [k for k in self.copied if k[0] < now - KEEP_S]:
            del self.copied[key]

    # --- out -----------------------------------------------------------------------------
    def summary(self, since: float | None = None, until: float | None = None
                ) -> dict[str, Any]:
        """The merged series over ``[since, until)`` (wall time), and per op and per unit and
        side, requests, errors, error rate and p50/p95/p99 over that window. Shadow reads are
        not requests: they are under ``shadow`` (all units), each unit's ``shadow`` and each
        second's ``shadow_reads`` and ``shadow_overlap``."""
        lo, hi = since or float("-inf"), until or float("inf")
        horizon = self.clock() - FINE_S
        per_t: dict[int, Bucket] = defaultdict(Bucket)
        ops: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        by_op: dict[str, Bucket] = defaultdict(Bucket)
        units: dict[str, dict[str, Bucket]] = defaultdict(lambda: defaultdict(Bucket))
        total, shadow = Bucket(), Bucket()
        shadow_t: dict[int, Bucket] = defaultdict(Bucket)
        for (t, op, side, unit), b in self.buckets.items():
            if not lo <= t < hi:
                continue
            if op == SHADOW:
                for into in (shadow_t[t], units[unit][SHADOW], shadow):
                    into.merge_bucket(b)
                continue
            for into in (per_t[t], by_op[op], units[unit][side], total):
                into.merge(b.count, b.errors, b.hist)
            ops[t][op] += b.count
        copy: dict[int, int] = defaultdict(int)
        copy_units: dict[str, int] = defaultdict(int)
        for (t, unit), n in self.copied.items():
            if lo <= t < hi:
                copy[t] += n
                copy_units[unit] += n
        return {
            "since": since, "until": until, "clients": len(self.clients),
            "series": [{"t": t, "span_s": COARSE_S if t < horizon else 1,
                        **per_t[t].summary(), "ops": dict(ops[t]),
                        **_shadow_point(shadow_t.get(t))} for t in sorted(per_t)],
            "copy": [{"t": t, "span_s": COARSE_S if t < horizon else 1, "points": copy[t]}
                     for t in sorted(copy)],
            "copied_by_unit": dict(copy_units),
            "totals": total.summary(),
            "by_op": {op: b.summary() for op, b in sorted(by_op.items())},
            "units": {u: {side: b.shadow_summary() if side == SHADOW else b.summary()
                          for side, b in sorted(sides.items())}
                      for u, sides in sorted(units.items())},
            "shadow": shadow.shadow_summary(),
        }

    def window(self, since: float, until: float, units: list[str] | None = None,
               side: str | None = None, ops: list[str] | None = None) -> dict[str, Any]:
        """Requests, errors, error rate and percentiles over ``[since, until)`` of these units
        (all when None) served by this side (any when None) of these ops (all when None),
        merged: the SLO gates (``slo``) compare a wave's units as one; the copy's throttle
        (``throttle``) reads the clients' writes. Shadow reads are no requests;
        ``side="shadow"`` gives their summary instead (reads, mean overlap@k, p95 of each
        side)."""
        wanted = None if units is None else set(units)
        total = Bucket()
        for (t, op, s, unit), b in self.buckets.items():
            if not (since <= t < until and (wanted is None or unit in wanted)):
                continue
            if ops is not None and op not in ops and op != SHADOW:
                continue
            if side == SHADOW:
                if op == SHADOW:
                    total.merge_bucket(b)
            elif op != SHADOW and (side is None or s == side):
                total.merge(b.count, b.errors, b.hist)
        return total.shadow_summary() if side == SHADOW else total.summary()

    def newest(self) -> int | None:
        """The second of the newest bucket any client handed in (None: none yet)."""
        return max((k[0] for k in self.buckets), default=None)

    # --- durable -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"buckets": [b.row(k) for k, b in self.buckets.items()],
                "copied": [[t, u, n] for (t, u), n in self.copied.items()],
                "clients": sorted(self.clients)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any], clock: Callable[[], float] = time.time
                  ) -> StatsSeries:
        s = cls(clock)
        for t, op, side, unit, count, errors, hist, *extra in doc.get("buckets", []):
            s.buckets[(t, op, side, unit)] = Bucket(count, errors, merge_hist({}, hist),
                                                    extra[0] if extra else None)
        for t, unit, n in doc.get("copied", []):
            s.copied[(t, unit)] += n
        s.clients = set(doc.get("clients", []))
        return s

    @classmethod
    def open(cls, store: Documents, clock: Callable[[], float] = time.time) -> StatsSeries:
        """As last written under the migration's state, or empty."""
        try:
            doc = store.read(STATS_KEY)
        except Exception as err:  # noqa: BLE001 - statistics never stop a router
            log.warning("client statistics not restored: %s: %s", type(err).__name__, err)
            doc = None
        return cls.from_dict(doc, clock) if doc else cls(clock)

    def persist(self, store: Documents) -> None:
        if self._dirty:
            store.write(STATS_KEY, self.to_dict())
            self._dirty = False
        self._persisted = self.clock()

    def maybe_persist(self, store: Documents) -> None:
        """At most every ``PERSIST_S``: the series is for people and gates, not the
        guarantee, so a restart may lose its last seconds."""
        if self._dirty and self.clock() - self._persisted >= PERSIST_S:
            try:
                self.persist(store)
            except Exception as err:  # noqa: BLE001 - tried again at the next change
                log.warning("client statistics not written: %s: %s", type(err).__name__, err)


def _shadow_point(b: Bucket | None) -> dict[str, Any]:
    """A second's shadow reads and their mean overlap, for the series (empty: none)."""
    if b is None or not b.count:
        return {}
    s = b.shadow_summary()
    return {"shadow_reads": s["reads"], "shadow_overlap": s["overlap_at_k"]}


__all__ = ["FINE_S", "KEEP_S", "PERSIST_S", "STATS_KEY", "StatsSeries"]
