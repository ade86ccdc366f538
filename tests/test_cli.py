"""The CLI in manual mode: plan, run (to ready), status, cutover, rollback, verify."""

from __future__ import annotations

import json

import yaml
from truth import assert_same, make_points, read_lance, seed_qdrant, write_q2l_config

from ray_migrate.cli import main


def test_manual_cutover_and_rollback_through_the_cli(ray_cluster, tmp_path, capsys):
    truth = make_points(60)
    seed_qdrant(str(tmp_path / "src"), "docs", truth)
    cfg = write_q2l_config(tmp_path, f"cli-{tmp_path.name}",
                           copy={"batch_size": 25, "workers": 2},
                           cutover={"mode": "manual", "max_freeze_ms": 3000})

    def status() -> dict:
        capsys.readouterr()
        assert main(["status", str(cfg), "--json"]) == 0
        return {u["unit"]: u for u in json.loads(capsys.readouterr().out)["units"]}

    assert main(["plan", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "tenant=t0" in out and "60 points" in out
    assert main(["run", str(cfg)]) == 0
    units = status()
    assert {u["phase"] for u in units.values()} == {"ready"}
    assert all(u["owner"] == "source" and u["copied"] == u["total"] for u in units.values())

    assert main(["cutover", str(cfg), "--units", "tenant=t0"]) == 0
    assert "tenant=t0: cutover ok" in capsys.readouterr().out
    units = status()
    assert (units["tenant=t0"]["phase"], units["tenant=t0"]["owner"]) == ("target", "target")
    assert units["tenant=t1"]["owner"] == "source"

    assert main(["rollback", str(cfg), "--units", "tenant=t0"]) == 0
    assert status()["tenant=t0"]["owner"] == "source"

    assert main(["cutover", str(cfg)]) == 0  # every ready unit
    units = status()
    assert units["tenant=t1"]["owner"] == units["tenant=t2"]["owner"] == "target"
    assert units["tenant=t0"]["phase"] == "rolled_back"

    assert main(["verify", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(u["equal"] for u in report["units"])
    assert_same(read_lance(str(tmp_path / "dst"), "docs"), truth)

    assert main(["cutover", str(cfg), "--units", "tenant=nope"]) == 2
    assert "--units: unknown units ['tenant=nope']" in capsys.readouterr().err

    # A point lost on the target: verify says which unit and which id, and exits 1.
    import lancedb

    lancedb.connect(str(tmp_path / "dst")).open_table("docs").delete("id = 4")
    capsys.readouterr()
    assert main(["verify", str(cfg), "--json"]) == 1
    rows = {u["unit_id"]: u for u in json.loads(capsys.readouterr().out)["units"]}
    bad = [u for u in rows.values() if not u["equal"]]
    assert [u["unit_id"] for u in bad] == ["tenant=t1"] and bad[0]["missing_ids"] == [4]


def test_status_before_any_run_says_so(tmp_path, capsys):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump({
        "migration_id": "never",
        "source": {"kind": "qdrant", "path": "src", "collection": "docs"},
        "target": {"kind": "lancedb", "uri": "dst", "table": "docs"},
        "state_uri": "state"}))
    assert main(["status", str(cfg)]) == 1
    assert "has not started" in capsys.readouterr().err
