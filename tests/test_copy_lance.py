"""LanceDB to LanceDB copy: the direct column-by-column conversion equals the canonical round
trip, and a unit written as fragments with one commit resumes to an exact target wherever it
stopped (fail points stand in for the kills: the process's memory is lost either way, the
checkpoint and the files on disk are what the next attempt finds)."""

from __future__ import annotations

import datetime as dt
import json

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from truth import read_lance, seed_lance_native

from ray_migrate import copy as copy_mod
from ray_migrate import failpoints
from ray_migrate.backends.lance_direct import LanceDirect, direct_ok, relayout
from ray_migrate.backends.lance_layout import NULL_KEYS, to_canonical, to_layout
from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.config import CopyConfig, LanceEndpoint, TransformConfig
from ray_migrate.copy import copy_unit
from ray_migrate.errors import InvalidDataError, TerminalError
from ray_migrate.state import StateStore
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

N = 95


def _backend(uri, table="docs") -> LanceBackend:
    return LanceBackend(LanceEndpoint(kind="lancedb", uri=str(uri), table=table))


def _foreign(n: int = 40, nan: bool = False) -> pa.Table:
    """A table another tool made: many Arrow types, nulls, strings JSON must escape."""
    i = np.arange(n)
    f32 = np.linspace(-1, 1, n, dtype=np.float32)
    if nan:
        f32[7] = np.nan
    tags = [None if k % 5 == 0 else ["a", f"x{k}"][: k % 3] + ([None] if k % 7 == 0 else [])
            for k in range(n)]
    tags[3] = ['say "hi"', "back\\slash", "tab\there", "ü ✓"]
    return pa.table({
        "id": pa.array(i, pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(np.random.default_rng(1).standard_normal(n * 4, dtype=np.float32)), 4),
        "tenant": pa.array([f"t{k % 3}" if k % 4 else None for k in range(n)]),
        "small": pa.array([k if k % 6 else None for k in range(n)], pa.int32()),
        "f32": pa.array(f32, pa.float32()),
        "flag": pa.array([k % 2 == 0 for k in range(n)]),
        "tags": pa.array(tags, pa.list_(pa.string())),
        "big": pa.array([2**63 + k for k in range(n)], pa.uint64()),
        "day": pa.array([dt.date(2024, 1, 1 + k % 28) for k in range(n)]),
        "nested": pa.array([{"a": k, "b": [1.5, None]} if k % 2 else None for k in range(n)]),
    })


def _layouts(tmp_path, data: pa.Table):
    lancedb.connect(str(tmp_path / "src")).create_table("docs", data)
    src = _backend(tmp_path / "src")
    dst = _backend(tmp_path / "dst")
    dst.create(src.describe())
    return src, dst


def test_relayout_equals_the_canonical_round_trip(tmp_path) -> None:
    src, dst = _layouts(tmp_path, _foreign())
    s, d = src._layout(), dst._layout()
    assert direct_ok(s, d)
    for raw, _ in src.scan(UnitSpec("all", "all"), 13, raw=True):  # sliced batches too
        assert relayout(raw, s, d).equals(to_layout(to_canonical(raw, s), d))


def test_relayout_from_an_own_table_keeps_explicit_nulls_and_json(tmp_path) -> None:
    src, dst = _layouts(tmp_path, _foreign())
    copy_unit(UnitSpec("all", "all"), src, dst, Transform(TransformConfig()),
              StateStore(str(tmp_path / "st"), "m"), CopyConfig(batch_size=16))
    dst.upsert(pa.table({"id": pa.array([1, 2], pa.uint64()),
                         "vector": pa.FixedSizeListArray.from_arrays(
                             pa.array(np.ones(8, np.float32)), 4),
                         "payload": ['{"tags":null,"tenant":"t1"}', '{"nested":{"z":[]}}']}))
    again = _backend(tmp_path / "dst2")
    again.create(dst.describe())
    s, d = dst._layout(), again._layout()
    assert s.has_null_keys and s.json_text and direct_ok(s, d)
    for raw, _ in dst.scan(UnitSpec("all", "all"), 11, raw=True):
        want = to_layout(to_canonical(raw, s), d)
        assert relayout(raw, s, d).equals(want)
    nulls = [r for r in dst.tbl.to_arrow().column(NULL_KEYS).to_pylist() if r]
    assert nulls == [["tags"]]


