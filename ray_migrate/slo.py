"""SLO gates between waves: what the clients experienced since a wave, against
``cutover.gates`` (``max_error_rate``, ``max_p95_ratio``).

After a wave's pause (and after the last wave, over the rollback window), over that window:

- the clients' error rate, errors over requests of every op and unit, must be at most
  ``max_error_rate``;
- the p95 latency of the wave's units served by the target must be at most ``max_p95_ratio``
  times their p95 on the source over a window of the same length just before the wave. When
  the wave's units had fewer than ``MIN_REQUESTS`` requests then, the source p95 of every unit
  in that window stands in; a p95 under ``P95_FLOOR_MS`` counts as that much (a ratio of two
  tiny latencies is noise). With too few requests to measure, a check is skipped with a note.

Plain Python: the statistics (``routing.client_stats.StatsSeries.window`` through the router)
and the clock are passed in, so the arithmetic is tested without Ray. ``waves`` acts on a
breach: it rolls the wave back and stops the rollout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray_migrate.config import GatesConfig

log = logging.getLogger(__name__)

MIN_REQUESTS = 5  # fewer requests in a window than this: its p95 is not judged on its own
P95_FLOOR_MS = 5.0  # a p95 below this counts as this much in the ratio
LATE_S = 3.0  # clients hand their buckets in every second (``routing.watch``): wait this long
POLL_S = 0.2

# window(since, until, units or None, side or None) -> {"requests", "errors", "p95_ms", ...}
Window = Callable[[float, float, "list[str] | None", "str | None"], dict[str, Any]]


@dataclass(frozen=True)
class WaveSpan:
    """A wave: its number, its units and when its cutovers began and ended (wall time)."""

    wave: int
    units: list[str]
    started: float
    ended: float


@dataclass
class GateVerdict:
    """One check of the gates over ``[since, until)``: breaches, skipped checks, figures."""

    wave: int
    units: list[str]
    since: float
    until: float
    breaches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.breaches

    @property
    def reason(self) -> str:
        return (f"SLO gate after wave {self.wave}: " + "; ".join(self.breaches)
                if self.breaches else "")

    def to_dict(self) -> dict[str, Any]:
        return {"wave": self.wave, "units": self.units, "since": self.since,
                "until": self.until, "ok": self.ok, "reason": self.reason,
                "breaches": self.breaches, "notes": self.notes, "measured": self.measured}


def active(gates: GatesConfig) -> bool:
    """Whether any wave gate is set (``min_recall`` is a per-unit gate, not a wave's)."""
    return gates.max_error_rate is not None or gates.max_p95_ratio is not None


def judge(gates: GatesConfig, window: Window, span: WaveSpan, until: float) -> GateVerdict:
    """Check the gates over ``[span.ended, until)`` for the wave ``span``."""
    v = GateVerdict(span.wave, list(span.units), span.ended, until)
    overall = window(span.ended, until, None, None)
    v.measured.update(requests=overall["requests"], errors=overall["errors"],
                      error_rate=overall["error_rate"])
    if overall["requests"] == 0:
        v.notes.append(f"no client traffic in the {until - span.ended:.1f}s after wave "
                       f"{span.wave}: the gates were not checked")
        return v
    if gates.max_error_rate is not None and overall["error_rate"] > gates.max_error_rate:
        v.breaches.append(f"client error rate {overall['error_rate']:.4f} "
                          f"({overall['errors']} of {overall['requests']} requests) > "
                          f"max_error_rate {gates.max_error_rate}")
    if gates.max_p95_ratio is not None:
        _p95_ratio(gates.max_p95_ratio, window, span, until, v)
    if gates.min_shadow_overlap is not None:
        _shadow_overlap(gates.min_shadow_overlap, window, span, until, v)
    return v


def _shadow_overlap(limit: float, window: Window, span: WaveSpan, until: float,
                    v: GateVerdict) -> None:
    """The mean overlap@k of the wave's units' shadow reads (owner: the target now; shadow:
    the source) against ``min_shadow_overlap``."""
    s = window(span.ended, until, span.units, "shadow")
    answered = s["reads"] - s["errors"]
    if answered < MIN_REQUESTS:
        v.notes.append(f"shadow overlap not checked: {answered} shadow reads of the wave's "
                       f"units answered (fewer than {MIN_REQUESTS})")
        return
    v.measured.update(shadow_reads=answered, shadow_overlap=round(s["overlap_at_k"], 4))
    if s["overlap_at_k"] < limit:
        v.breaches.append(f"shadow overlap@k {s['overlap_at_k']:.3f} of the wave's units "
                          f"({answered} reads) < min_shadow_overlap {limit}")


def _p95_ratio(limit: float, window: Window, span: WaveSpan, until: float,
               v: GateVerdict) -> None:
    """The wave's units on the target now against before the wave on the source."""
    after = window(span.ended, until, span.units, "target")
    if after["requests"] < MIN_REQUESTS:
        v.notes.append(f"p95 not checked: the wave's units had {after['requests']} requests on "
                       f"the target (fewer than {MIN_REQUESTS})")
        return
    length = until - span.ended
    before = window(span.started - length, span.started, span.units, "source")
    of = "the wave's units"
    if before["requests"] < MIN_REQUESTS:
        before = window(span.started - length, span.started, None, "source")
        of = "every unit"
    if before["requests"] < MIN_REQUESTS:
        v.notes.append(f"p95 not checked: {before['requests']} requests on the source in the "
                       f"{length:.1f}s before wave {span.wave} (fewer than {MIN_REQUESTS})")
        return
    ratio = max(after["p95_ms"], P95_FLOOR_MS) / max(before["p95_ms"], P95_FLOOR_MS)
    v.measured.update(p95_ms_after=after["p95_ms"], p95_ms_before=before["p95_ms"],
                      p95_before_of=of, requests_after=after["requests"],
                      requests_before=before["requests"], p95_ratio=round(ratio, 3))
    if ratio > limit:
        v.breaches.append(f"p95 of {', '.join(span.units)} on the target {after['p95_ms']:.1f} ms "
                          f"is {ratio:.1f}x the source's before the wave "
                          f"({before['p95_ms']:.1f} ms, {of}) > max_p95_ratio {limit}")


def wait_for_buckets(newest: Callable[[], float | None], until: float,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep,
                     bound_s: float = LATE_S) -> bool:
    """Wait until some client bucket at or after ``until`` arrived (a client hands in all it
    finished before it), at most ``bound_s``; whether one did."""
    deadline = clock() + bound_s
    while True:
        got = newest()
        if got is not None and got >= int(until):
            return True
        if clock() >= deadline:
            return False
        sleep(POLL_S)


__all__ = ["LATE_S", "MIN_REQUESTS", "P95_FLOOR_MS", "GateVerdict", "WaveSpan", "active",
           "judge", "wait_for_buckets"]
