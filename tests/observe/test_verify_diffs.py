"""Verify names every differing id: 300 differences made in the target with lancedb itself
(corrupted vectors, changed payload values, deleted points, extra points, in two units) are
each listed by `ray-migrate verify --json`, which exits 1; past ``INLINE_IDS`` the full lists
are in a file under the migration's state and the JSON keeps counts and the file's path."""

from __future__ import annotations

import json

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from truth import make_points, seed_qdrant, write_q2l_config

from ray_migrate import verify
from ray_migrate.cli import main

PER_KIND = {"t0": (40, 40, 40, 30), "t1": (55, 55, 20, 20)}  # vector, payload, delete, extra


def damage(uri: str) -> dict[str, dict[str, list[int]]]:
    """Make the differences with the engine's own client; returns what each unit should list."""
    tbl = lancedb.connect(uri).open_table("docs")
    data = tbl.to_arrow()
    want: dict[str, dict[str, list[int]]] = {}
    next_id = 100_000
    for tenant, (n_vec, n_pay, n_del, n_extra) in PER_KIND.items():
        rows = data.filter(pc.equal(data.column("tenant"), tenant)).sort_by("id")
        ids = rows.column("id").to_pylist()
        vec_ids = ids[:n_vec]
        pay_ids = ids[n_vec:n_vec + n_pay]
        del_ids = ids[n_vec + n_pay:n_vec + n_pay + n_del]
        # one vector corrupted: one float changed in each of these points
        part = rows.filter(pc.is_in(rows.column("id"), pa.array(vec_ids)))
        vecs = np.asarray(part.column("text").to_pylist(), np.float32)
        vecs[:, 0] += 0.5
        part = part.set_column(part.schema.get_field_index("text"), "text", pa.FixedSizeListArray
                               .from_arrays(pa.array(vecs.ravel()), vecs.shape[1]))
        tbl.merge_insert("id").when_matched_update_all().execute(part)
        # one payload value changed
        part = rows.filter(pc.is_in(rows.column("id"), pa.array(pay_ids)))
        part = part.set_column(part.schema.get_field_index("rank"), "rank",
                               pc.add(part.column("rank"), 1000))
        tbl.merge_insert("id").when_matched_update_all().execute(part)
        tbl.delete(f"id IN ({', '.join(map(str, del_ids))})")
        extra = rows.slice(0, n_extra)
        extra_ids = list(range(next_id, next_id + n_extra))
        next_id += n_extra
        tbl.add(extra.set_column(0, "id", pa.array(extra_ids, extra.schema.field("id").type)))
        want[f"tenant={tenant}"] = {"changed_ids": sorted(vec_ids + pay_ids, key=str),
                                    "missing_ids": sorted(del_ids, key=str),
                                    "extra_ids": sorted(extra_ids, key=str)}
    assert sum(len(v) for w in want.values() for v in w.values()) == 300
    return want


def test_verify_names_every_differing_id(ray_cluster, tmp_path, capsys, monkeypatch):
    seed_qdrant(str(tmp_path / "src"), "docs", make_points(600))
    cfg = write_q2l_config(tmp_path, f"diffs-{tmp_path.name}", cutover={"mode": "manual"})
    assert main(["run", str(cfg)]) == 0
    want = damage(str(tmp_path / "dst"))
    capsys.readouterr()

    # Every id in the JSON (300 < INLINE_IDS), counted, and the untouched unit equal.
    assert main(["verify", str(cfg), "--json"]) == 1
    rows = {u["unit_id"]: u for u in json.loads(capsys.readouterr().out)["units"]}
    assert rows["tenant=t2"]["check"] == "equal"
    for uid, lists in want.items():
        assert rows[uid]["check"] == "DIFFERENT"
        for key, ids in lists.items():  # 110 changed in t1: no cap of 100
            assert rows[uid][key] == ids, (uid, key)
    for uid, lists in want.items():
        for key, ids in lists.items():
            assert rows[uid][key.replace("_ids", "_count")] == len(ids)
        assert rows[uid]["ids_file"] is None

    # Past INLINE_IDS: counts and the first ids in the JSON, every id in the file; the
    # table on stdout gives the counts and the file.
    monkeypatch.setattr(verify, "INLINE_IDS", 100)
    assert main(["verify", str(cfg), "--json"]) == 1
    rows = {u["unit_id"]: u for u in json.loads(capsys.readouterr().out)["units"]}
    for uid, lists in want.items():
        row = rows[uid]
        assert row["ids_file"].startswith(str(tmp_path / "state"))
        assert "/verify/" in row["ids_file"]
        with open(row["ids_file"]) as f:
            spilled = json.load(f)
        for key, ids in lists.items():
            assert spilled[key] == ids, (uid, key)
            assert row[key.replace("_ids", "_count")] == len(ids)
            assert row[key] == ids[:verify.KEPT_IDS]
    assert main(["verify", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "missing 40, extra 30, changed 80" in out and "missing 20, extra 20, changed 110" in out
    assert "every differing id (20 missing, 20 extra, 110 changed) is in" in out