def test_relayout_refuses_nan_by_name_as_the_canonical_way(tmp_path) -> None:
    src, dst = _layouts(tmp_path, _foreign(nan=True))
    raw = next(src.scan(UnitSpec("all", "all"), 100, raw=True))[0]
    with pytest.raises(InvalidDataError, match="payload cannot be JSON"):
        relayout(raw, src._layout(), dst._layout())


# --- fragments and one commit per unit ------------------------------------------------------
@pytest.fixture
def unit_copy(tmp_path, monkeypatch):
    """A fresh target, a source of N points, and a copy in groups of 30 rows (4 groups)."""
    monkeypatch.setattr(copy_mod, "FILE_ROWS", 30)
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(N)))
    source, target = _backend(tmp_path / "src"), _backend(tmp_path / "dst")
    target.create(source.describe())
    store = StateStore(str(tmp_path / "state"), "files")
    cfg = CopyConfig(batch_size=10, workers=1, max_retries=2, retry_backoff_s=0.0)

    def run() -> copy_mod.CopyResult:
        return copy_unit(UnitSpec("all", "all"), source, target, Transform(TransformConfig()),
                         store, cfg, fresh_target=True)

    yield run, target, store
    failpoints.configure(None)


def _stop_at(point: str, **spec) -> None:
    failpoints.configure(json.dumps({point: {"action": "raise", "error": "TerminalError",
                                             "message": f"killed at {point}", **spec}}))


def _exact(tmp_path) -> None:
    found = read_lance(str(tmp_path / "dst"), "docs")  # raises on a duplicate id
    assert sorted(found) == list(range(N))


def test_fragments_make_one_version_per_unit(tmp_path, unit_copy) -> None:
    run, target, store = unit_copy
    before = len(target.tbl.list_versions())
    assert run().copied == N
    _exact(tmp_path)
    assert len(target.tbl.list_versions()) == before + 1
    assert target.tbl.stats()["fragment_stats"]["num_fragments"] == 4  # 30, 30, 30, 5 rows


def test_a_unit_written_as_fragments_asks_lance_for_small_scan_batches(tmp_path, unit_copy,
                                                                      monkeypatch) -> None:
    """A worker's peak memory grew with the scan batch once a unit filled the scan's pipeline
    (issue 15): the fragments' scan reads at most FILES_SCAN_ROWS a batch, whatever the
    configured batch_size (10 here), and the copy is exact."""
    import lance

    run, target, store = unit_copy
    monkeypatch.setattr(copy_mod, "FILES_SCAN_ROWS", 4, raising=False)
    real, asked = lance.LanceDataset.scanner, []

    def recorded(self, *args, **kw):  # the real scanner, its batch size noted
        asked.append(kw.get("batch_size"))
        return real(self, *args, **kw)

    monkeypatch.setattr(lance.LanceDataset, "scanner", recorded)
    assert run().copied == N
    _exact(tmp_path)
    assert asked == [4]
    assert target.tbl.stats()["fragment_stats"]["num_fragments"] == 3  # 32, 32, 31 rows


@pytest.mark.parametrize("point,spec", [
    ("copy.batch_written", {"after": 1}),  # a group's fragments written, not checkpointed
    ("copy.files_written", {}),  # every fragment written and checkpointed, not committed
    ("copy.committed", {}),  # committed, the unit's end not checkpointed
])
def test_a_unit_stopped_anywhere_resumes_to_an_exact_target(tmp_path, unit_copy, point,
                                                            spec) -> None:
    run, target, store = unit_copy
    before = len(target.tbl.list_versions())
    _stop_at(point, **spec)
    with pytest.raises(TerminalError, match=f"killed at {point}"):
        run()
    ckpt = store.load_checkpoint("all")
    assert ckpt["status"] == "copying" and ckpt["fragments"]
    failpoints.configure(None)
    assert run().status == "copied"
    _exact(tmp_path)
    assert len(target.tbl.list_versions()) == before + 1, "the unit committed once"
    assert run().status == "skipped"


def test_a_commit_that_was_made_is_not_made_again(tmp_path) -> None:
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(20)))
    source, target = _backend(tmp_path / "src"), _backend(tmp_path / "dst")
    target.create(source.describe())
    d = LanceDirect(source, target)
    frags = d.write_files(d.rows([b]) for b, _ in d.scan(UnitSpec("all", "all"), 7))
    assert d.commit_files(frags) is True
    assert d.commit_files(frags) is False
    assert sorted(read_lance(str(tmp_path / "dst"), "docs")) == list(range(20))
