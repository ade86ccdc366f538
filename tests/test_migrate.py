"""Congruence: one scenario over the four (source, target) pairs, read back independently.

The chain Qdrant -> LanceDB -> Qdrant also proves the payload round trip the issue asks for.
"""

from __future__ import annotations

import pytest
from truth import assert_same, make_points, read_lance, read_qdrant, seed_qdrant

from ray_migrate.config import parse_config
from ray_migrate.driver import run_migration


def endpoint(kind: str, root, name: str) -> dict:
    if kind == "qdrant":
        return {"kind": "qdrant", "path": str(root / f"q-{name}"), "collection": "docs"}
    return {"kind": "lancedb", "uri": str(root / f"l-{name}"), "table": "docs"}


def migrate(root, mid: str, source: dict, target: dict, **extra):
    cfg = parse_config({
        "migration_id": f"{mid}-{root.name}", "source": source, "target": target,
        "units": extra.pop("units", {"by": "tenant", "field": "tenant"}),
        "copy": {"batch_size": 64, "workers": 2}, "cutover": {"pause_s": 0},
        "state_uri": str(root / "state"), **extra})
    report = run_migration(cfg)
    assert report.ok, report.to_table()
    return cfg, report


def read(ep: dict):
    if ep["kind"] == "qdrant":
        return read_qdrant(ep["path"], ep["collection"])
    return read_lance(ep["uri"], ep["table"])


@pytest.fixture(scope="module", params=["int", "uuid"])
def chain(request, ray_cluster, tmp_path_factory):
    """Seed a Qdrant source with qdrant-client; migrate it to LanceDB (tenant units)."""
    root = tmp_path_factory.mktemp(f"chain-{request.param}")
    truth = make_points(150, request.param)
    src = endpoint("qdrant", root, "src")
    seed_qdrant(src["path"], "docs", truth)
    lance = endpoint("lancedb", root, "mid")
    _, report = migrate(root, "q2l", src, lance)
    return {"root": root, "truth": truth, "src": src, "lance": lance, "report": report}


def test_qdrant_to_lancedb(chain):
    assert_same(read(chain["lance"]), chain["truth"])
    rows = {u.unit_id: u for u in chain["report"].units}
    assert sorted(rows) == ["tenant=t0", "tenant=t1", "tenant=t2"]
    assert sum(u.target_count for u in rows.values()) == len(chain["truth"])


def test_lancedb_to_qdrant_round_trip_equals_the_original(chain):
    dst = endpoint("qdrant", chain["root"], "back")
    migrate(chain["root"], "l2q", chain["lance"], dst, units={"by": "id_range", "count": 4})
    assert_same(read(dst), chain["truth"])


def test_qdrant_to_qdrant(chain):
    dst = endpoint("qdrant", chain["root"], "q2q")
    migrate(chain["root"], "q2q", chain["src"], dst, units={"by": "id_range", "count": 3})
    assert_same(read(dst), chain["truth"])


def test_lancedb_to_lancedb_with_renames(chain):
    dst = endpoint("lancedb", chain["root"], "l2l")
    migrate(chain["root"], "l2l", chain["lance"], dst,
            transform={"rename_vectors": {"text": "body"}, "rename_fields": {"rank": "pos"}})
    found = read(dst)
    renamed = {pid: {"vectors": p["vectors"],
                     "payload": {("pos" if k == "rank" else k): v
                                 for k, v in p["payload"].items()}}
               for pid, p in chain["truth"].items()}
    assert_same(found, renamed, rename_vectors={"text": "body"})


def test_rerun_of_a_finished_migration_changes_nothing(chain):
    import lancedb

    tbl = lancedb.connect(chain["lance"]["uri"]).open_table("docs")
    version = tbl.version
    cfg = parse_config({
        "migration_id": f"q2l-{chain['root'].name}", "source": chain["src"],
        "target": chain["lance"],
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 64, "workers": 3},  # another worker count is fine
        "cutover": {"pause_s": 0},
        "state_uri": str(chain["root"] / "state")})
    report = run_migration(cfg)
    assert report.ok, report.to_table()
    assert {u.status for u in report.units} == {"skipped"}
    assert report.total_copied_now == 0
    tbl = lancedb.connect(chain["lance"]["uri"]).open_table("docs")
    assert tbl.version == version, "a finished migration must not write again"
    assert_same(read(chain["lance"]), chain["truth"])
