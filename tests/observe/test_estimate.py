"""``ray-migrate plan`` estimates the run from sampled read and write rates (ray_migrate/estimate.py).

Run as users run it (the CLI, its own process, no Ray), on a real Qdrant local source and a
LanceDB target, and the reverse: the estimate is in ``plan --json`` and in the state beside the
plan, positive, bounded in time and in sampled points; the target location is as it was (a
target that does not exist yet still does not; an existing LanceDB directory is byte for byte
the same) and no scratch copy is left beside it. The run's report sets it beside the actual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from livecase import endpoint, seed

from ray_migrate.estimate import MIN_POINTS, SCRATCH, sample_size
from ray_migrate.report import RunReport

CLI = str(Path(sys.executable).parent / "ray-migrate")
N = 3000


def plan_json(tmp: Path, source: str, target: str, budget_s: float) -> tuple[dict, float]:
    cfg = {"migration_id": "est", "source": endpoint(source, tmp / "source"),
           "target": endpoint(target, tmp / "target"), "units": {"by": "tenant",
                                                                  "field": "tenant"},
           "copy": {"batch_size": 100, "workers": 2}, "state_uri": str(tmp / "state")}
    (tmp / "m.yaml").write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.monotonic()
    res = subprocess.run([CLI, "plan", str(tmp / "m.yaml"), "--json", "--estimate-s",
                          str(budget_s)], capture_output=True, text=True, timeout=120, env=env)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout), took


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime)
            for p in root.rglob("*")} if root.exists() else {}


def check_estimate(doc: dict, tmp: Path, budget_s: float) -> dict:
    est = doc["estimate"]
    assert est is not None
    assert est["seconds"] > 0 and est["read_points_per_s"] > 0
    assert est["write_points_per_s"] > 0
    assert 0 < est["sampled_points"] <= sample_size(N) == max(MIN_POINTS, int(N * 0.02))
    assert est["sample_s"] < budget_s + 5, est  # the budget, and scratch set-up and removal
    assert est["total_points"] == N
    stored = json.loads((tmp / "state" / "est" / "estimate.json").read_text())
    assert stored == est
    assert not [p for p in tmp.iterdir() if SCRATCH in p.name], list(tmp.iterdir())
    return est


def test_plan_estimates_q2l_into_a_target_that_does_not_exist(tmp_path: Path) -> None:
    seed("qdrant", tmp_path / "source", N)
    doc, _took = plan_json(tmp_path, "qdrant", "lancedb", 1.0)
    check_estimate(doc, tmp_path, 1.0)
    assert not (tmp_path / "target").exists()


def test_plan_estimates_l2q_beside_an_existing_target(tmp_path: Path) -> None:
    """A Qdrant target folder with a collection in it already: left exactly as it was."""
    from qdrant_client import QdrantClient, models

    seed("lancedb", tmp_path / "source", N)
    client = QdrantClient(path=str(tmp_path / "target"))
    client.create_collection("other", vectors_config=models.VectorParams(
        size=4, distance=models.Distance.DOT))
    client.upsert("other", models.Batch(ids=[1, 2], vectors=[[1.0] * 4, [0.5] * 4]))
    client.close()
    before = snapshot(tmp_path / "target")
    doc, _took = plan_json(tmp_path, "lancedb", "qdrant", 1.0)
    check_estimate(doc, tmp_path, 1.0)
    assert snapshot(tmp_path / "target") == before


def test_report_sets_the_estimate_beside_the_actual() -> None:
    report = RunReport(migration_id="m", started_at=100.0, finished_at=142.0,
                       estimate={"seconds": 30.0, "read_points_per_s": 1.0})
    assert report.model_dump(mode="json")["seconds"] == 42.0
    assert report.model_dump(mode="json")["estimate"]["seconds"] == 30.0
    assert "took 42s; `ray-migrate plan` estimated 30s" in report.to_table()
