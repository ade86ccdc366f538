"""Adaptive throttling (``copy.throttle``): the gate pauses the copy while the clients' recent
write p99 is above its limit and lets it go on when it is back below, on an injected clock.

The latency source is the router's own ``StatsSeries`` fed with a ``ClientStats``'s buckets
(what clients push), read through a plain adapter, not a mock of the router; the copy test
copies real LanceDB tables."""

from __future__ import annotations

import pytest
from truth import read_lance, seed_lance_native

from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.client_stats import ClientStats
from ray_migrate.config import CopyConfig, LanceEndpoint, ThrottleConfig, TransformConfig
from ray_migrate.copy import copy_unit
from ray_migrate.routing.client_stats import StatsSeries
from ray_migrate.state import StateStore
from ray_migrate.throttle import WRITE_OPS, AdaptiveGate, gate_of
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

T0 = 1_700_000_000.0


class World:
    """A fake clock whose sleeps advance it, and an application whose writes take ``ms`` until
    ``fast_at`` and ``fast_ms`` from then: ``sleep`` records its calls each second."""

    def __init__(self, ms: float = 10.0, fast_at: float = float("inf"), fast_ms: float = 10.0):
        self.now, self.slept = T0, []
        self.ms, self.fast_at, self.fast_ms = ms, fast_at, fast_ms
        self.client = ClientStats(clock=self.clock)
        self.series = StatsSeries(clock=self.clock)

    def clock(self) -> float:
        return self.now

    def app(self, seconds: float, ms: float | None = None, op: str = "upsert") -> None:
        """``seconds`` of 10 client calls per second, handed to the router."""
        for _ in range(int(seconds)):
            for i in range(10):
                took = ms if ms is not None else \
                    (self.fast_ms if self.now >= self.fast_at else self.ms)
                self.client.record(op, self.now + i / 10, took, False, "source", "t=a")
            self.now += 1
        self.series.add_client("app", self.client.take())

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.app(s)

    def p99(self, since: float, until: float) -> tuple[int, float | None]:
        w = self.series.window(since, until, ops=list(WRITE_OPS))
        return w["requests"], w["p99_ms"]


def gate(w: World, **kw) -> AdaptiveGate:
    return AdaptiveGate(w, clock=w.clock, sleep=w.sleep, **kw)


def test_the_copy_pauses_while_clients_are_slow_and_goes_on_once_they_are_back():
    w = World(ms=10.0)
    w.app(30)  # before the copy: 10 ms writes
    g = gate(w, ratio=1.3, window_s=5, max_pause_s=60)
    g.start()
    assert g.baseline_ms == pytest.approx(10, rel=0.2)
    w.app(5)
    g.wait()
    assert w.slept == [], "at the baseline: no pause"
    w.ms, w.fast_at, w.fast_ms = 40.0, w.now + 8, 10.0  # slow for 8 s, then back to 10 ms
    w.app(5)
    g._checked = None  # a new batch a check period later
    g.wait()
    assert 8 <= sum(w.slept) <= 8 + g.window_s + 1, "paused until the window is fast again"
    assert not g.above()


def test_a_pause_is_bounded_so_the_migration_ends_under_a_slow_application():
    w = World(ms=10.0)
    w.app(30)
    g = gate(w, ratio=1.3, max_pause_s=4)
    g.start()
    w.ms = 100.0
    w.app(5)
    g.wait()
    assert sum(w.slept) == 4 and g.paused_s == 4


def test_without_clients_before_the_copy_the_baseline_is_the_best_window_since():
    w = World(ms=30.0)
    g = gate(w, ratio=1.3, window_s=5, max_pause_s=3)
    g.start()
    assert g.baseline_ms is None, "no writes before: no baseline yet"
    w.app(5)  # clients connect while the copy runs: 30 ms
    g.wait()
    assert w.slept == [] and g.baseline_ms == pytest.approx(30, rel=0.2)
    w.ms = 10.0  # the copy paused elsewhere: the clients' own latency shows
    w.app(5)
    g._checked = None
    g.wait()
    assert g.baseline_ms == pytest.approx(10, rel=0.2), "the running baseline keeps the best"
    w.ms = 30.0
    w.app(5)
    g._checked = None
    g.wait()
    assert sum(w.slept) == 3, "30 ms is above 1.3 x the best seen: paused"


def test_slow_searches_and_too_few_writes_judge_nothing():
    w = World(ms=10.0)
    w.app(30)
    g = gate(w, ratio=1.3, max_pause_s=5)
    g.start()
    w.app(5, ms=500.0, op="search")
    g.wait()
    assert w.slept == [], "the limit is on writes; searches are not counted"
    few = World()
    few.client.record("upsert", few.now, 900.0, False)
    few.series.add_client("app", few.client.take())
    few.now += 1
    g = gate(few, ratio=0, ceiling_ms=50, min_requests=10, max_pause_s=5)
    g.wait()
    assert few.slept == [], "one slow write among fewer than min_requests"


def test_the_ceiling_holds_without_a_baseline():
    w = World(ms=80.0)
    w.app(5)
    g = gate(w, ratio=0, ceiling_ms=50, max_pause_s=2)
    g.start()
    assert g.baseline_ms is None
    g.wait()
    assert sum(w.slept) == 2


class Broken:
    def p99(self, since: float, until: float) -> tuple[int, float | None]:
        raise ConnectionError("router gone")


def test_statistics_that_cannot_be_read_never_stop_the_copy():
    g = AdaptiveGate(Broken(), ratio=1.3, ceiling_ms=10, sleep=pytest.fail)
    g.start()
    g.wait()
    assert g.paused_s == 0


def test_no_gate_when_throttle_is_off():
    assert gate_of(ThrottleConfig(), World()) is None
    assert gate_of(ThrottleConfig(max_client_p99_ratio=1.3), None) is None
    on = gate_of(ThrottleConfig(max_client_p99_ratio=1.5, max_pause_s=3), World())
    assert on is not None and on.ratio == 1.5 and on.max_pause_s == 3


def test_a_copy_under_slow_clients_pauses_after_each_write_and_copies_everything(tmp_path):
    w = World(ms=80.0)
    w.app(5)
    g = gate(w, ratio=0, ceiling_ms=50, max_pause_s=2)
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(95)))
    source = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "src"), table="docs"))
    target = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "dst"), table="docs"))
    target.create(source.describe())
    cfg = CopyConfig(batch_size=10, workers=1)
    result = copy_unit(UnitSpec("all", "all"), source, target, Transform(TransformConfig()),
                       StateStore(str(tmp_path / "state"), "gate"), cfg, fresh_target=True,
                       gate=g)
    assert result.copied == 95
    writes = -(-95 // max(10, target.capabilities.preferred_write_rows))
    assert sum(w.slept) == 2 * writes, "each write followed by the longest pause"
    assert sorted(read_lance(str(tmp_path / "dst"), "docs")) == list(range(95))


def test_bad_throttle_config_names_the_field():
    from ray_migrate.config import parse_config
    from ray_migrate.errors import ConfigError

    with pytest.raises(ConfigError, match=r"copy.throttle.max_client_p99_ratio: -1 .* >= 0"):
        parse_config({"migration_id": "m", "state_uri": "/tmp/x",
                      "source": {"kind": "lancedb", "uri": "/tmp/a", "table": "t"},
                      "target": {"kind": "lancedb", "uri": "/tmp/b", "table": "t"},
                      "copy": {"throttle": {"max_client_p99_ratio": -1}}})
