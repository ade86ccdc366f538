"""The copy's rate limit (``copy.max_points_per_s``): the throttle's arithmetic on a fake
clock, and a copy held to it (real LanceDB on both sides, the target read with lancedb)."""

from __future__ import annotations

import pytest
from truth import read_lance, seed_lance_native

from ray_migrate import copy as copy_module
from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.config import CopyConfig, LanceEndpoint, TransformConfig
from ray_migrate.copy import Throttle, copy_unit
from ray_migrate.state import StateStore
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec


class FakeTime:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_the_throttle_holds_the_rate_and_makes_up_for_no_lost_time():
    t = FakeTime()
    th = Throttle(100, t.clock, t.sleep)
    th.wait(50)
    th.wait(50)
    assert t.slept == [0.5, 0.5] and t.now == 1.0
    t.now += 5  # a slow write: behind schedule
    th.wait(50)
    assert len(t.slept) == 2, "no sleep when behind"
    th.wait(100)
    assert t.slept[-1] == pytest.approx(1.0), "counted again from there: no burst"
    free = FakeTime()
    Throttle(0, free.clock, free.sleep).wait(10**6)
    assert free.slept == []


def test_a_copy_is_held_to_its_share_of_max_points_per_s(tmp_path, monkeypatch):
    t = FakeTime()
    monkeypatch.setattr(copy_module, "Throttle",
                        lambda rate: Throttle(rate, t.clock, t.sleep))
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(95)))
    source = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "src"), table="docs"))
    target = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "dst"), table="docs"))
    target.create(source.describe())
    cfg = CopyConfig(batch_size=10, workers=2, max_points_per_s=100)
    result = copy_unit(UnitSpec("all", "all"), source, target, Transform(TransformConfig()),
                       StateStore(str(tmp_path / "state"), "throttle"), cfg, fresh_target=True)
    assert result.copied == 95
    assert sum(t.slept) == pytest.approx(95 / 50), "two workers share 100 points/s: 50 each"
    assert sorted(read_lance(str(tmp_path / "dst"), "docs")) == list(range(95))
