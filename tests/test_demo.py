"""`ray-migrate demo`, the README's first command: a small run end to end, and its work folder
rules (it replaces only a folder it made)."""

from __future__ import annotations

import numpy as np
import pytest
from truth import read_lance

from ray_migrate.cli import main
from ray_migrate.demo import MARKER, fresh_workdir, synthetic_points
from ray_migrate.errors import ConfigError


def test_the_demo_migrates_under_traffic_with_no_client_error(ray_cluster, tmp_path, capsys):
    work = tmp_path / "demo"
    n, tenants, dim = 900, 3, 8
    assert main(["demo", "--workdir", str(work), "--points", str(n), "--tenants",
                 str(tenants), "--dim", str(dim), "--traffic-s", "1"]) == 0
    out = capsys.readouterr().out
    assert "longest freeze" in out and "errors" in out, out[-2000:]

    # The target, read with lancedb: every seeded point bit for bit (the demo's traffic
    # writes and deletes only ids of its own, from n up), and nothing else below n.
    found = read_lance(str(work / "lance"), "docs")
    seeded = {pid: (vec, payload) for pid, vec, payload in synthetic_points(n, tenants, dim)}
    assert {pid for pid in found if pid < n} == set(seeded)
    for pid, (vec, payload) in seeded.items():
        vecs, got = found[pid]
        assert vecs == {"vector": np.asarray(vec, np.float32).tobytes()}, pid
        assert got == payload, (pid, got, payload)
    assert len(found) > n, "the demo's writer added points during the run"

    # A second run may replace the folder the first one made.
    fresh_workdir(work)
    assert sorted(p.name for p in work.iterdir()) == [MARKER]


def test_the_demo_refuses_a_workdir_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    assert main(["demo", "--workdir", str(mine), "--points", "10"]) == 2
    err = capsys.readouterr().err
    assert "--workdir" in err and MARKER in err and "give a new or empty folder" in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"], "nothing written or removed"
    assert (mine / "keep.txt").read_text() == "precious"

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="--workdir"):
        fresh_workdir(a_file)
    assert a_file.read_text() == "x"

    empty = tmp_path / "empty"
    empty.mkdir()
    fresh_workdir(empty)  # an empty folder is fine
    assert sorted(p.name for p in empty.iterdir()) == [MARKER]
