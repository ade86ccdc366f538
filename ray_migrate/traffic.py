"""Synthetic client traffic through ``RoutedCollection``: the demo's and the benchmark's load.

A writer (upserts of new and existing ids, some deletes) and a reader (exact searches) run at
fixed rates in threads; every call's latency is kept under the period it started in
("before", "during", "after"), and every client error is kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class Traffic:
    def __init__(self, coll: Any, tenants: list[str], write_rate: float = 50.0,
                 read_rate: float = 20.0, first_new_id: int = 10**9, seed: int = 3,
                 batch: int = 1, id_space: int | None = None):
        self.coll = coll
        self.dim = coll.info.vectors[0].dim
        self.tenants = tenants
        self.rates = {"write": write_rate, "read": read_rate}
        self.batch = batch
        # With an id space, writes draw their ids from 0..id_space-1: updates, deletes and
        # re-inserts of deleted ids in a collection whose size stays put. Without one, half of
        # every upsert is new ids and the collection grows.
        self.id_space = id_space
        self.period = "before"
        self.latency: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.calls: list[tuple[float, str, float]] = []  # (monotonic start, kind, seconds)
        self.errors: list[str] = []
        self._next_id = first_new_id
        self._ids: list[int] = []
        self._rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(kind,), daemon=True,
                                          name=f"rm-traffic-{kind}") for kind in self.rates]

    def start(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def mark(self, period: str) -> None:
        self.period = period

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _write(self) -> None:
        rng = self._rng
        if self.id_space:
            if rng.random() < 0.1:
                self.coll.delete([int(rng.integers(self.id_space))])
            else:
                self.coll.upsert([self._point(int(pid))
                                  for pid in rng.integers(self.id_space, size=self.batch)])
            return
        if self._ids and rng.random() < 0.1:
            self.coll.delete([self._ids.pop(int(rng.integers(len(self._ids))))])
            return
        points = []
        for _ in range(self.batch):
            if self._ids and rng.random() < 0.5:
                pid = self._ids[int(rng.integers(len(self._ids)))]
            else:
                pid, self._next_id = self._next_id, self._next_id + 1
                self._ids.append(pid)
            points.append(self._point(pid))
        self.coll.upsert(points)

    def _point(self, pid: int) -> dict[str, Any]:
        return {"id": pid, "vector": self._rng.standard_normal(self.dim).tolist(),
                "payload": {"tenant": self.tenants[pid % len(self.tenants)],
                            "title": f"live {pid}", "rank": int(self._rng.integers(1000))}}

    def _read(self) -> None:
        self.coll.search(self._rng.standard_normal(self.dim).tolist(), k=10)

    def _loop(self, kind: str) -> None:
        interval = 1.0 / self.rates[kind] if self.rates[kind] > 0 else None
        if interval is None:
            return
        op = self._write if kind == "write" else self._read
        next_at = time.perf_counter()
        while not self._stop.is_set():
            period = self.period
            t0, started = time.perf_counter(), time.monotonic()
            try:
                op()
                took = time.perf_counter() - t0
                self.latency[(kind, period)].append(took)
                self.calls.append((started, kind, took))
            except Exception as err:  # noqa: BLE001 - a client error is a finding, not a crash
                self.errors.append(f"{kind} ({period}): {type(err).__name__}: {err}")
                log.error("client %s failed: %s", kind, err)
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))

    def stats(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (kind, period), values in sorted(self.latency.items()):
            ms = np.asarray(values) * 1000
            out[f"{kind} {period}"] = {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                                       "p99_ms": float(np.percentile(ms, 99))}
        return out

    def table(self) -> str:
        lines = [f"{'client calls':<16} {'n':>6} {'p50 ms':>8} {'p99 ms':>8}"]
        for name, s in self.stats().items():
            lines.append(f"{name:<16} {s['n']:>6} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f}")
        lines.append(f"client errors: {len(self.errors)}")
        return "\n".join(lines)
