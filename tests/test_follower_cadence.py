"""How often a worker's follower applies each kind of unit's log (``follower.Follower._tick``):
units catching up at every tick, units waiting for their wave and the back-sync seldom, so
clients writing the target during the waves meet few concurrent commits. The worker is a
stand-in (this is about scheduling: which units each step gets); the clock is turned by hand."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ray_migrate.follower import BACK_EVERY_S, FOLLOW_EVERY_S, WAITING_EVERY_S, Follower


class Lags:
    def __init__(self, rows: dict[str, tuple[str, int, bool, float]]):
        self.rows = rows

    def call(self, method: str, *args: Any) -> Any:
        assert method == "lags"
        return self.rows


def follower(rows: dict[str, tuple[str, int, bool, float]], workers: int = 2
             ) -> tuple[Follower, list[tuple[str, list[str]]], list[float]]:
    worker = SimpleNamespace(index=0, who="w", router=Lags(rows), source="S", target="T",
                             forward="fwd", inverse="inv",
                             cfg=SimpleNamespace(copy_cfg=SimpleNamespace(workers=workers)))
    f = Follower(worker)  # type: ignore[arg-type]
    steps: list[tuple[str, list[str]]] = []
    f.step = lambda units, owner, other, t: steps.append(  # type: ignore[method-assign]
        ("forward" if owner == "S" else "back", sorted(units)))
    now = [100.0]
    f.clock = lambda: now[0]
    return f, steps, now


def test_waiting_units_are_applied_seldom_and_catching_up_ones_at_every_tick():
    f, steps, now = follower({"a": ("catching_up", 5, False, 0.1),
                              "b": ("ready", 5, False, 0.1),
                              "c": ("ready", 0, False, 0.0),  # nothing to apply
                              "d": ("ready", 5, True, 0.1),  # reserved by a cutover
                              "t": ("target", 5, False, 0.1)})
    f._tick(2)
    assert steps == [("forward", ["a", "b"]), ("back", ["t"])]
    ticks = int(WAITING_EVERY_S * 2 / FOLLOW_EVERY_S)  # with 2 workers taking turns
    for _ in range(ticks - 1):
        steps.clear()
        now[0] += FOLLOW_EVERY_S
        f._tick(2)
        assert steps == [("forward", ["a"])], "b waits: it was applied less than 4 s ago"
    steps.clear()
    now[0] += FOLLOW_EVERY_S
    f._tick(2)
    assert steps[0] == ("forward", ["a", "b"])
    assert now[0] - 100.0 == WAITING_EVERY_S * 2 >= BACK_EVERY_S * 2
    assert ("back", ["t"]) in steps


def test_a_tick_with_only_units_catching_up_does_not_delay_the_waiting_ones():
    rows = {"a": ("catching_up", 5, False, 0.1), "b": ("ready", 0, False, 0.0)}
    f, steps, now = follower(rows, workers=1)
    f._tick(1)
    now[0] += FOLLOW_EVERY_S
    rows["b"] = ("ready", 3, False, 0.1)  # b has something now: applied at once
    f._tick(1)
    assert steps == [("forward", ["a"]), ("forward", ["a", "b"])]
