"""Query parity and the min_recall gate.

A faithful copy has recall@k 1 on both sides (Qdrant local and LanceDB both search exactly
here) in the dot and the l2 space; a target whose vectors were changed with lancedb itself
after the copy misses true neighbours: its recall is below 1 and, at ``min_recall: 1.0``, the
unit is not cut over (run exits 1, status and the report say why), nor by a manual cutover.
"""

from __future__ import annotations

import json

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from truth import make_points, seed_qdrant, write_q2l_config

from ray_migrate.cli import main

PARITY_KEYS = {"recall_at_k_source", "recall_at_k_target", "overlap_at_k", "p95_ms_source",
               "p95_ms_target", "k", "queries"}


def write_cfg(tmp_path, **extra) -> str:
    return str(write_q2l_config(tmp_path, f"parity-{tmp_path.name}", **extra))


def perturb(uri: str, tenant: str, share: float = 0.5) -> None:
    """Give a share of the tenant's target points other ``text`` vectors (lancedb itself)."""
    tbl = lancedb.connect(uri).open_table("docs")
    data = tbl.to_arrow()
    rows = data.filter(pc.equal(data.column("tenant"), tenant)).sort_by("id")
    part = rows.slice(0, int(rows.num_rows * share))
    vecs = np.random.default_rng(7).standard_normal((part.num_rows, 8)).astype(np.float32)
    part = part.set_column(part.schema.get_field_index("text"), "text",
                           pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8))
    tbl.merge_insert("id").when_matched_update_all().execute(part)


def units_of(capsys) -> dict[str, dict]:
    return {u["unit_id"]: u for u in json.loads(capsys.readouterr().out)["units"]}


def test_parity_and_the_recall_gate(ray_cluster, tmp_path, capsys):
    seed_qdrant(str(tmp_path / "src"), "docs", make_points(300))
    parity = {"parity": {"queries": 20, "k": 5}}
    cfg = write_cfg(tmp_path, cutover={"mode": "manual"}, verify=parity)
    assert main(["run", cfg]) == 0

    # A faithful copy: recall 1 on both sides, the same answers (dot, the first vector).
    capsys.readouterr()
    assert main(["verify", cfg, "--json"]) == 0
    for row in units_of(capsys).values():
        p = row["parity"]
        assert PARITY_KEYS <= set(p) and (p["k"], p["queries"]) == (5, 20)
        assert p["recall_at_k_source"] == p["recall_at_k_target"] == p["overlap_at_k"] == 1.0
        assert p["unfiltered"]["recall_at_k_target"] == 1.0
        assert p["p95_ms_source"] > 0 and p["p95_ms_target"] > 0
    # The l2 vector, with --parity and no verify.parity in the config.
    l2 = write_cfg(tmp_path, cutover={"mode": "manual"}, verify={"parity": {"vector": "image"}})
    assert main(["verify", l2, "--parity", "--json"]) == 0
    assert all(r["parity"]["recall_at_k_target"] == 1.0 for r in units_of(capsys).values())

    # The target loses true neighbours of tenant t0: parity sees it.
    perturb(str(tmp_path / "dst"), "t0")
    plain = write_cfg(tmp_path, cutover={"mode": "manual"})
    assert main(["verify", plain, "--parity", "--json"]) == 1  # the checksums differ too
    rows = units_of(capsys)
    assert rows["tenant=t0"]["parity"]["recall_at_k_target"] < 1.0
    assert rows["tenant=t0"]["parity"]["overlap_at_k"] < 1.0
    assert rows["tenant=t0"]["parity"]["recall_at_k_source"] == 1.0
    assert rows["tenant=t1"]["parity"]["recall_at_k_target"] == 1.0

    # min_recall 1.0 (verify off, so nothing repairs the target first): t0 stays on the
    # source with the reason in status and the report, the others go, run exits 1.
    gated = write_cfg(tmp_path, verify={"enabled": False, **parity},
                      cutover={"mode": "auto", "waves": ["100%"], "pause_s": 0,
                               "gates": {"min_recall": 1.0, "max_p95_ratio": 2.0,
                                         "max_error_rate": 0.001}})
    capsys.readouterr()
    assert main(["run", gated]) == 1
    out = capsys.readouterr().out
    assert "min_recall" in out
    assert main(["status", gated, "--json"]) == 0
    status = {u["unit"]: u for u in json.loads(capsys.readouterr().out)["units"]}
    assert status["tenant=t0"]["owner"] == "source"
    assert "below cutover.gates.min_recall 1.0" in status["tenant=t0"]["last_error"]
    assert status["tenant=t1"]["owner"] == status["tenant=t2"]["owner"] == "target"
    report = json.loads((tmp_path / "state" / f"parity-{tmp_path.name}" / "report.json")
                        .read_text())
    row = next(u for u in report["units"] if u["unit_id"] == "tenant=t0")
    assert row["status"] == "failed" and "min_recall" in row["error"]
    assert row["parity"]["recall_at_k_target"] < 1.0

    # A manual cutover is refused by the same gate.
    assert main(["cutover", gated, "--units", "tenant=t0"]) == 1
    assert "min_recall" in capsys.readouterr().out
    assert main(["status", gated, "--json"]) == 0
    status = {u["unit"]: u for u in json.loads(capsys.readouterr().out)["units"]}
    assert status["tenant=t0"]["owner"] == "source"


