"""A verify while the unit's log is applied: a change applied between the verify's scans of
the two sides is explained by the log's watch, with no repair round; a difference the log
never held is repaired through the log and verified again. Real router, workers and LanceDB
on both sides; the target is read with lancedb itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from test_live import DIM, prepared
from truth import read_lance

from ray_migrate import RoutedCollection
from ray_migrate.worker import UnitWorker

UNIT = "tenant=t1"  # ids 1, 5, 9, 13, ... (id % 4 == 1)


class HookedScans:
    """The real source; as each of its scans ends, the next hook runs."""

    def __init__(self, real: Any, hooks: list[Callable[[], None]]):
        self.real, self.hooks, self.scans = real, hooks, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def scan(self, *args: Any, **kwargs: Any) -> Any:
        yield from self.real.scan(*args, **kwargs)
        self.scans += 1
        if self.hooks:
            self.hooks.pop(0)()


def test_a_verify_explains_changes_applied_between_its_scans_and_repairs_unlogged_ones(
        ray_cluster, tmp_path):
    with prepared(tmp_path, "vlive", 40) as (m, mid, _, target, truth):
        coll = RoutedCollection.connect(mid)
        unit = next(u for u in m.units() if u.unit_id == UNIT)

        def write_and_wait_applied(pid: int, value: float) -> None:
            """A client write, applied to the target by the workers' followers."""
            vec = [value] * DIM
            coll.upsert([{"id": pid, "vector": vec, "payload": {"tenant": "t1", "v": 1}}])
            truth[pid] = (np.asarray(vec, np.float32).tobytes(), {"tenant": "t1", "v": 1})
            deadline = time.monotonic() + 30
            while pid in coll.router.call("peek_changes", UNIT):
                assert time.monotonic() < deadline, f"{pid} was never applied"
                time.sleep(0.05)

        worker = UnitWorker(m.cfg, m.plan.to_dict())
        # Id 5 changes after the first scan of the source, so the digests differ, and again
        # after the diff's scan of the source, applied before its scan of the target: the diff
        # names 5, which the log no longer holds when the verify ends.
        hooked = HookedScans(worker.source, [lambda: write_and_wait_applied(5, 0.25),
                                             lambda: write_and_wait_applied(5, 0.5)])
        worker._source = hooked
        verdict = worker._verify_live(unit)
        assert verdict.equal and verdict.changed_ids == [5] and verdict.pending == 1, verdict
        assert hooked.scans == 2, "a change applied during the verify cost a repair round"

        # A difference no write explains: the target's copy of 13 is altered behind the
        # migration's back. The verify logs it, the applier repairs it, the verify passes.
        import lancedb

        lancedb.connect(target["uri"]).open_table("docs").update(where="id = 13",
                                                                 values={"v": 99})
        verdict = worker._verify_live(unit)
        assert verdict.equal and verdict.pending == 0, verdict
        assert hooked.scans == 5, "one round found 13 (and its diff), one more after repair"
        found = read_lance(target["uri"], "docs")
        unit_ids = sorted(i for i in truth if i % 4 == 1)
        assert sorted(i for i in found if i % 4 == 1) == unit_ids
        for pid in unit_ids:
            assert found[pid][0]["vector"] == truth[pid][0], f"point {pid}: vector differs"
            assert found[pid][1] == truth[pid][1], f"point {pid}: payload differs"


def test_a_verify_looks_again_when_the_router_restarts_during_it(ray_cluster, tmp_path):
    """A restarted router knows no watch, so it cannot say which ids changed meanwhile: the
    verify's first look is not trusted, and a second one decides."""
    import ray

    with prepared(tmp_path, "vrestart", 40) as (m, *_):
        worker = UnitWorker(m.cfg, m.plan.to_dict())
        unit = next(u for u in m.units() if u.unit_id == UNIT)
        router = worker.router

        def restart_router() -> None:
            ray.kill(router.actor, no_restart=False)

        hooked = HookedScans(worker.source, [restart_router])
        worker._source = hooked
        verdict = worker._verify_live(unit)
        assert verdict.equal and hooked.scans == 2, (verdict, hooked.scans)
        assert router.call("unit", UNIT)["phase"] == "ready", "the table came back"


def test_the_report_says_why_counts_of_a_unit_verified_equal_differ():
    from ray_migrate.report import RunReport, UnitReport

    report = RunReport(migration_id="m", units=[
        UnitReport(unit_id="a", status="copied", source_count=10, target_count=11, equal=True,
                   pending=1, source_checksum="x", target_checksum="y"),
        UnitReport(unit_id="b", status="copied", source_count=5, target_count=6, equal=True,
                   source_checksum="x", target_checksum="y"),  # the diff's scans agreed
        UnitReport(unit_id="c", status="copied", source_count=5, target_count=5, equal=True,
                   source_checksum="z", target_checksum="z")])
    lines = report.to_table().splitlines()
    assert lines[2].endswith("writes during the verify, since caught up (1 ids)")
    assert lines[3].endswith("writes during the verify, since caught up")
    assert lines[4].rstrip().endswith("-"), "no note where nothing differed"
