"""Finalize (compaction and the vector index) starts once every unit's copy ended, while the
units still catch up and verify (issue 15), and the target stays whole: a catch-up write
committed during it is kept (Lance's index creation is compatible with merge_insert)."""

from __future__ import annotations

import os
import threading
import time

from truth import read_lance, seed_lance_native

from ray_migrate.backends import open_backend
from ray_migrate.config import parse_config
from ray_migrate.errors import TransientError
from ray_migrate.finalize import OverlappedFinalize
from ray_migrate.migration import Migration
from ray_migrate.priority import BACKGROUND

WAIT_S = 120.0  # a bound for waiting on events, never a timing assertion


def _until(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def _to_catching_up(m: Migration, uid: str) -> None:
    for phase in ("capturing", "copying", "catching_up"):
        m.router.call("set_phase", uid, phase)


def test_finalize_starts_when_the_last_copy_ends_not_when_units_are_ready(ray_cluster,
                                                                          tmp_path):
    src = str(tmp_path / "src")
    truth = seed_lance_native(src, "docs", list(range(600)))
    cfg = parse_config({
        "migration_id": f"overlap-{tmp_path.name}",
        "source": {"kind": "lancedb", "uri": src, "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"},
        "units": {"by": "id_range", "count": 2}, "state_uri": str(tmp_path / "state"),
        "lance": {"index_min_rows": 300, "index_type": "IVF_FLAT"}})
    m = Migration(cfg)
    m.start(workers=False)  # the real router and target; the test plays the workers
    try:
        source = open_backend(cfg.source)
        units = m.units()
        for u in units:  # copies: one batch per unit, each a table version
            for batch, _cursor in source.scan(u, 1000):
                m.target.upsert(batch)
        first, last = units
        _to_catching_up(m, first.unit_id)
        niceness: list[int] = []
        real_finalize = m.target.finalize

        def finalize(options):  # bulk work: at the workers' niceness (priority.background)
            niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return real_finalize(options)

        m.target.finalize = finalize
        with OverlappedFinalize(m, poll_s=0.01) as fin:
            _until(lambda: fin.looks >= 3, "the finalizer looked three times")
            assert not [e for e in m.events if e["kind"] == "finalize"], \
                "finalize started while a unit's copy was ahead of it"
            _to_catching_up(m, last.unit_id)  # the last copy ended; units verify now
            _until(lambda: fin.started_at is not None, "finalize started")
            # A catch-up write while finalize runs (or just after): kept.
            changed = source.fetch([5]).to_pylist()[0]
            m.target.upsert(source.fetch([5]))
            fin.prepared()
        (event,) = [e for e in m.events if e["kind"] == "finalize"]
        assert event["overlapped"] is True
        assert m.report.finalize["indexed"] == ["vector"]
        assert niceness == [BACKGROUND], niceness
        assert m.report.finalize["overlapped_s"] >= 0
        assert fin.started_at <= fin.prepared_at
        found = read_lance(cfg.target.uri, "docs")
        assert sorted(found) == sorted(truth) and changed["id"] == 5
    finally:
        m.close()


def test_every_unit_is_copied_before_any_verifies(ray_cluster, tmp_path):
    """``prepare_units(on_copied=)``: the workers copy every unit first (all catching up, none
    ready when ``on_copied`` runs, which starts finalize), then verify them all."""
    src = str(tmp_path / "src")
    seed_lance_native(src, "docs", list(range(500)))
    cfg = parse_config({
        "migration_id": f"twopass-{tmp_path.name}",
        "source": {"kind": "lancedb", "uri": src, "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"},
        "units": {"by": "id_range", "count": 4}, "copy": {"batch_size": 100, "workers": 2},
        "state_uri": str(tmp_path / "state")})
    m = Migration(cfg)
    m.start()
    seen: list[dict[str, str]] = []
    try:
        m.prepare_units(on_copied=lambda: seen.append(
            {r["unit_id"]: r["phase"] for r in m.router.call("status")["units"]}))
        after = {r["unit_id"]: r["phase"] for r in m.router.call("status")["units"]}
    finally:
        m.close()
    assert len(seen) == 1 and set(seen[0].values()) == {"catching_up"}, seen
    assert set(after.values()) == {"ready"}
    assert all(u.equal and u.status == "copied" and u.copied_now for u in m.report.units), \
        m.report.to_table()
    assert sum(u.target_count for u in m.report.units) == 500


class ConflictsOnce:
    """The real target, whose first finalize meets a conflicting write (as a compaction
    beside a live catch-up may)."""

    def __init__(self, target):
        self.target, self.calls = target, 0

    def __getattr__(self, name):
        return getattr(self.target, name)

    def finalize(self, options):
        self.calls += 1
        if self.calls == 1:
            raise TransientError("LanceDB finalize failed: Retryable commit conflict")
        return self.target.finalize(options)


def test_an_early_finalize_that_conflicts_runs_again_after_the_units(ray_cluster, tmp_path):
    src = str(tmp_path / "src")
    seed_lance_native(src, "docs", list(range(400)))
    cfg = parse_config({
        "migration_id": f"again-{tmp_path.name}",
        "source": {"kind": "lancedb", "uri": src, "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"},
        "units": {"by": "id_range", "count": 2}, "state_uri": str(tmp_path / "state"),
        "lance": {"index_min_rows": 300, "index_type": "IVF_FLAT"}})
    m = Migration(cfg)
    m.start(workers=False)
    try:
        m.target = flaky = ConflictsOnce(m.target)
        source = open_backend(cfg.source)
        for u in m.units():
            for batch, _cursor in source.scan(u, 1000):
                flaky.upsert(batch)
            _to_catching_up(m, u.unit_id)
        with OverlappedFinalize(m, poll_s=0.01) as fin:
            _until(lambda: flaky.calls >= 1, "the early finalize was tried")
            fin.prepared()
    finally:
        m.close()
    assert flaky.calls == 2  # tried once beside the verifies, then after the units
    (event,) = [e for e in m.events if e["kind"] == "finalize"]
    assert event["overlapped"] is False and m.report.finalize["indexed"] == ["vector"]
