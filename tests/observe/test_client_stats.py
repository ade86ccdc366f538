"""Client statistics without Ray: the histogram's percentiles, merging buckets from several
clients, the router's bounded time series and its round trip through the state store, and the
report's plot drawn from a synthetic series."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest

from ray_migrate.client_stats import GROWTH, ClientStats, bin_of, edge, percentile, timed
from ray_migrate.errors import InvalidPointError, TransientError
from ray_migrate.routing.client_stats import COARSE_S, FINE_S, StatsSeries
from ray_migrate.state import StateStore


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_percentiles_within_one_bin() -> None:
    rng = random.Random(3)
    samples = [rng.lognormvariate(1.0, 1.2) for _ in range(5000)]
    hist: dict[int, int] = {}
    for ms in samples:
        hist[bin_of(ms)] = hist.get(bin_of(ms), 0) + 1
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(samples, q))
        got = percentile(hist, q)
        assert got is not None and exact <= got * 1.0001 and got <= exact * GROWTH * 1.0001, \
            (q, exact, got)
    assert percentile({}, 0.5) is None
    assert bin_of(0.0) == 0 and edge(bin_of(3.0)) >= 3.0 > edge(bin_of(3.0) - 1)


def test_merging_clients_equals_one_client() -> None:
    """Buckets of two clients merged by the router give the same counts and percentiles as
    one client that made every call."""
    clock = Clock()
    a, b, both = ClientStats(clock), ClientStats(clock), ClientStats(clock)
    rng = random.Random(5)
    for i in range(600):
        clock.t += 0.01
        ms, err = rng.expovariate(1 / 8), i % 50 == 0
        side = "source" if i % 3 else "target"
        (a if i % 2 else b).record("upsert", clock.t, ms, err, side, f"u{i % 4}")
        both.record("upsert", clock.t, ms, err, side, f"u{i % 4}")
    series, one = StatsSeries(clock), StatsSeries(clock)
    series.add_client("b", b.take())
    series.add_client("a", a.take())
    one.add_client("x", both.take())
    assert a.take() == []  # taken once
    merged, single = series.summary(), one.summary()
    assert merged["totals"] == single["totals"]
    assert merged["totals"]["requests"] == 600 and merged["totals"]["errors"] == 12
    assert merged["units"] == single["units"]
    assert merged["series"] == single["series"]
    assert merged["clients"] == 2


class Fake:
    """A stand-in for ``RoutedCollection``: only what ``timed`` needs."""

    def __init__(self, clock: Clock):
        self.stats = ClientStats(clock)

    @timed("search")
    def search(self, fail: BaseException | None = None) -> int:
        self.stats.tag("source", ["t1"])
        self.stats.tag("target", ["t1"])
        if fail is not None:
            raise fail
        return 1

    @timed("count")
    def count(self) -> int:
        self.stats.tag("target", ["t1", "t2"])
        return 2


def test_timed_counts_calls_errors_and_not_bad_input() -> None:
    clock = Clock(100.5)
    c = Fake(clock)
    assert c.search() == 1
    with pytest.raises(TransientError):
        c.search(TransientError("down"))
    with pytest.raises(InvalidPointError):  # refused before any engine call: not counted
        c.search(InvalidPointError("bad"))
    c.count()
    rows = {(r[1], r[2], r[3]): r for r in c.stats.take()}
    assert set(rows) == {("search", "both", "t1"), ("count", "target", "*")}
    t, _, _, _, count, errors, hist = rows[("search", "both", "t1")]
    assert (t, count, errors, sum(hist.values())) == (100, 2, 1, 2)


def test_series_bounded_and_survives_a_restart(tmp_path) -> None:
    """Two hours of per-second buckets: the older hour is kept per minute, the totals stay;
    written to the state store and read back by a new series (a restarted router)."""
    clock = Clock(1_700_000_000.0)
    start = clock.t
    series = StatsSeries(clock)
    for s in range(2 * 3600):
        clock.t = start + s
        stats = ClientStats(clock)
        stats.record("upsert", clock.t, 2.0, s % 100 == 0, "source", "u1")
        series.add_client("c", stats.take())
        series.add_copied("u1", 10)
    series.compact()
    assert len(series.buckets) <= FINE_S + 3600 // COARSE_S + 2
    assert len(series.copied) <= FINE_S + 3600 // COARSE_S + 2
    out = series.summary()
    assert out["totals"]["requests"] == 7200 and out["totals"]["errors"] == 72
    assert sum(p["points"] for p in out["copy"]) == 72_000
    assert {p["span_s"] for p in out["series"]} == {1, COARSE_S}
    window = series.summary(since=start + 7000)
    assert window["totals"]["requests"] == 200
    assert window["units"]["u1"]["source"]["p95_ms"] >= 2.0
    store = StateStore(str(tmp_path / "state"), "m")
    series.persist(store)
    again = StatsSeries.open(store, clock)
    assert again.summary() == out


def test_plot_is_a_real_png() -> None:
    from PIL import Image

    from ray_migrate.report_plot import DPI, HEIGHT_IN, WIDTH_IN, render_png

    t0 = 1000.0
    series = [{"t": t0 + i, "span_s": 1, "requests": 40, "errors": i == 20,
               "p50_ms": 3.0, "p95_ms": 9.0 + i % 5, "p99_ms": 20.0} for i in range(60)]
    doc = {"since": t0, "ok": True, "report": {"migration_id": "m"},
           "copy": [{"t": t0 + i, "span_s": 1, "points": 500} for i in range(30)],
           "client": {"series": series},
           "events": [{"t": t0 + 31, "kind": "wave", "wave": 1, "units": ["a"]},
                      {"t": t0 + 32, "kind": "cutover", "unit": "a", "ok": True,
                       "freeze_ms": 40.0},
                      {"t": t0 + 45, "kind": "rollback", "unit": "a", "ok": True}]}
    img = Image.open(io.BytesIO(render_png(doc)))
    assert img.format == "PNG"
    assert img.size == (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI))
    assert np.asarray(img.convert("L"), dtype=float).std() > 5  # not blank
