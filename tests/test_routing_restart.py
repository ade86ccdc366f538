"""The routing table across router restarts, without Ray: what ``DurableTable`` writes when,
and what a router rebuilt from those two documents (``routing.json`` from the last change of
a route, ``changes.json`` from the last flush of the logs, no flush before the kill) may and
may not do with the leases and log entries of the router before it."""

from __future__ import annotations

import pytest

from ray_migrate.routing.durable import CHANGES_KEY, ROUTING_KEY, DurableTable
from ray_migrate.routing.records import INCARNATION_SHIFT, LogEntry
from ray_migrate.routing.table import RoutingTable
from ray_migrate.state import StateStore


class Clock:
    """The durable table's clock (when the logs were last flushed), moved by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def ready_table() -> RoutingTable:
    t = RoutingTable(["a", "b"], lease_s=5.0)
    for p in ("capturing", "copying", "catching_up", "ready"):
        t.set_phase("a", p, now=0)
    return t


def test_a_lease_from_before_a_restart_never_ends_a_new_one():
    t = ready_table()
    old = t.begin_write("a", [1], now=0)
    back = RoutingTable.from_dict(t.to_dict(), now=100)
    new = back.begin_write("a", [1], now=100)
    assert back.end_write(old["token"]) == {"valid": False, "epoch": back.epoch}, \
        "unknown to this router: its client writes again"
    assert new["token"] in back.leases, "the new lease is still open"
    assert back.end_write(new["token"])["valid"] is True


def test_a_new_writes_rows_are_never_joined_to_an_entry_from_before_a_restart():
    t = ready_table()
    old = t.begin_write("a", [1], now=0)  # an upsert of 1, ended: its entry waits in the log
    t.end_write(old["token"], ("upsert", "rows of 1"), 1)
    back = RoutingTable.from_dict(t.to_dict(), now=100)
    later = 100 + back.lease_s + 1  # leases from before the restart are over: rows are kept
    new = back.begin_write("a", [2], now=later)
    back.end_write(new["token"], ("delete", [2]), 1)
    assert back.take_changes("a", now=later)[0] == [1, 2]
    assert back.carried_for("a") == [([2], ("delete", [2]))], \
        "1 is read from the owner: the delete of 2 says nothing about it"


def test_seqs_after_a_restart_from_the_two_documents_exceed_every_restored_one(tmp_path):
    """The logs are flushed after ``routing.json`` was written, and the router is killed with
    no flush: a write under way after the restart keeps its entry when the restored entries
    are applied and acked."""
    store, clock = StateStore(str(tmp_path), "m"), Clock()
    d = DurableTable.open(store, ["a", "b"], lease_s=5.0, clock=clock, now=0)
    d.set_phase("a", "capturing", now=0)  # routing.json: this moment's seq
    [other] = d.begin_writes([("b", [9], None)], now=0)  # b does not capture: nothing logged
    [first] = d.begin_writes([("a", [1], None)], now=0)  # logged; the logs' first flush
    d.end_writes([other["token"], first["token"]])
    assert store.read(ROUTING_KEY)["seq"] < d.table.seq, "routing.json is older than the log"
    assert store.read(CHANGES_KEY) == {"a": [[d.table.seq, 1, first["token"]]]}

    back = DurableTable.open(store, ["a", "b"], lease_s=5.0, clock=clock, now=1)
    [under_way] = back.begin_writes([("a", [2], None)], now=1)
    restored, new = back.table.unit("a").log
    assert new.seq > restored.seq and new.token not in (other["token"], first["token"])
    ids, seq = back.table.take_changes("a", now=1)
    assert ids == [1], "2 may not be on the owner yet"
    back.ack_changes("a", seq)
    assert back.table.peek_changes("a") == [2], "the ack drops the restored entry only"
    back.end_writes([under_way["token"]])
    assert back.table.take_changes("a", now=1)[0] == [2]


def test_each_restore_is_a_new_incarnation_written_before_it_serves(tmp_path):
    store, clock = StateStore(str(tmp_path), "m"), Clock()
    tables = [DurableTable.open(store, ["a"], clock=clock, now=0).table for _ in range(3)]
    assert [t.incarnation for t in tables] == [0, 1, 2]
    assert store.read(ROUTING_KEY)["incarnation"] == 2, "durable before any call"
    for t in tables:
        t.set_phase("a", "capturing", now=0)
    leases = [t.begin_write("a", [1], now=0) for t in tables]
    assert len({le["token"] for le in leases}) == 3
    assert [t.unit("a").log[0].seq for t in tables] == [
        1, (1 << INCARNATION_SHIFT) + 1, (2 << INCARNATION_SHIFT) + 1]


def test_state_written_before_incarnations_restores_above_its_numbers(tmp_path):
    """A routing.json with no incarnation (and plain counters) is incarnation 0."""
    store = StateStore(str(tmp_path), "m")
    t = ready_table()
    t.log_ids("a", [3])
    doc = t.to_dict(logs=False)
    del doc["incarnation"]
    store.write(ROUTING_KEY, doc)
    store.write(CHANGES_KEY, {"a": [[1, 3]], "b": [[1, 4]]})  # b has left capture since
    back = DurableTable.open(store, ["a", "b"], now=0).table
    assert back.incarnation == 1
    assert back.unit("a").log == [LogEntry(1, 3)] and back.unit("b").log == []
    assert back.begin_write("a", [5], now=0)["token"] > 1 << INCARNATION_SHIFT


def test_a_unit_the_router_must_repair_never_switches():
    """A restart during a cutover: writes that ended before it may have lost their entries
    (the logs were not flushed), so the unit is not flipped until diff-and-repair."""
    t = ready_table()
    assert t.settle("a", "target", False, True, now=0)["state"] == "frozen"
    back = RoutingTable.from_dict(t.to_dict(), clients_may_remain=False, now=0)
    assert back.unit("a").needs_repair and back.unit("a").phase == "frozen"
    assert back.flip("a", "target", now=0) is False, "not before a diff-and-repair"
    back.lift_freeze("a", "ready", now=0)
    assert back.settle("a", "target", True, False, now=0) == {
        "state": "waiting", "settled": 0, "needs_repair": True}, "not quiet, and says why"
    back.unit("a").needs_repair = False  # repaired
    assert back.settle("a", "target", True, False, now=0) == {"state": "switched"}


@pytest.mark.parametrize("many", [False, True])
def test_an_applier_that_chose_its_direction_before_a_flip_takes_nothing(many):
    """A follower looks at the phases, then takes: a unit that flipped in between is not
    handed to it, or it would copy the old owner's values onto the new owner."""
    t = ready_table()
    assert t.lags(now=0)["a"][0] == "ready"  # a follower chooses: from the source
    assert t.settle("a", "target", True, False, now=0) == {"state": "switched"}
    lease = t.begin_write("a", [2], now=0)
    t.end_write(lease["token"])
    if many:
        assert t.take_many(["a"], 10, "f", now=0, owner="source") == {}
        assert t.take_many(["a"], 10, "f", now=0, owner="target")["a"][0] == [2]
    else:
        assert t.take_changes("a", holder="f", now=0, owner="source") == ([], -1)
        assert t.take_changes("a", holder="f", now=0, owner="target")[0] == [2]
