"""Payloads a LanceDB side may not hold (an explicit null, a key it has no column for, a value
of another type than its column) are accepted or refused the same way before and after a
unit's cutover: a write the owner accepts always reaches the other side (catch-up, follower,
rollback sync), and an explicit null comes back as the source gave it."""

from __future__ import annotations

import re
import time

import pytest
from test_live import DIM, live_config, other_side, prepared, read_side, seed

from ray_migrate import RoutedCollection
from ray_migrate.driver import Migration
from ray_migrate.errors import InvalidPointError
from ray_migrate.waves import switch_units


def _point(pid: int, **payload: object) -> dict:
    return {"id": pid, "vector": [0.25] * DIM, "payload": {"tenant": "t1", **payload}}


def _drained(coll: RoutedCollection) -> None:
    """Wait until the followers have applied every logged change to the other side."""
    deadline = time.monotonic() + 60
    while True:
        lags = coll.router.call("lags")
        assert "failed" not in {phase for phase, _, _, _ in lags.values()}, lags
        if not any(lag for _, lag, _, _ in lags.values()):
            return
        assert time.monotonic() < deadline, lags
        time.sleep(0.1)


def _cut_over(m: Migration) -> None:
    res = switch_units(m, ["tenant=t1"], "cutover")["tenant=t1"]
    assert res["ok"], res


def _reads_back(coll: RoutedCollection, want: dict[int, dict], target: dict) -> None:
    """Through the client (retrieve, search) and with LanceDB's own client (truth.read_lance)."""
    got = {p["id"]: p["payload"] for p in coll.retrieve(list(want))}
    assert got == want
    hits = coll.search([0.25] * DIM, k=50, filter={"tenant": "t1"})
    assert {h["id"]: h["payload"] for h in hits if h["id"] in want} == want
    found = read_side(target)
    assert {pid: found[pid][1] for pid in want} == want


@pytest.fixture
def q2l(ray_cluster, tmp_path):
    source, _ = seed("qdrant", tmp_path, n=20)
    target = other_side("lancedb", tmp_path)
    mid = f"shapes-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, target, cutover={"mode": "manual"}))
    m.start()
    try:
        m.prepare_units()
        yield m, RoutedCollection.connect(mid), target
    finally:
        m.close()


def test_explicit_nulls_reach_a_lance_target_before_and_after_cutover(q2l):
    """A null on a planned key (v) and on a key no source point had at plan time (tags)."""
    m, coll, target = q2l
    before = {500: {"tenant": "t1", "v": None}, 501: {"tenant": "t1", "tags": None}}
    coll.upsert([_point(pid, **{k: v for k, v in p.items() if k != "tenant"})
                 for pid, p in before.items()])
    _drained(coll)  # the follower applied them to the target while the unit waits
    _cut_over(m)
    after = {502: {"tenant": "t1", "v": None, "tags": None}, 503: {"tenant": "t1", "tags": None}}
    coll.upsert([_point(pid, **{k: v for k, v in p.items() if k != "tenant"})
                 for pid, p in after.items()])
    _reads_back(coll, {**before, **after}, target)


REFUSED = [({"v": "x"}, "payload key 'v' holds 'x', which does not fit its int column"),
           ({"fresh": 3}, "payload key 'fresh' has no column in the LanceDB table")]


def test_a_value_the_lance_target_cannot_hold_is_refused_before_and_after_cutover(q2l):
    """Refused at once, by name, writing nothing; before the fix the source took it and the
    unit's catch-up failed on it at cutover."""
    m, coll, _ = q2l
    for when in ("before", "after"):
        for payload, message in REFUSED:
            with pytest.raises(InvalidPointError, match=re.escape(message)):
                coll.upsert([_point(600, v=1), _point(601, **payload)])
            assert coll.retrieve([600, 601]) == [], f"{when} cutover: nothing written"
        if when == "before":
            _cut_over(m)


def test_an_explicit_null_a_foreign_lance_source_cannot_keep_is_refused_after_cutover_too(
        ray_cluster, tmp_path):
    """A LanceDB source made by another tool has no _rm_null_keys column: it refuses an
    explicit null, and so does the target while writes may still have to go back to it."""
    with prepared(tmp_path, "nullsrc", 20) as (m, mid, _source, _target, _truth):
        coll = RoutedCollection.connect(mid)
        message = "payload key 'v' is an explicit null, which this table (no '_rm_null_keys'"
        for when in ("before", "after"):
            with pytest.raises(InvalidPointError, match=re.escape(message)):
                coll.upsert([_point(700, v=1), _point(701, v=None)])
            assert coll.retrieve([700, 701]) == [], f"{when} cutover: nothing written"
            if when == "before":
                _cut_over(m)
