"""Adaptive throttling of the migration's heavy work on the clients' measured latency.

gh-ost's way: the copy (and verify's scans) go at full speed while the application is fine,
and pause between batches while the clients' recent write p99 is above its limit. The limit is
``copy.throttle.max_client_p99_ratio`` times a baseline, or ``max_client_p99_ms``, whichever
is lower. The baseline is the clients' p99 before the heavy work began (the window of
``baseline_s`` before the first check), or, when no client wrote then (clients connect as the
migration starts), the lowest p99 of a full window seen since: the application's latency when
the migration left it alone, which is what a pause brings back.

Clients hand their statistics to the router about once a second (``routing.client_stats``);
the gate asks the router at most every ``check_s``. A pause is bounded by ``max_pause_s`` per
batch, so a migration under an application that is slow for reasons of its own still ends.
Plain Python with an injected clock, sleep and latency source: ``copy`` and ``verify`` use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

WRITE_OPS = ("upsert", "delete")


class LatencySource(Protocol):
    """The clients' writes over ``[since, until)`` (wall time): (requests, p99 ms or None)."""

    def p99(self, since: float, until: float) -> tuple[int, float | None]: ...


class RouterLatency:
    """The clients' write latency as the router has merged it (``StatsSeries.window``)."""

    def __init__(self, router: Any):
        self.router = router

    def p99(self, since: float, until: float) -> tuple[int, float | None]:
        w = self.router.call("client_window", since, until, None, None, list(WRITE_OPS))
        return int(w.get("requests", 0)), w.get("p99_ms")


@dataclass
class AdaptiveGate:
    """Pauses the caller while the clients' recent write p99 is above the limit.

    ``ratio`` (0: no ratio limit) times the baseline, or ``ceiling_ms`` (0: none); windows
    with fewer than ``min_requests`` writes judge nothing (the copy goes on)."""

    source: LatencySource
    ratio: float = 1.3
    ceiling_ms: float = 0.0
    window_s: float = 5.0
    baseline_s: float = 30.0
    min_requests: int = 10
    check_s: float = 1.0
    max_pause_s: float = 10.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    baseline_ms: float | None = None
    paused_s: float = 0.0  # in all, for the log and the tests
    _fixed: bool = False  # the baseline came from before the heavy work: kept as is
    _checked: float | None = None
    _above: bool = False
    _errors: int = field(default=0)

    @property
    def enabled(self) -> bool:
        return self.ratio > 0 or self.ceiling_ms > 0

    def limit_ms(self) -> float | None:
        limits = [self.ceiling_ms] if self.ceiling_ms > 0 else []
        if self.ratio > 0 and self.baseline_ms is not None:
            limits.append(self.ratio * self.baseline_ms)
        return min(limits) if limits else None

    def start(self) -> None:
        """Take the baseline from the window before the heavy work, if clients wrote then."""
        if not self.enabled or self.baseline_ms is not None or self.ratio <= 0:
            return
        now = self.clock()
        n, p99 = self._read(now - self.baseline_s, now)
        if n >= self.min_requests and p99 is not None:
            self.baseline_ms, self._fixed = p99, True
            log.info("throttle: clients' write p99 before the copy %.1f ms over %d writes",
                     p99, n)

    def above(self) -> bool:
        """Whether the clients' recent p99 is above the limit (asked at most every
        ``check_s``; in between, the last answer)."""
        now = self.clock()
        if self._checked is not None and now - self._checked < self.check_s:
            return self._above
        self._checked = now
        n, p99 = self._read(now - self.window_s, now)
        if n < self.min_requests or p99 is None:
            self._above = False
            return False
        if not self._fixed and self.ratio > 0 and (self.baseline_ms is None
                                                   or p99 < self.baseline_ms):
            self.baseline_ms = p99  # the best the clients did since: the running baseline
        limit = self.limit_ms()
        self._above = limit is not None and p99 > limit
        return self._above

    def wait(self) -> None:
        """Between two batches: pause while the clients are above the limit, at most
        ``max_pause_s``."""
        if not self.enabled:
            return
        began = self.clock()
        if not self.above():
            return
        while self.clock() - began < self.max_pause_s:
            self.sleep(min(self.check_s, self.max_pause_s - (self.clock() - began)))
            if not self.above():
                break
        self.paused_s += self.clock() - began
        log.info("throttle: clients' write p99 above %.1f ms: paused %.1f s (%.1f s in all)",
                 self.limit_ms() or 0.0, self.clock() - began, self.paused_s)

    def _read(self, since: float, until: float) -> tuple[int, float | None]:
        try:
            return self.source.p99(since, until)
        except Exception as err:  # noqa: BLE001 - statistics never stop a copy
            self._errors += 1
            if self._errors == 1:
                log.warning("throttle: client latency not read (%s: %s); copying on",
                            type(err).__name__, err)
            return 0, None


def gate_of(cfg: Any, source: LatencySource | None) -> AdaptiveGate | None:
    """The gate of a ``ThrottleConfig`` reading ``source`` (None: no gate)."""
    if source is None or not (cfg.max_client_p99_ratio > 0 or cfg.max_client_p99_ms > 0):
        return None
    return AdaptiveGate(source, ratio=cfg.max_client_p99_ratio, ceiling_ms=cfg.max_client_p99_ms,
                        window_s=cfg.window_s, baseline_s=cfg.baseline_s,
                        min_requests=cfg.min_requests, check_s=cfg.check_s,
                        max_pause_s=cfg.max_pause_s)


__all__ = ["WRITE_OPS", "AdaptiveGate", "LatencySource", "RouterLatency", "gate_of"]
