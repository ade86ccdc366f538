"""A wave's pause ends at once when no client did anything since the wave began (nothing to
observe); with a client connected it runs its full length (issue 15). The decision is the
router's view (``routing.activity``), checked here through the run report's events: no wall
clock is asserted."""

from __future__ import annotations

import pytest
from truth import seed_lance_native

from ray_migrate.client import RoutedCollection
from ray_migrate.config import parse_config
from ray_migrate.driver import run_migration
from ray_migrate.report_files import JSON_KEY
from ray_migrate.routing.activity import ClientActivity
from ray_migrate.routing.presence import Presence
from ray_migrate.routing.table import RoutingTable
from ray_migrate.state import StateStore

LONG_PAUSE_S = 60.0  # a pause that does not end early makes the test wait this long, and fail


def test_activity_since_names_what_the_clients_did():
    assert ClientActivity().since(100.0) is None
    assert ClientActivity(last_seen=99.0, last_lease=99.5, newest_stats=99).since(100.0) is None
    assert "connected" in ClientActivity(live_clients=1).since(100.0)
    assert "write lease" in ClientActivity(last_lease=100.0).since(100.0)
    assert "connected since" in ClientActivity(last_seen=101.0).since(100.0)
    assert "requests" in ClientActivity(newest_stats=100).since(100.5)


def test_router_records_the_last_lease_and_the_last_client_seen():
    table = RoutingTable(["u"])
    assert table.last_lease_at is None
    table.begin_write("u", [1], now=50.0)
    assert table.last_lease_at == 50.0
    p = Presence({})
    p.watch_began({"client_id": "c"}, epoch=1, now=10.0)
    p.watch_ended("c", now=12.0)
    assert p.last_seen == 12.0
    assert p.live_clients(now=20.0) == []  # lapsed, but seen at 12
    assert ClientActivity(last_seen=p.last_seen).since(11.0)


def _config(tmp_path, name: str, pause_s: float):
    uri = str(tmp_path / "src")
    seed_lance_native(uri, "docs", list(range(400)))
    return parse_config({
        "migration_id": f"{name}-{tmp_path.name}",
        "source": {"kind": "lancedb", "uri": uri, "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"},
        "units": {"by": "id_range", "count": 3}, "copy": {"batch_size": 100, "workers": 2},
        "cutover": {"waves": [1, "100%"], "pause_s": pause_s},
        "rollback": {"window_s": 0}, "state_uri": str(tmp_path / "state")})


def _pauses(cfg) -> list[dict]:
    doc = StateStore.of(cfg).read(JSON_KEY)
    return [e for e in doc["events"] if e["kind"] == "pause"]


def test_a_pause_with_no_client_ends_at_once(ray_cluster, tmp_path):
    cfg = _config(tmp_path, "quiet", LONG_PAUSE_S)
    report = run_migration(cfg)
    assert report.ok, report.to_table()
    (pause,) = _pauses(cfg)
    assert pause["ended_early"] is True and pause["wave"] == 1
    assert pause["seconds"] == LONG_PAUSE_S and "no client" in pause["reason"]


@pytest.mark.parametrize("pause_s", [1.5])
def test_a_pause_with_a_client_connected_runs_its_length(ray_cluster, tmp_path, pause_s):
    cfg = _config(tmp_path, "watched", pause_s)
    clients: list[RoutedCollection] = []
    try:
        report = run_migration(cfg, on_started=lambda m: clients.append(
            RoutedCollection.connect(cfg.migration_id)))
    finally:
        for c in clients:
            c.close()
    assert report.ok, report.to_table()
    (pause,) = _pauses(cfg)
    assert pause["ended_early"] is False and "connected" in pause["reason"]
    assert pause["waited_s"] >= pause_s  # it ran out its length, not a timing bound