def test_parity_of_a_re_embedding_over_id_ranges(ray_cluster, tmp_path, capsys):
    """Cosine, id_range units (searched within their id range), and a transform.function that
    changes the vectors: the target is judged in its own space (recall 1), and the answers of
    the two models differ (overlap below 1)."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path / "src"))
    client.create_collection("docs", vectors_config={"vector": models.VectorParams(
        size=8, distance=models.Distance.COSINE)})
    vecs = np.random.default_rng(3).standard_normal((240, 8)).astype(np.float32)
    client.upsert("docs", [models.PointStruct(id=i + 1, vector={"vector": v.tolist()},
                                              payload={"n": i})
                           for i, v in enumerate(vecs)])
    client.close()
    cfg = write_cfg(tmp_path, units={"by": "id_range", "count": 2},
                    transform={"function": "rm_test_transforms:toy_embed"},
                    cutover={"mode": "manual"}, verify={"parity": {"queries": 15, "k": 5}})
    assert main(["run", cfg]) == 0
    capsys.readouterr()
    assert main(["verify", cfg, "--json"]) == 0
    rows = units_of(capsys)
    assert len(rows) == 2
    for row in rows.values():
        p = row["parity"]
        assert p["recall_at_k_source"] == p["recall_at_k_target"] == 1.0, p
        assert p["overlap_at_k"] < 1.0, p


def test_gates_parse_and_min_recall_needs_parity():
    import pytest
    from pydantic import ValidationError

    from ray_migrate.config import MigrationConfig

    base = {"migration_id": "g", "state_uri": "s",
            "source": {"kind": "qdrant", "path": "src", "collection": "docs"},
            "target": {"kind": "lancedb", "uri": "dst", "table": "docs"}}
    cfg = MigrationConfig(**base)
    assert cfg.verify.parity is None and cfg.cutover.gates.min_recall is None  # off by default
    gates = {"min_recall": 0.95, "max_p95_ratio": 2.0, "max_error_rate": 0.001}
    cfg = MigrationConfig(**base, verify={"parity": {}}, cutover={"gates": gates})
    assert (cfg.verify.parity.queries, cfg.verify.parity.k) == (50, 10)
    assert cfg.cutover.gates.max_p95_ratio == 2.0
    with pytest.raises(ValidationError, match="min_recall: recall is measured by query parity"):
        MigrationConfig(**base, cutover={"gates": {"min_recall": 0.9}})
    with pytest.raises(ValidationError, match="min_recall"):
        MigrationConfig(**base, verify={"parity": {}}, cutover={"gates": {"min_recall": 1.5}})


def test_parity_searches_through_the_targets_index(ray_cluster, tmp_path, capsys):
    """A LanceDB target indexed with IVF_PQ after the copy: parity goes through the index, so
    the target's recall is what its users get (below the exact source's), and min_recall
    keeps such a unit on the source."""
    seed_qdrant(str(tmp_path / "src"), "docs", make_points(600, tenants=1))
    cfg = write_cfg(tmp_path, cutover={"mode": "manual"}, verify={"parity": {"queries": 30}},
                    lance={"index_min_rows": 256, "index_type": "IVF_PQ"})
    assert main(["run", cfg]) == 0
    capsys.readouterr()
    assert main(["verify", cfg, "--json"]) == 0
    p = units_of(capsys)["tenant=t0"]["parity"]
    assert p["recall_at_k_source"] == 1.0 and p["recall_at_k_target"] < 1.0, p


def test_a_unit_larger_than_the_bound_is_measured_on_its_first_points(tmp_path):
    """No Ray: the bound on the brute force is reported (``bounded``), with the points read."""
    from truth import seed_lance_native

    from ray_migrate.backends import open_backend
    from ray_migrate.config import LanceEndpoint, TransformConfig
    from ray_migrate.parity import unit_parity
    from ray_migrate.transform import Transform
    from ray_migrate.units import UnitSpec

    seed_lance_native(str(tmp_path / "l"), "docs", list(range(1, 301)))
    side = open_backend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "l"), table="docs"))
    unit = UnitSpec("tenant=t0", "tenant", field="tenant", value="t0")
    whole = unit_parity(unit, side, side, Transform(TransformConfig()), ("vector", "l2", "l2"),
                        queries=10, k=5)
    assert whole is not None and not whole.bounded and whole.exact_points == 150
    assert whole.recall_at_k_source == whole.recall_at_k_target == whole.overlap_at_k == 1.0
    part = unit_parity(unit, side, side, Transform(TransformConfig()), ("vector", "l2", "l2"),
                       queries=10, k=5, limit=60)
    assert part is not None and part.bounded and part.exact_points == 60
