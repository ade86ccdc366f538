"""Progress arithmetic and ``status --watch``, without Ray: the state files are written with the
real routing table, and the watch's sleep is the test's hook (deterministic, no waiting).

The progress lines of a real run (not a terminal) are checked in test_metrics.py's live run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ray_migrate.cli import main
from ray_migrate.config import load_config
from ray_migrate.progress import Rate, Snapshot, line, status_rows, watch_status
from ray_migrate.routing.actor import ROUTING_KEY
from ray_migrate.routing.table import RoutingTable
from ray_migrate.state import StateStore

UNITS = ["tenant=a", "tenant=b"]


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps({
        "migration_id": "watch", "state_uri": str(tmp_path / "state"),
        "source": {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"},
        "units": {"by": "tenant", "field": "tenant"}}))
    return path


def write_table(cfg_path: Path, phases: dict[str, str], copied: int) -> None:
    table = RoutingTable(UNITS)
    for unit, phase in phases.items():
        for step in {"copying": ["capturing", "copying"],
                     "ready": ["capturing", "copying", "catching_up", "ready"]}[phase]:
            table.set_phase(unit, step)  # type: ignore[arg-type]
        table.update_progress(unit, copied=copied, total=100)
    StateStore.of(load_config(cfg_path)).write(ROUTING_KEY, table.to_dict(logs=False))


def test_snapshot_rate_and_eta() -> None:
    rows = [{"unit_id": "a", "phase": "ready", "copied": 100, "total": 100},
            {"unit_id": "b", "phase": "copying", "copied": 20, "total": None}]
    rate = Rate(window_s=10)
    first = Snapshot.of(rows, {"b": 200}, now=0.0)
    assert (first.units, first.copied_units, first.points, first.total) == (2, 1, 120, 300)
    assert rate.add(first) == 0.0
    rows[1]["copied"] = 70
    later = Snapshot.of(rows, {"b": 200}, now=5.0)
    assert rate.add(later) == pytest.approx(10.0)  # 50 points in 5 s
    assert Rate.eta_s(later, 10.0) == pytest.approx(13.0)  # 130 left
    assert [r["unit_id"] for r in later.active] == ["b"]
    assert line(later, 10.0) == ("progress: units 1/2 copied, 0/2 on target; points 170/300 "
                                 "(57%), 10 points/s, ETA 13s")


def test_status_watch_refreshes_until_count(cfg_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``status --watch --count 3`` (stdout not a terminal): three tables, each as the state
    files are when it is shown; then exit 0."""
    write_table(cfg_path, {"tenant=a": "copying", "tenant=b": "copying"}, 10)
    assert main(["status", str(cfg_path), "--watch", "--interval", "0", "--count", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- ") == 3 and out.count("tenant=a") == 3, out
    # Between refreshes the run goes on: the watch shows each state in turn.
    cfg = load_config(cfg_path)
    store = StateStore.of(cfg)
    states = iter([({"tenant=a": "ready", "tenant=b": "copying"}, 60),
                   ({"tenant=a": "ready", "tenant=b": "ready"}, 100)])
    buf = io.StringIO()
    watch_status(lambda: status_rows(cfg, store), 0.5, 3, tty=False, out=buf,
                 sleep=lambda s: write_table(cfg_path, *next(states)))
    shown = buf.getvalue().split("--- ")[1:]
    assert len(shown) == 3
    assert "copying" in shown[0] and "10/100" in shown[0]
    assert "ready" in shown[1] and "60/100" in shown[1]
    assert "copying" not in shown[2] and "100/100" in shown[2]


def test_status_watch_on_a_terminal(cfg_path: Path) -> None:
    """On a terminal the table is redrawn in place (rich Live) and the watch ends after
    ``count`` refreshes, or on Ctrl-C."""
    write_table(cfg_path, {"tenant=a": "copying", "tenant=b": "copying"}, 10)
    cfg = load_config(cfg_path)
    store = StateStore.of(cfg)
    slept: list[float] = []
    watch_status(lambda: status_rows(cfg, store), 0.25, 2, tty=True, sleep=slept.append)
    assert slept == [0.25]

    def interrupt(_s: float) -> None:
        raise KeyboardInterrupt

    watch_status(lambda: status_rows(cfg, store), 0.25, None, tty=True, sleep=interrupt)
