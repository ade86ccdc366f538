"""The routing table's rules, without Ray; then the actor's recovery after a kill."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ray_migrate.routing.appliers import YIELD_MAX_AGE_S
from ray_migrate.routing.client_rows import CARRY_MAX_BYTES
from ray_migrate.routing.records import CAPTURING
from ray_migrate.routing.table import RoutingTable, TransitionError


def table():
    return RoutingTable(["a", "b"], lease_s=5.0)


def test_every_change_bumps_the_epoch_and_progress_does_not():
    t = table()
    e0 = t.epoch
    t.set_phase("a", "capturing")
    assert t.epoch == e0 + 1
    t.update_progress("a", copied=5, total=10)
    assert t.epoch == e0 + 1
    t.add_unit("c")
    assert t.epoch == e0 + 2 and t.unit("c").owner == "source"


def write(t: RoutingTable, unit: str, ids: list, now: float = 0) -> dict:
    lease = t.begin_write(unit, ids, now=now)
    t.end_write(lease["token"])
    return lease


def test_writes_are_logged_only_while_capturing():
    t = table()
    write(t, "a", [1, 2])
    assert t.lag("a") == 0
    t.set_phase("a", "capturing")
    write(t, "a", [2, 3])
    write(t, "a", [2])
    ids, seq = t.take_changes("a", now=0)
    assert ids == [2, 3] and t.lag("a") == 3
    write(t, "a", [9])  # arrives while catching up: stays in the log
    assert t.ack_changes("a", seq) == 1
    assert t.take_changes("a", now=0)[0] == [9]


def test_a_change_is_handed_out_only_once_its_write_has_ended():
    t = table()
    t.set_phase("a", "capturing")
    slow = t.begin_write("a", [1], now=0)
    write(t, "a", [2])
    ids, seq = t.take_changes("a", now=0)
    assert ids == [2], "id 1 may not be on the owner yet"
    assert t.ack_changes("a", seq) == 1
    t.end_write(slow["token"])
    assert t.take_changes("a", now=0)[0] == [1]


def test_capture_barrier_counts_only_leases_from_before_capture():
    t = table()
    old = t.begin_write("a", [1], now=0)["token"]
    t.set_phase("a", "capturing", now=0)
    capture_epoch = t.unit("a").capture_epoch
    new = t.begin_write("a", [2], now=0)["token"]
    assert t.open_leases("a", before_epoch=capture_epoch, now=0) == 1
    t.end_write(old)
    assert t.open_leases("a", before_epoch=capture_epoch, now=0) == 0
    assert t.open_leases("a", now=0) == 1
    t.end_write(new)


def test_frozen_unit_makes_writers_wait_and_flip_fences_stale_leases():
    t = table()
    for p in ("capturing", "copying", "catching_up", "ready"):
        t.set_phase("a", p)
    stale = t.begin_write("a", [1], now=0)
    assert stale["owner"] == "source"
    t.set_phase("a", "frozen", now=0)
    assert t.begin_write("a", [2], now=0)["status"] == "wait"
    assert t.begin_write("b", [3], now=0)["status"] == "ok", "other units are not frozen"
    t.set_phase("a", "target", now=0.05)
    assert t.unit("a").owner == "target" and t.unit("a").longest_freeze_ms == pytest.approx(50)
    ended = t.end_write(stale["token"])
    assert ended == {"valid": False, "epoch": t.epoch, "owner": "target", "held": True}
    fresh = t.begin_write("a", [1], now=0)
    assert fresh["owner"] == "target" and t.end_write(fresh["token"])["valid"]


def test_a_whole_write_waits_while_any_of_its_units_is_frozen():
    t = table()
    for p in ("capturing", "copying", "catching_up", "ready", "frozen"):
        t.set_phase("a", p, now=0)
    t.set_phase("b", "capturing", now=0)
    both = [("a", [1], None), ("b", [2], None)]
    assert [le["status"] for le in t.begin_writes(both, whole=True, now=0)] == ["wait", "wait"]
    assert t.lag("b") == 0 and not t.leases, "nothing leased, nothing logged"
    parts = t.begin_writes(both, whole=False, now=0)
    assert [le["status"] for le in parts] == ["wait", "ok"], "per unit, b goes on alone"
    assert t.lag("b") == 1
    t.end_write(parts[1]["token"])
    t.set_phase("a", "target", now=0.01)
    whole = t.begin_writes(both, whole=True, now=0.01)
    assert [(le["status"], le["owner"]) for le in whole] == [("ok", "target"), ("ok", "source")]
    # A freeze whose owner vanished is lifted by a whole write too, and the write goes on.
    t.set_phase("a", "frozen", now=1)
    late = t.begin_writes(both, whole=True, now=1 + t.freeze_timeout_s + 1)
    assert [le["status"] for le in late] == ["ok", "ok"] and t.unit("a").phase == "target"


def test_flip_waits_for_no_write_but_refuses_an_undrained_ended_one():
    t = table()
    for p in ("capturing", "copying", "catching_up", "ready"):
        t.set_phase("a", p)
    under_way = t.begin_write("a", [1], now=0)
    ended = t.begin_write("a", [2], now=0)
    in_freeze = t.begin_write("a", [4], now=0)
    t.end_write(ended["token"])  # ended before the freeze, not drained yet
    t.set_phase("a", "frozen", now=0)
    # A write that ends in the freeze is fenced at once: its client writes again after it.
    assert t.end_write(in_freeze["token"]) == {"valid": False, "epoch": t.epoch,
                                               "owner": "source", "held": True}
    with pytest.raises(TransitionError, match="needs a frozen unit"):
        t.flip("b", "target", now=0)
    assert t.settled("a", now=0) == 1, "id 2 only: id 4 is held for its retry"
    assert t.flip("a", "target", now=0) is False, "id 2 is on the source only: drain it first"
    ids, seq = t.take_changes("a", now=0)
    assert ids == [2]
    t.ack_changes("a", seq)
    late = t.begin_write("a", [3], now=0)
    assert late["status"] == "wait"
    assert t.flip("a", "target", now=0) is True, "a write under way does not hold the flip"
    assert t.unit("a").owner == "target"
    # The write under way is fenced: told to write again to the new owner. Its entry stays,
    # unsettled until the retry ends (the target does not hold id 1 before that), and then
    # the source is synced back to the target's value of id 1.
    assert t.end_write(under_way["token"]) == {"valid": False, "epoch": t.epoch,
                                               "owner": "target", "held": True}
    assert t.take_changes("a", now=0)[0] == [], "held until the retry ends"
    retry = t.begin_write("a", [1], now=0)
    assert retry["owner"] == "target"
    assert t.take_changes("a", now=0)[0] == [], "the retry is under way"
    assert t.end_write(retry["token"])["valid"]  # the client ends both in one call
    assert t.end_write(under_way["token"]) == {"valid": False, "epoch": t.epoch,
                                               "owner": "target"}, "ended with its retry"
    assert t.take_changes("a", now=0)[0] == [1]
    assert t.end_write(under_way["token"]) == {"valid": False, "epoch": t.epoch}, "once"
    again = t.begin_write("a", [4], now=0)  # the write fenced in the freeze, written again
    assert again["owner"] == "target"
    assert t.end_write(again["token"])["valid"]
    t.end_write(in_freeze["token"])
    assert t.take_changes("a", now=0)[0] == [1, 4]


def test_a_write_fenced_in_a_freeze_that_is_lifted_writes_again_to_the_same_owner():
    t = ready_table()
    lease = t.begin_write("a", [5], now=0)
    t.set_phase("a", "frozen", now=0)
    assert t.end_write(lease["token"])["held"] is True
    assert t.settled("a", now=0) == 0 and t.take_changes("a", now=0)[0] == []
    assert t.lift_freeze("a", "ready", now=0) is True  # the cutover gave up: no flip
    retry = t.begin_write("a", [5], now=0)
    assert (retry["status"], retry["owner"]) == ("ok", "source")
    assert t.end_write(retry["token"])["valid"] is True
    t.end_write(lease["token"])
    assert t.take_changes("a", now=0)[0] == [5], "then followed to the target as usual"


def ready_table() -> RoutingTable:
    t = table()
    for p in ("capturing", "copying", "catching_up", "ready"):
        t.set_phase("a", p)
    return t


def test_a_quiet_unit_switches_in_one_step_without_a_freeze():
    t = ready_table()
    write(t, "a", [1])
    under_way = t.begin_write("a", [2], now=0)
    assert t.settle("a", "target", True, False, now=0) == {"state": "waiting", "settled": 1}, \
        "id 1 ended but is not applied"
    ids, seq = t.take_changes("a", now=0)
    assert ids == [1]
    t.ack_changes("a", seq)
    assert t.settle("a", "target", True, False, now=0) == {"state": "waiting", "settled": 0}, \
        "a write is under way"
    assert (t.unit("a").phase, t.unit("a").owner) == ("ready", "source")
    t.end_write(under_way["token"])
    t.ack_changes("a", t.take_changes("a", now=0)[1])
    assert t.settle("a", "target", True, False, now=0) == {"state": "switched"}
    u = t.unit("a")
    assert (u.owner, u.phase, u.longest_freeze_ms) == ("target", "target", 0.0)
    assert t.begin_write("a", [1], now=0)["owner"] == "target"
    with pytest.raises(TransitionError, match="cannot go from source to frozen"):
        t.settle("b", "target", True, False, now=0)  # b never captured its writes


def test_a_freeze_waits_for_a_quiet_moment_unless_forced():
    t = ready_table()
    under_way = t.begin_write("a", [1], now=0)
    assert t.settle("a", "target", False, False, now=0)["state"] == "waiting"
    t.end_write(under_way["token"])
    assert t.settle("a", "target", False, False, now=0) == {"state": "waiting", "settled": 1}, \
        "its change is not applied"
    t.ack_changes("a", t.take_changes("a", now=0)[1])
    assert t.settle("a", "target", False, False, now=0) == {"state": "quiet"}, \
        "quiet, not confirmed: no switch, and no freeze while the caller confirms"
    assert t.unit("a").phase == "ready"
    assert t.settle("a", "target", False, True, now=0) == {
        "state": "frozen", "quiet": True, "under_way": 0}
    assert t.begin_write("a", [2], now=0)["status"] == "wait"
    t.set_phase("a", "ready", now=0)
    t.begin_write("a", [3], now=0)
    assert t.settle("a", "target", True, True, now=0) == {
        "state": "frozen", "quiet": False, "under_way": 1}


def test_expired_leases_stop_counting():
    t = table()
    t.begin_write("a", [1], now=0)
    assert t.open_leases("a", now=4) == 1
    assert t.open_leases("a", now=6) == 0


def test_rollback_flips_back_and_bad_transitions_are_refused():
    t = table()
    with pytest.raises(TransitionError, match="cannot go from source to target"):
        t.set_phase("a", "target")
    for p in ("capturing", "copying", "catching_up", "ready", "frozen", "target", "frozen",
              "rolled_back"):
        t.set_phase("a", p)
    assert t.unit("a").owner == "source" and t.unit("a").flips == 2


def test_a_rolled_back_unit_keeps_capturing_and_its_next_cutover_applies_what_it_logged():
    """The log means "ids whose owner's value the other side must get", whoever owns the
    unit: after a rollback the target is a standby the followers keep up (``FOLLOWED``), and
    preparing the unit again keeps its log, so a delete made meanwhile reaches the target
    even when no verify runs."""
    from ray_migrate.routing.records import FOLLOWED

    t = ready_table()
    assert t.settle("a", "target", True, False, now=0) == {"state": "switched"}
    assert t.settle("a", "rolled_back", True, False, now=0) == {"state": "switched"}
    deleted = write(t, "a", [5])  # a delete on the source, while rolled back
    assert deleted["owner"] == "source" and deleted["phase"] in CAPTURING
    phase, lag, _, _ = t.lags(now=0)["a"]
    assert (phase, lag) == ("rolled_back", 1) and phase in FOLLOWED
    for p in ("capturing", "copying", "catching_up"):
        t.set_phase("a", p, now=0)
    assert t.take_changes("a", now=0)[0] == [5], "kept through the new prepare"
    back = RoutingTable.from_dict(t.to_dict(), now=0)
    assert back.unit("a").needs_repair, "a restarted router repairs it like any capturing unit"


def test_a_rolled_back_units_log_past_its_cap_becomes_a_repair(monkeypatch):
    """Nobody may follow a rolled-back unit for long (no driver runs): its log stops growing
    at ROLLED_BACK_MAX_LOG, and the unit is marked for diff-and-repair instead; a ready unit's
    log is applied by its followers and is not capped."""
    from ray_migrate.routing import table as table_mod

    monkeypatch.setattr(table_mod, "ROLLED_BACK_MAX_LOG", 3)
    t = ready_table()
    t.set_phase("b", "capturing")
    assert t.settle("a", "target", True, False, now=0) == {"state": "switched"}
    assert t.settle("a", "rolled_back", True, False, now=0) == {"state": "switched"}
    for pid in (1, 2, 3):
        write(t, "a", [pid])
        write(t, "b", [pid])
    assert t.lag("a") == 3 and not t.unit("a").needs_repair
    write(t, "a", [4])
    write(t, "b", [4])
    assert t.lag("a") == 0 and t.unit("a").needs_repair, "dropped for a repair"
    assert t.lag("b") == 4 and not t.unit("b").needs_repair


def test_recovery_marks_capturing_units_for_repair_and_waits_out_old_leases():
    t = table()
    t.set_phase("a", "capturing")
    t.begin_write("a", [1, 2], now=0)
    back = RoutingTable.from_dict(t.to_dict(), restarted=True, now=100)
    assert back.epoch > t.epoch
    assert back.unit("a").needs_repair and not back.unit("b").needs_repair
    assert back.take_changes("a", now=100)[0] == [1, 2], "leases from before are unknown"
    assert back.open_leases("a", now=101) == 1, "leases from before the restart are unknown"
    assert back.open_leases("a", now=106) == 0


def test_router_actor_recovers_its_table_after_a_kill(ray_cluster, tmp_path):
    import ray

    from ray_migrate.routing.actor import get_router, start_router

    h = start_router("rt-test", str(tmp_path), ["a", "b"], {"hello": 1}, lease_s=0.2)
    try:
        h.call("set_phase", "a", "capturing")
        lease = h.call("begin_write", "a", [7])
        h.call("flush")
        epoch = h.call("routes")["epoch"]
        ray.kill(h.actor, no_restart=False)
        again = get_router("rt-test")
        deadline = time.monotonic() + 60
        while (routes := again.call("routes"))["epoch"] <= epoch:  # until it has restarted
            assert time.monotonic() < deadline, "the router did not restart"
            time.sleep(0.05)
        assert routes["units"]["a"] == ("source", "capturing")
        assert routes["epoch"] > epoch
        assert again.call("take_changes", "a")[0] == [7]
        new = again.call("begin_write", "a", [8])  # the restarted router's first lease
        assert new["token"] > lease["token"], "its numbers exceed the old router's"
        assert again.call("end_write", lease["token"])["valid"] is False
        assert again.call("end_write", new["token"])["valid"] is True, "not ended by the old"
        assert again.call("describe")["hello"] == 1
        assert again.call("wait_leases", "a", None, 5.0) is True
    finally:
        h.kill()


def test_router_actor_hands_a_clients_rows_to_the_applier(ray_cluster, tmp_path):
    import pyarrow as pa

    from ray_migrate.routing.actor import start_router

    h = start_router("rt-carry", str(tmp_path), ["a"], {}, lease_s=5.0)
    try:
        h.call("set_phase", "a", "capturing")
        [lease] = h.call("begin_writes", [("a", [1, 2], None)])
        rows = pa.table({"id": pa.array([1, 2], pa.uint64()), "payload": ["{}", "{}"]})
        assert h.call("end_writes", [lease["token"]],
                      {lease["token"]: (("upsert", rows), rows.nbytes)})[0]["valid"]
        ids, seq, carried = h.call("take_changes", "a", 10, "me")
        assert ids == [1, 2] and len(carried) == 1
        (got_ids, (kind, table)), = carried
        assert got_ids == [1, 2] and kind == "upsert" and table.equals(rows)
        h.call("ack_changes", "a", seq, "me")
        assert h.call("take_changes", "a", 10, "me") == ([], seq, [])
    finally:
        h.kill()


def test_router_settles_a_cutover_in_one_call_per_look(ray_cluster, tmp_path):
    import ray

    from ray_migrate.routing.actor import start_router

    h = start_router("rt-quiet", str(tmp_path), ["a"], {}, lease_s=5.0)

    def settle(*args: Any) -> dict[str, Any]:
        out = h.call("settle", *args)
        assert out.pop("waited_ms") >= 0
        return out

    try:
        for p in ("capturing", "copying", "catching_up"):
            h.call("set_phase", "a", p)
        [lease] = h.call("begin_writes", [("a", [1], None)])
        assert settle("a", "target", True, False) == {
            "state": "waiting", "settled": 0}, "a write is under way"
        # Asked to wait, it answers when that write ends, not before and not at the timeout.
        pending = h.actor.settle.remote("a", "target", True, False, 20.0)
        ready, _ = ray.wait([pending], timeout=0.3)
        assert not ready, "it answered while no write had ended"
        h.call("end_writes", [lease["token"]])
        out = ray.get(pending, timeout=10)
        assert (out["state"], out["settled"]) == ("waiting", 1), out
        # it started waiting when the actor took the call, a little after it was sent
        assert 200 <= out["waited_ms"] < 10_000, out
        assert settle("a", "target", True, False) == {
            "state": "waiting", "settled": 1}, "its change is not applied"
        assert h.call("unit", "a")["phase"] == "catching_up"
        ids, seq, _ = h.call("take_changes", "a", 10, "me")
        h.call("ack_changes", "a", seq, "me")
        assert settle("a", "target", False, False) == {"state": "quiet"}, \
            "quiet, but what was applied is not confirmed yet: neither switch nor freeze"
        assert h.call("unit", "a")["phase"] == "catching_up"
        assert settle("a", "target", True, False) == {"state": "switched"}
        assert h.call("unit", "a")["owner"] == "target"
        h.call("set_phase", "a", "frozen")
        h.call("set_phase", "a", "rolled_back")
        for p in ("capturing", "copying", "catching_up"):
            h.call("set_phase", "a", p)
        [lease] = h.call("begin_writes", [("a", [2], None)])
        assert settle("a", "target", True, True) == {
            "state": "frozen", "quiet": False, "under_way": 1}
        assert h.call("unit", "a")["phase"] == "frozen"
        assert h.call("flip", "a", "target") is True, "a write under way does not hold it"
        [ended] = h.call("end_writes", [lease["token"]])
        assert ended["valid"] is False, "fenced: its client writes again to the new owner"
    finally:
        h.kill()


def test_a_write_meeting_a_freeze_waits_in_the_router_and_is_granted_when_it_ends(
        ray_cluster, tmp_path):
    import ray

    from ray_migrate.routing.actor import start_router

    h = start_router("rt-freeze-wait", str(tmp_path), ["a", "b"], {}, lease_s=5.0)
    try:
        for p in ("capturing", "copying", "catching_up", "ready", "frozen"):
            h.call("set_phase", "a", p)
        both = [("a", [1], None), ("b", [2], None)]
        # Nothing can be granted: the call waits in the router instead of answering "wait".
        pending = h.actor.begin_writes.remote(both, True, False, 20.0)
        ready, _ = ray.wait([pending], timeout=0.3)
        assert not ready, "it answered while the unit was still frozen"
        h.call("set_phase", "a", "target")  # the flip lifts the freeze
        leases = ray.get(pending, timeout=10)
        assert [(le["status"], le["owner"]) for le in leases] == [
            ("ok", "target"), ("ok", "source")], "granted the moment the freeze ended"
        h.call("end_writes", [le["token"] for le in leases])
        # A unit granted at once is never held back by another's freeze (not whole).
        h.call("set_phase", "a", "frozen")
        parts = h.call("begin_writes", both, False, False, 20.0)
        assert [le["status"] for le in parts] == ["wait", "ok"]
        # And the wait is bounded: still frozen after wait_s, the answer is "wait".
        late = h.call("begin_writes", both[:1], False, False, 0.2)
        assert [le["status"] for le in late] == ["wait"]
    finally:
        h.kill()


def test_a_strict_forced_settle_freezes_only_with_nothing_ended_to_apply():
    t = RoutingTable(["a"], lease_s=5.0)
    for p in ("capturing", "copying", "catching_up"):
        t.set_phase("a", p, now=0)
    [under_way] = t.begin_writes([("a", [1], None)], now=0)
    [ended] = t.begin_writes([("a", [2], None)], now=0)
    t.end_write(ended["token"])
    assert t.settle("a", "target", True, True, strict=True, now=0) == {
        "state": "waiting", "settled": 1}, "an ended write waits: no freeze yet"
    assert t.unit("a").phase == "catching_up"
    ids, seq = t.take_changes("a", 10, "me", now=0)[:2]
    t.ack_changes("a", seq, "me")
    assert t.settle("a", "target", True, True, strict=True, now=0) == {
        "state": "frozen", "quiet": False, "under_way": 1}, "only a write under way is left"


def test_a_freeze_whose_owner_vanished_is_lifted_after_its_timeout():
    t = RoutingTable(["a"], lease_s=5.0, freeze_timeout_s=2.0)
    for p in ("capturing", "copying", "catching_up", "frozen"):
        t.set_phase("a", p, now=0)
    assert t.begin_write("a", [1], now=1)["status"] == "wait"
    lease = t.begin_write("a", [1], now=3)
    assert lease["status"] == "ok" and lease["owner"] == "source"
    assert t.unit("a").phase == "catching_up"


def test_one_applier_at_a_time_per_unit_log():
    t = table()
    t.set_phase("a", "capturing")
    write(t, "a", [1, 2])
    ids, seq = t.take_changes("a", holder="w1", now=0)
    assert ids == [1, 2]
    assert t.take_changes("a", holder="w2", now=1) == ([], -1)
    assert t.peek_changes("a") == [1, 2], "peeking takes nothing"
    assert t.ack_changes("a", seq, holder="w1") == 0
    write(t, "a", [3], now=2)
    assert t.take_changes("a", holder="w2", now=2)[0] == [3]
    # A holder that vanished loses its hold after a lease time; its late ack is ignored.
    assert t.take_changes("a", holder="w3", now=2 + t.lease_s + 1)[0] == [3]
    assert t.ack_changes("a", 99, holder="w2") == 1


def test_a_reserved_or_frozen_unit_is_not_handed_to_followers():
    t = table()
    for p in ("capturing", "copying", "catching_up", "ready"):
        t.set_phase("a", p, now=0)
    write(t, "a", [1, 2])
    ids, seq = t.take_changes("a", holder="follower", now=1, background=True)
    assert ids == [1, 2]
    # A cutover reserves while the follower's step is still under way: told to wait for it.
    assert t.reserve("a", "cut", now=1) is False
    assert t.lags(now=1)["a"] == ("ready", 2, True, 1.0)
    t.ack_changes("a", seq, holder="follower")
    assert t.reserve("a", "cut", now=1) is True
    write(t, "a", [3], now=1)
    assert t.take_changes("a", holder="follower", now=1, background=True) == ([], -1)
    assert t.take_changes("a", holder="cut", now=1)[0] == [3], "the cutover itself drains"
    assert t.reserve("a", "cut2", now=1) is False, "another cutover holds it"
    t.release("a", "cut")
    t.set_phase("a", "frozen", now=2)
    write_ids = t.begin_write("b", [9], now=2)  # other units are not affected
    assert write_ids["status"] == "ok"
    t.set_phase("a", "ready", now=2)
    t.ack_changes("a", 0, holder="cut")  # lets go without acking anything
    assert t.take_changes("a", holder="follower", now=2, background=True)[0] == [3]


def test_followers_yield_to_a_cutover_unless_a_change_grows_old():
    t = table()
    for p in ("capturing", "copying", "catching_up", "ready"):
        t.set_phase("a", p, now=0)
        t.set_phase("b", p, now=0)
    write(t, "a", [1], now=10.0)
    write(t, "a", [2, 3], now=10.2)
    write(t, "b", [4], now=10.2)
    assert t.oldest_age("a", now=10.25) == pytest.approx(0.25)
    t.yield_followers(5.0, now=10.25)
    assert t.take_changes("a", holder="f", now=10.25, background=True) == ([], -1)
    assert t.take_changes("b", holder="f", now=10.25, background=True) == ([], -1)
    old = 10.0 + YIELD_MAX_AGE_S + 0.01
    ids, seq = t.take_changes("a", holder="f", now=old, background=True)
    assert ids == [1, 2, 3], "a's oldest change is too old to wait: followed during the yield"
    assert t.take_changes("b", holder="f", now=old, background=True) == ([], -1)
    t.ack_changes("a", seq, holder="f")
    assert t.oldest_age("a", now=old) == 0.0 and t.unit("a").marks == []
    write(t, "a", [5], now=old)
    assert t.oldest_age("a", now=old + 0.1) == pytest.approx(0.1)
    # A compaction's pause has no such exception; a yield of 0 ends the yield.
    t.pause_followers(5.0, now=old)
    assert t.take_changes("a", holder="f", now=old + 1, background=True) == ([], -1)
    t.pause_followers(0, now=old)
    t.yield_followers(0, now=old)
    assert t.take_changes("b", holder="f", now=old, background=True)[0] == [4]
    assert "marks" not in t.to_dict()["units"]["a"], "not durable: ages restart as unknown"


def test_a_reservation_lapses_after_a_lease_time():
    t = table()
    t.set_phase("a", "capturing", now=0)
    write(t, "a", [1])
    assert t.reserve("a", "cut", now=0) is True
    assert t.take_changes("a", holder="f", now=1, background=True) == ([], -1)
    assert t.take_changes("a", holder="f", now=t.lease_s + 1, background=True)[0] == [1]
    t.ack_changes("a", 0, holder="f")
    assert t.reserve("a", "cut2", now=1) is False, "cut holds it"
    assert t.reserve("a", "cut2", now=t.lease_s + 1) is True, "a dead cutover's hold lapses"


def test_a_follower_takes_several_units_at_once_within_its_limit():
    t = table()
    for u in ("a", "b"):
        for p in ("capturing", "copying", "catching_up", "ready"):
            t.set_phase(u, p, now=0)
    write(t, "a", [1, 2, 3])
    write(t, "b", [4, 5])
    t.reserve("b", "cut", now=0)
    assert t.take_many(["a", "b"], 10, "f", now=0) == {"a": ([1, 2, 3], 3)}, "b is reserved"
    assert t.take_many(["a", "b"], 10, "g", now=0) == {}, "f holds a"
    t.release("b", "cut")
    t.ack_changes("a", 0, holder="f")
    taken = t.take_many(["a", "b"], 4, "f", now=0)
    assert {u: ids for u, (ids, _) in taken.items()} == {"a": [1, 2, 3], "b": [4]}
    for u, (_, seq) in taken.items():
        t.ack_changes(u, seq, holder="f")
    assert (t.lag("a"), t.lag("b")) == (0, 1)


def test_logs_are_stored_apart_and_a_verify_can_log_ids_for_repair():
    t = table()
    t.set_phase("a", "capturing")
    write(t, "a", [1])
    assert t.log_ids("a", [5, 6]) == 3
    assert "log" not in t.to_dict(logs=False)["units"]["a"]
    assert t.logs_dict() == {"a": [[1, 1, 1], [2, 5], [3, 6]]}
    ids, seq = t.take_changes("a")
    assert ids == [1, 5, 6], "logged ids are settled at once: no write is under way"
    assert t.status()[0]["lag"] == 3 and "log" not in t.status()[0]


def test_a_watch_names_every_id_in_the_log_during_it_even_those_applied_meanwhile():
    t = capturing()
    write(t, "a", [1])
    t.watch("a", "v")
    ids, seq = t.take_changes("a")
    t.ack_changes("a", seq)  # 1 is applied during the watch
    write(t, "a", [2])
    ids, seq = t.take_changes("a")
    t.ack_changes("a", seq)  # so is 2, logged during it
    t.log_ids("a", [3])  # a repair entry, still waiting
    write(t, "b", [9])  # another unit
    assert sorted(t.watched("a", "v")) == [1, 2, 3]
    assert t.watched("a", "v") is None, "a watch is read once"
    t.watch("a", "w")
    assert "watches" not in t.to_dict()["units"]["a"]
    back = RoutingTable.from_dict(t.to_dict())
    assert back.watched("a", "w") is None, "a restarted router knows no watch: look again"
    t.watch("a", "x")
    write(t, "a", [4])
    assert sorted(t.watched("a", "x")) == [3, 4]


def test_the_confirm_uses_the_last_read_of_each_asked_id():
    import pyarrow as pa

    from ray_migrate.cutover import rows_of

    empty = pa.table({"id": pa.array([], pa.uint64()), "v": pa.array([], pa.int64())})
    first = pa.table({"id": pa.array([1, 2], pa.uint64()), "v": [10, 20]})
    again = pa.table({"id": pa.array([1], pa.uint64()), "v": [11]})
    assert rows_of([([1, 2], empty)], {1, 2}).num_rows == 0, "every id was a delete"
    got = rows_of([([1, 2, 3], first), ([1], again)], {1, 2, 3})
    assert sorted(zip(got["id"].to_pylist(), got["v"].to_pylist(), strict=True)) == [
        (1, 11), (2, 20)]
    gone = rows_of([([1, 2], first), ([1], empty)], {1, 2})
    assert gone["id"].to_pylist() == [2], "updated, then deleted: the last read found nothing"
    assert rows_of([([1, 2], first)], {1})["id"].to_pylist() == [1], "only the ids asked for"
    assert rows_of([], {1}) is None


def capturing() -> RoutingTable:
    t = table()
    for p in ("capturing", "copying", "catching_up", "ready"):
        t.set_phase("a", p)
    return t


def test_a_clients_rows_stand_in_for_a_read_only_when_they_must_equal_the_owner():
    t = capturing()
    alone = t.begin_write("a", [1, 2], now=0)
    t.end_write(alone["token"], ("upsert", "rows of 1 and 2"), 10)
    first = t.begin_write("a", [3], now=0)
    second = t.begin_write("a", [3], now=0)  # under way with first: either may land last
    t.end_write(first["token"], ("upsert", "3 from first"), 10)
    t.end_write(second["token"], ("upsert", "3 from second"), 10)
    failed = t.begin_write("a", [4], now=0)
    t.end_write(failed["token"])  # a write that failed hands in nothing
    ids, seq = t.take_changes("a", now=0)
    assert ids == [1, 2, 3, 4]
    assert t.carried_for("a") == [([1, 2], ("upsert", "rows of 1 and 2"))]
    t.ack_changes("a", seq)
    assert t.rows.kept == {} and t.rows.nbytes == 0, "applied: the rows are let go"


def test_rows_are_not_used_after_a_repair_entry_a_flip_or_with_a_write_from_before_capture():
    t = table()
    old = t.begin_write("a", [9], now=0)  # before capture, still under way after it began
    for p in ("capturing", "copying", "catching_up", "ready"):
        t.set_phase("a", p)
    late = t.begin_write("a", [8], now=0)
    t.end_write(old["token"])
    t.end_write(late["token"], ("upsert", "8"), 1)
    w = t.begin_write("a", [5, 6], now=0)
    t.end_write(w["token"], ("upsert", "5 and 6"), 1)
    t.log_ids("a", [6])  # a verify found 6 differing: read it again
    t.take_changes("a", now=0)
    assert t.carried_for("a") == [([5], ("upsert", "5 and 6"))], "8 may have met 9's write"
    t.ack_changes("a", t.unit("a").taken[-1])
    fenced = t.begin_write("a", [7], now=0)
    t.set_phase("a", "frozen", now=0)
    assert t.flip("a", "target", now=0)
    t.end_write(fenced["token"], ("upsert", "7 on the old owner"), 1)
    t.end_write(fenced["token"])  # again, with its retry (or it expires)
    assert t.take_changes("a", now=0)[0] == [7]
    assert t.carried_for("a") == [], "written to the old owner: the new one is read"


def test_rows_near_a_restart_and_beyond_the_memory_cap_are_not_kept():
    t = capturing()
    back = RoutingTable.from_dict(t.to_dict(), now=100)
    lease = back.begin_write("a", [1], now=101)
    back.end_write(lease["token"], ("upsert", "1"), 1)
    assert back.rows.kept == {}, "leases from before the restart are unknown"
    t.rows.nbytes = CARRY_MAX_BYTES
    lease = t.begin_write("a", [2], now=0)
    t.end_write(lease["token"], ("upsert", "2"), 1)
    assert t.rows.kept == {}


def test_a_target_compaction_and_a_cutover_exclude_each_other():
    t = capturing()
    assert t.reserve("a", "cut", now=0)
    assert not t.begin_upkeep(60, now=1), "a cutover is about to run"
    t.release("a", "cut")
    assert t.begin_upkeep(60, now=1)
    assert not t.reserve("b", "cut", now=2), "the cutover waits for the compaction"
    t.end_upkeep()
    assert t.reserve("b", "cut", now=3)
    t.release("b", "cut")
    assert t.begin_upkeep(60, now=4)
    assert t.reserve("a", "cut", now=65), "a compaction whose driver died lapses"


def test_one_follower_step_at_a_time():
    t = capturing()
    t.set_phase("b", "capturing")
    write(t, "a", [1])
    write(t, "b", [2])
    assert t.take_many(["a"], 10, "f", now=0) == {"a": ([1], 1)}
    assert t.take_many(["b"], 10, "g", now=0) == {}, "f's step writes the target now"
    t.ack_changes("a", 1, "f")
    t.end_follow("f")
    assert t.take_many(["b"], 10, "g", now=0) == {"b": ([2], 2)}
    assert t.take_many(["a", "b"], 10, "h", now=1) == {}, "g's step is under way"
    write(t, "a", [3], now=t.lease_s + 1)
    assert t.take_many(["a", "b"], 10, "h", now=t.lease_s + 1) == {
        "a": ([3], 3), "b": ([2], 2)}, "g's step lapsed (its worker died): h takes it over"
