"""``switch_unit`` with a real router actor and real LanceDB on both sides: a confirm that
finds the other side differing refuses the switch (nothing frozen, the owner kept); a clean
unit switches at a quiet moment, without a freeze, and the target (read with lancedb) holds
the client's write."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
from truth import read_lance, seed_lance_native

from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.catchup import UnitSync
from ray_migrate.config import LanceEndpoint, TransformConfig
from ray_migrate.cutover import switch_unit
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec


def ready_unit(tmp_path, name: str, lease_s: float
               ) -> tuple[LanceBackend, LanceBackend, UnitSpec, Any]:
    """20 points on a LanceDB source, copied to a LanceDB target, and a router (``name``)
    whose one unit ``all`` is ready for cutover: (source, target, unit, router)."""
    from ray_migrate.routing.actor import start_router

    seed_lance_native(str(tmp_path / "src"), "docs", list(range(20)))
    source = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "src"), table="docs"))
    target = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "dst"), table="docs"))
    target.create(source.describe())
    target.upsert(source.fetch(list(range(20))))  # the copy
    h = start_router(name, str(tmp_path / "state"), ["all"], {}, lease_s=lease_s)
    for p in ("capturing", "copying", "catching_up", "ready"):
        h.call("set_phase", "all", p)
    return source, target, UnitSpec("all", "all"), h


def with_vector(rows: pa.Table, value: float) -> pa.Table:
    """``rows`` with every component of their vectors set to ``value``."""
    dim = rows.column("vector").type.list_size
    new = pa.FixedSizeListArray.from_arrays(
        pa.array(np.full(rows.num_rows * dim, value, np.float32)), dim)
    return rows.set_column(rows.column_names.index("vector"), "vector", new)


class DropsFirstRow:
    """The real target, whose upserts silently lose their first row: a faulty engine write."""

    def __init__(self, real: LanceBackend):
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def upsert(self, table: pa.Table) -> None:
        self.real.upsert(table.slice(1))


def test_a_differing_confirm_refuses_the_switch_and_a_clean_unit_switches_without_a_freeze(
        ray_cluster, tmp_path):
    source, target, unit, h = ready_unit(tmp_path, "rt-switch", 5.0)
    try:
        # A client writes point 3 through a lease: captured in the unit's change log.
        [lease] = h.call("begin_writes", [("all", [3], None)])
        source.upsert(with_vector(source.fetch([3]), 0.5))
        h.call("end_writes", [lease["token"]])
        identity = Transform(TransformConfig())

        res = switch_unit(h, (source, unit), (DropsFirstRow(target), unit), identity, "target",
                          "ready", 500, 1000)
        assert not res.ok and "differ" in res.reason and res.freeze_ms == 0.0
        st = h.call("unit", "all")
        assert (st["owner"], st["phase"]) == ("source", "ready"), "nothing switched or frozen"
        assert read_lance(str(tmp_path / "dst"), "docs")[3] != \
            read_lance(str(tmp_path / "src"), "docs")[3], "the faulty write really lost it"

        h.call("log_ids", "all", [3])  # the next catch-up applies it again
        res = switch_unit(h, (source, unit), (target, unit), identity, "target", "ready", 500,
                          1000)
        assert res.ok and res.how == "quiet" and res.steps_ms.keys() == {"switch"}, res
        st = h.call("unit", "all")
        assert (st["owner"], st["phase"], st["longest_freeze_ms"]) == ("target", "target", 0.0)
        assert read_lance(str(tmp_path / "dst"), "docs") == read_lance(str(tmp_path / "src"),
                                                                      "docs")
    finally:
        h.kill()


class BlockedWhileFrozen:
    """The real target, whose reads wait at a gate while the unit is frozen: an engine call
    that hangs inside a freeze."""

    def __init__(self, real: LanceBackend, router: Any, unit_id: str,
                 first_read: Callable[[], None] = lambda: None):
        self.real, self.router, self.unit_id = real, router, unit_id
        self.gate, self.blocked = threading.Event(), threading.Event()
        self.first_read: Callable[[], None] | None = first_read  # once, before a freeze

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def fetch(self, ids: Any) -> pa.Table:
        if self.router.call("unit", self.unit_id)["phase"] == "frozen":
            self.blocked.set()
            assert self.gate.wait(60), "the gate was never opened"
        elif self.first_read is not None:
            self.first_read, hook = None, self.first_read
            hook()
        return self.real.fetch(ids)


def test_a_freeze_is_lifted_at_max_freeze_ms_while_an_engine_call_hangs(
        ray_cluster, tmp_path, monkeypatch):
    from ray_migrate import cutover
    from ray_migrate.cutover import _Switch

    # No grace for a moment with nothing to drain: the freeze must drain the late write.
    monkeypatch.setattr(cutover, "FORCE_GRACE_S", 0.0)
    source, target, unit, h = ready_unit(tmp_path, "rt-hang", 30.0)
    try:
        [under_way] = h.call("begin_writes", [("all", [7], None)])  # no quiet moment
        [ended] = h.call("begin_writes", [("all", [3], None)])
        h.call("end_writes", [ended["token"]])  # applied while waiting, confirmed before
        [late] = h.call("begin_writes", [("all", [5], None)])
        # ... and this one ends during that confirm: the freeze drains and confirms it.
        hanging = BlockedWhileFrozen(target, h, "all",
                                     lambda: h.call("end_writes", [late["token"]]))
        sync = UnitSync(unit, h, source, hanging, Transform(TransformConfig()), seen=[])
        started = time.monotonic()
        res = _Switch(h, sync, "all", "target", "ready", 300, 0).run()
        took = time.monotonic() - started
        assert hanging.blocked.is_set() and not hanging.gate.is_set()
        assert not res.ok and "max_freeze_ms (300)" in res.reason, res
        assert 300 <= res.freeze_ms < 1000 and took < 3, (res.freeze_ms, took)
        st = h.call("unit", "all")
        assert (st["phase"], st["owner"]) == ("ready", "source"), "lifted while it hangs"
        assert h.call("begin_writes", [("all", [8], None)])[0]["status"] == "ok"
        hanging.gate.set()
        h.call("end_writes", [under_way["token"]])
        time.sleep(0.5)  # the hung step ends, and must not flip
        assert h.call("unit", "all")["phase"] == "ready", "the hung step never flips"
        res = switch_unit(h, (source, unit), (target, unit), Transform(TransformConfig()),
                          "target", "ready", 500, 1000)
        assert res.ok and h.call("unit", "all")["owner"] == "target", res
    finally:
        h.kill()


def test_a_forced_freeze_waits_for_a_moment_with_nothing_to_drain(ray_cluster, tmp_path):
    from ray_migrate.cutover import _Switch
    source, target, unit, h = ready_unit(tmp_path, "rt-grace", 30.0)
    try:
        [under_way] = h.call("begin_writes", [("all", [7], None)])  # no quiet moment
        [ended] = h.call("begin_writes", [("all", [3], None)])
        source.upsert(with_vector(source.fetch([3]), 0.5))
        h.call("end_writes", [ended["token"]])  # applied while waiting, confirmed before
        [late] = h.call("begin_writes", [("all", [5], None)])
        source.upsert(with_vector(source.fetch([5]), 0.25))
        # This one ends during that confirm. The freeze waits until the wait applied it, so
        # its drain has nothing to write (a read in the freeze would hang at the gate).
        hanging = BlockedWhileFrozen(target, h, "all",
                                     lambda: h.call("end_writes", [late["token"]]))
        sync = UnitSync(unit, h, source, hanging, Transform(TransformConfig()), seen=[])
        res = _Switch(h, sync, "all", "target", "ready", 300, 0).run()
        assert res.ok and res.drained == 0 and not hanging.blocked.is_set(), res
        assert res.how == "freeze, 1 writes under way", res
        st = h.call("unit", "all")
        assert (st["phase"], st["owner"]) == ("target", "target")
        [fenced] = h.call("end_writes", [under_way["token"]])
        assert fenced["valid"] is False, "under way at the flip: its client writes again"
        dst = read_lance(str(tmp_path / "dst"), "docs")
        assert dst == read_lance(str(tmp_path / "src"), "docs")
        assert set(np.frombuffer(dst[5][0]["vector"], np.float32)) == {0.25}
        assert set(np.frombuffer(dst[3][0]["vector"], np.float32)) == {0.5}
    finally:
        h.kill()


class EndsAWriteAtFirstLook:
    """The router, seen by a cutover: the write under way ends just before its first look for
    a quiet moment, so the wait applies it. Keeps the router's answers to those looks."""

    def __init__(self, real: Any, token: int):
        self.real, self.token, self.answers = real, token, []

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "settle" and self.token is not None:
            token, self.token = self.token, None
            self.real.call("end_writes", [token])
        out = self.real.call(method, *args, **kwargs)
        if method == "settle":
            self.answers.append(out["state"])
        return out


