"""What a run reports per unit beyond copied and equal: a unit never verified says so, and a
unit whose follower meets a terminal error fails with that reason (status and report), while
the others go on."""

from __future__ import annotations

import json
import random
import threading
import time

import numpy as np
import yaml
from truth import read_lance, seed_lance_native

from ray_migrate import RoutedCollection
from ray_migrate.cli import main
from ray_migrate.config import parse_config
from ray_migrate.driver import Migration, run_migration
from ray_migrate.errors import TerminalError
from ray_migrate.waves import cutover_in_waves, hold_rollback_window
from ray_migrate.worker import FOLLOW_BACKOFF_MAX_S, FOLLOW_BACKOFF_S, UnitWorker, backoff_s


def config(tmp_path, mid: str, target: str = "dst", **over):
    return parse_config({
        "migration_id": f"{mid}-{tmp_path.name}",
        "source": {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(tmp_path / target), "table": "docs"},
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 50, "workers": 2, "worker_resources": {"num_cpus": 0.5}},
        "cutover": {"waves": [1, "100%"], "pause_s": 0, "max_freeze_ms": 3000,
                    **over.pop("cutover", {})},
        "state_uri": str(tmp_path / "state"), **over})


def test_units_never_verified_say_so_and_an_earlier_verdict_is_kept(ray_cluster, tmp_path):
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(80)))
    # verify off from the start: nobody compared the sides
    off = config(tmp_path, "noverify", verify={"enabled": False})
    report = run_migration(off)
    assert report.ok, report.to_table()
    assert {(u.phase, u.equal, u.check) for u in report.units} == {("done", None, "unverified")}
    table = report.to_table()
    assert table.count("unverified") == 2 and "equal" not in table, table
    saved = json.loads((tmp_path / "state" / off.migration_id / "report.json").read_text())
    assert {(u["equal"], u["check"]) for u in saved["units"]} == {(None, "unverified")}
    # verified by a first run, not by the second: the second keeps the first's verdict
    on = config(tmp_path, "verified", target="dst2", cutover={"mode": "manual"})
    first = run_migration(on)
    assert {u.check for u in first.units} == {"equal"}, first.to_table()
    second = run_migration(on.model_copy(update={"verify": off.verify}))
    assert second.ok, second.to_table()
    assert {(u.check, u.note) for u in second.units} == {("equal", "verified by an earlier run")}


class RefusesIds:
    """The real target, except that an upsert holding one of ``ids`` raises a TerminalError
    (say, a quota of that tenant)."""

    def __init__(self, real, ids: set[int]):
        self.real, self.ids, self.refused = real, ids, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def upsert(self, table, within=None):
        if self.ids & set(table.column("id").to_pylist()):
            self.refused += 1
            raise TerminalError("storage quota of tenant t1 exceeded")
        return self.real.upsert(table, within)


def test_a_follower_meeting_a_terminal_error_fails_its_unit_only(ray_cluster, tmp_path,
                                                                  capsys):
    import ray

    seed_lance_native(str(tmp_path / "src"), "docs", list(range(60)))  # t0 even, t1 odd ids
    cfg = config(tmp_path, "follow-fails")
    cfg_path = tmp_path / "m.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
    m = Migration(cfg)
    m.start(workers=False)  # no worker actors: the one follower is the one below
    try:
        plan = m.plan.to_dict()
        preparer = UnitWorker(cfg, plan)
        for unit in m.units():
            assert preparer.prepare(unit.to_dict())["phase"] == "ready"
        coll = RoutedCollection.connect(cfg.migration_id)
        vec = np.full(8, 0.25, np.float32).tolist()
        coll.upsert([{"id": 1000, "vector": vec, "payload": {"tenant": "t0"}},
                     {"id": 1001, "vector": vec, "payload": {"tenant": "t1"}}])
        follower = UnitWorker(cfg, plan)
        follower._target = refusing = RefusesIds(follower.target, {1001})
        thread = threading.Thread(target=follower._follow, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while m.router.call("unit", "tenant=t1")["phase"] != "failed" or \
                m.router.call("unit", "tenant=t0")["lag"]:
            assert time.monotonic() < deadline, m.router.call("status")
            time.sleep(0.05)
        follower.stop_following()
        thread.join(30)
        assert refusing.refused >= 1
        assert 1000 in read_lance(str(tmp_path / "dst"), "docs"), "the other unit went on"
        capsys.readouterr()
        assert main(["status", str(cfg_path), "--json"]) == 0
        units = {u["unit"]: u for u in json.loads(capsys.readouterr().out)["units"]}
        assert units["tenant=t1"]["phase"] == "failed"
        assert "storage quota of tenant t1" in units["tenant=t1"]["last_error"]
        assert units["tenant=t0"]["phase"] == "ready" and not units["tenant=t0"]["last_error"]
        # The waves skip the failed unit; the report says why it failed.
        m.workers = [ray.remote(UnitWorker).options(num_cpus=0).remote(cfg, plan)]
        cutover_in_waves(m)
        hold_rollback_window(m)
    finally:
        report = m.close()
    rows = {u.unit_id: u for u in report.units}
    assert rows["tenant=t0"].phase == "done" and rows["tenant=t0"].ok
    assert rows["tenant=t1"].status == "failed" and rows["tenant=t1"].phase == "failed"
    assert "storage quota of tenant t1" in rows["tenant=t1"].error
    assert not report.ok and "1 failed (tenant=t1)" in report.to_table()


def test_follower_backoff_doubles_to_a_cap_with_jitter():
    rng = random.Random(3)
    waits = [backoff_s(n, rng) for n in range(1, 12)]
    for n, wait in enumerate(waits, start=1):
        cap = min(FOLLOW_BACKOFF_MAX_S, FOLLOW_BACKOFF_S * 2 ** (n - 1))
        assert cap / 2 <= wait <= cap
    assert max(waits) <= FOLLOW_BACKOFF_MAX_S and len(set(waits)) == len(waits)


def test_the_rollback_window_ends_without_taking_a_unit_an_operator_rolls_back(
        ray_cluster, tmp_path):
    """The end of the window marks done only units still on the target: one that a rollback
    holds (reserved, then frozen) is waited for, and stays rolled back."""
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(20)))
    m = Migration(config(tmp_path, "window-end"))
    m.start(workers=False)
    try:
        r = m.router
        for uid in ("tenant=t0", "tenant=t1"):
            for phase in ("capturing", "copying", "catching_up", "ready", "frozen", "target"):
                r.call("set_phase", uid, phase)
        assert r.call("reserve", "tenant=t1", "rollback:op")  # an operator's rollback begins
        ended = threading.Event()
        closer = threading.Thread(target=lambda: (hold_rollback_window(m), ended.set()))
        closer.start()
        deadline = time.monotonic() + 30
        while r.call("unit", "tenant=t0")["phase"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r.call("unit", "tenant=t1")["phase"] == "target" and not ended.is_set()
        r.call("set_phase", "tenant=t1", "frozen")  # the rollback's freeze and flip
        r.call("set_phase", "tenant=t1", "rolled_back")
        r.call("release", "tenant=t1", "rollback:op")
        closer.join(30)
        assert ended.is_set()
        assert r.call("unit", "tenant=t1")["phase"] == "rolled_back"
    finally:
        m.close()