def test_what_the_wait_applies_is_confirmed_at_a_quiet_moment_without_a_freeze(
        ray_cluster, tmp_path):
    from ray_migrate.cutover import _Switch
    source, target, unit, h = ready_unit(tmp_path, "rt-quiet-confirm", 30.0)
    try:
        [lease] = h.call("begin_writes", [("all", [3], None)])
        source.upsert(with_vector(source.fetch([3]), 0.75))
        router = EndsAWriteAtFirstLook(h, lease["token"])
        sync = UnitSync(unit, h, source, target, Transform(TransformConfig()), seen=[])
        res = _Switch(router, sync, "all", "target", "ready", 500, 0).run()
        assert res.ok and res.how == "quiet", res
        assert router.answers == ["waiting", "quiet", "switched"], router.answers
        st = h.call("unit", "all")
        assert (st["owner"], st["phase"], st["longest_freeze_ms"]) == ("target", "target", 0.0)
        dst = read_lance(str(tmp_path / "dst"), "docs")
        assert dst == read_lance(str(tmp_path / "src"), "docs")
        assert set(np.frombuffer(dst[3][0]["vector"], np.float32)) == {0.75}
    finally:
        h.kill()


def test_a_switch_gives_up_at_once_when_the_router_restarted_during_it(ray_cluster, tmp_path):
    """P13: a router rebuilt during a cutover may have lost log entries, so the unit needs
    diff-and-repair first. The switch says so at its first look, freezing nothing, rather than
    freezing and having every flip refused until max_freeze_ms."""
    import ray

    source, target, unit, h = ready_unit(tmp_path, "rt-repair", 30.0)
    try:
        pid = h.call("describe")["pid"]
        ray.kill(h.actor, no_restart=False)  # the router restarts from its state
        deadline = time.monotonic() + 60
        while h.call("describe")["pid"] == pid:  # a condition, polled: until it restarted
            assert time.monotonic() < deadline, "the router did not restart"
            time.sleep(0.05)
        assert h.call("unit", "all")["needs_repair"]
        started = time.monotonic()
        res = switch_unit(h, (source, unit), (target, unit), Transform(TransformConfig()),
                          "target", "ready", 2000, 100)
        took = time.monotonic() - started
        assert not res.ok and "diff-and-repair" in res.reason, res
        assert res.freeze_ms == 0.0 and took < 1.5, (res.freeze_ms, took)
        st = h.call("unit", "all")
        assert (st["phase"], st["owner"]) == ("ready", "source")
    finally:
        h.kill()
