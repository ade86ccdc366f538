"""Bad input and exit codes, as a user meets them: through the CLI.

Each kind of bad input is one test id (the README's table names them): ``plan``, ``run`` and
``verify`` all exit 2 with a short message on stderr that names the field or value at fault
and the fix, print no traceback, and write nothing to the source, the target or the state
(every file under the test's folder is the same before and after, by path, size and hash;
a folder that did not exist still does not). These need no Ray: the checks run before Ray
starts. Then what is not exit 2 by nature: a transform function that raises (exit 1, its unit
failed with the reason), the client's bad points (an error to the application, nothing
written), and exit 3 (the cluster could not run it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml
from truth import make_points, read_lance, seed_lance_native, seed_qdrant

from ray_migrate.cli import main

VERBS = ("plan", "run", "verify")
CLI = shutil.which("ray-migrate", path=os.path.dirname(sys.executable)) or "ray-migrate"


# --- helpers ----------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: relative path -> (size, sha256). Folders count too (empty)."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = (0, "")
        for name in filenames:
            data = Path(dirpath, name).read_bytes()
            out[os.path.join(rel, name)] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lance_src(root: Path) -> dict[str, Any]:
    seed_lance_native(str(root / "src"), "docs", list(range(20)))  # tenant, n; dim 8
    return {"kind": "lancedb", "uri": str(root / "src"), "table": "docs"}


def qdrant_src(root: Path) -> dict[str, Any]:
    seed_qdrant(str(root / "src"), "docs", make_points(10))  # vectors text[8, dot], image[4]
    return {"kind": "qdrant", "path": str(root / "src"), "collection": "docs"}


def lance_dst(root: Path) -> dict[str, Any]:
    return {"kind": "lancedb", "uri": str(root / "dst"), "table": "docs"}


def qdrant_dst(root: Path) -> dict[str, Any]:
    return {"kind": "qdrant", "path": str(root / "dst"), "collection": "docs"}


def config(root: Path, source: dict | None = None, target: dict | None = None,
           **over: Any) -> dict[str, Any]:
    raw = {"migration_id": "bad-input", "source": source or lance_src(root),
           "target": target or lance_dst(root), "units": {"by": "id_range", "count": 2},
           "copy": {"batch_size": 10, "workers": 1}, "cutover": {"pause_s": 0},
           "state_uri": str(root / "state")}
    raw.update(over)
    return raw


def lance_table(root: Path, **cols: Any) -> None:
    """A LanceDB target table made by hand: 2 rows, the given columns."""
    import lancedb

    lancedb.connect(str(root / "dst")).create_table("docs", pa.table(
        {"id": pa.array([1, 2], pa.int64()), **cols}))


def vecs(dim: int, n: int = 2) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n * dim, np.float32)), dim)


def qdrant_target(root: Path, **change: Any) -> None:
    """A Qdrant target like the Qdrant source (text[8, dot], image[4, euclid]) but for one
    change of the text vector: its size, distance or name."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(root / "dst"))
    vectors = {"image": models.VectorParams(size=4, distance=models.Distance.EUCLID),
               change.get("name", "text"): models.VectorParams(
                   size=change.get("size", 8), distance=change.get("distance", "Dot"))}
    client.create_collection("docs", vectors_config=vectors)
    client.close()


def lance_own_target(root: Path, distance: str) -> None:
    """A LanceDB target as ray_migrate makes one (it records the metric)."""
    from ray_migrate.backends.lancedb import LanceBackend
    from ray_migrate.config import LanceEndpoint
    from ray_migrate.schema import CollectionInfo, VectorSpec

    LanceBackend(LanceEndpoint(**lance_dst(root))).create(CollectionInfo(
        "docs", (VectorSpec("vector", 8, distance),), "int",
        payload_schema={"tenant": "string", "n": "int"}))


def empty_lance(root: Path) -> dict[str, Any]:
    import lancedb

    lancedb.connect(str(root / "src")).create_table("docs", pa.table(
        {"id": pa.array([], pa.int64()), "vector": vecs(8, 0)}))
    return {"kind": "lancedb", "uri": str(root / "src"), "table": "docs"}


def empty_qdrant(root: Path) -> dict[str, Any]:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(root / "src"))
    client.create_collection("docs", vectors_config=models.VectorParams(size=4,
                                                                        distance="Dot"))
    client.close()
    return {"kind": "qdrant", "path": str(root / "src"), "collection": "docs"}


def with_target(make: Callable[[Path], None], source: Callable[[Path], dict],
                target: Callable[[Path], dict]) -> Callable[[Path], dict]:
    def setup(root: Path) -> dict:
        make(root)
        return config(root, source(root), target(root))
    return setup


# --- the kinds of bad input -------------------------------------------------------------------
# id -> (setup: tmp folder -> config dict or YAML text, what stderr must say: the field or value
# at fault and the fix)
CLOSED = free_port()
BAD: dict[str, tuple[Callable[[Path], Any], list[str]]] = {
    "empty-config-file": (lambda r: "", ["is empty", "write the migration in it"]),
    "yaml-syntax": (lambda r: "migration_id: x\nsource: [unclosed\nstate_uri: s\n",
                    ["is not valid YAML at line 3, column 10", "fix the syntax there"]),
    "migration-id-with-spaces": (lambda r: config(r, migration_id="docs to lance"),
                                 ["'docs to lance' is not a valid migration_id",
                                  "use letters, digits"]),
    "source-equals-target": (lambda r: config(r, *[lance_src(r)] * 2),
                             ["source and target are the same collection",
                              "point target at another"]),
    "target-other-dimension-lancedb": (with_target(
        lambda r: lance_table(r, vector=vecs(5)), lance_src, lance_dst),
        ["target:", "dimension 5, the source has 8", "point target at a new"]),
    "target-other-dimension-qdrant": (with_target(
        lambda r: qdrant_target(r, size=9), qdrant_src, qdrant_dst),
        ["target:", "vector 'text': target dimension 9, source dimension 8",
         "point target at a new"]),
    "target-other-metric-lancedb": (with_target(
        lambda r: lance_own_target(r, "cosine"), lance_src, lance_dst),
        ["target:", "uses distance cosine, the source uses l2", "point target at a new"]),
    "target-other-metric-qdrant": (with_target(
        lambda r: qdrant_target(r, distance="Cosine"), qdrant_src, qdrant_dst),
        ["target:", "target distance cosine, source distance dot", "point target at a new"]),
    "target-other-vector-name-lancedb": (with_target(
        lambda r: lance_table(r, emb=vecs(8)), lance_src, lance_dst),
        ["target:", "vector 'vector' has no column", "point target at a new"]),
    "target-other-vector-name-qdrant": (with_target(
        lambda r: qdrant_target(r, name="other"), qdrant_src, qdrant_dst),
        ["target:", "has no vector 'text'", "point target at a new"]),
    "target-other-column-type-lancedb": (with_target(
        lambda r: lance_table(r, vector=vecs(8), tenant=pa.array([1, 2], pa.int64()),
                            n=pa.array([1, 2], pa.int64())),
        lance_src, lance_dst),
        ["target:", "payload key 'tenant'", "holds int, the source has string",
         "point target at a new"]),
    "empty-source-lancedb": (lambda r: config(r, empty_lance(r)),
                             ["source: 'docs'", "is empty (0 points)", "check source's"]),
    "empty-source-qdrant": (lambda r: config(r, empty_qdrant(r)),
                            ["source: 'docs'", "is empty (0 points)", "check source's"]),
    "missing-source-folder": (lambda r: config(r, {"kind": "qdrant", "path": str(r / "nope"),
                                                   "collection": "docs"}),
                              ["source.path:", "nope' does not exist", "point source.path at"]),
    "missing-source-table": (lambda r: config(r, dict(lance_src(r), table="nope")),
                             ["source.table: 'nope' does not exist", "check its name"]),
    "units-count-0": (lambda r: config(r, units={"by": "id_range", "count": 0}),
                      ["units.count: 0 is out of range; set it >= 1"]),
    "copy-workers-0": (lambda r: config(r, copy={"workers": 0}),
                       ["copy.workers: 0 is out of range; set it >= 1"]),
    "waves-shrinking-shares": (lambda r: config(r, cutover={"waves": ["50%", "25%"]}),
                               ["cutover.waves:", "are not cumulative",
                                "must be larger than the one before"]),
    "waves-shrinking-counts": (lambda r: config(r, cutover={"waves": [3, 2]}),
                               ["cutover.waves:", "are not cumulative",
                                "must be larger than the one before"]),
    "waves-over-100%": (lambda r: config(r, cutover={"waves": [1, "150%"]}),
                        ["cutover.waves:", "wave '150%'", "at most \"100%\""]),
    "negative-pause": (lambda r: config(r, cutover={"pause_s": -1}),
                       ["cutover.pause_s: -1 is out of range; set it >= 0"]),
    "max-freeze-0": (lambda r: config(r, cutover={"max_freeze_ms": 0}),
                     ["cutover.max_freeze_ms: 0 is out of range; set it >= 1"]),
    "rename-onto-existing-field": (lambda r: config(r, transform={"rename_fields": {
        "n": "tenant"}}), ["transform.rename_fields: 'n' -> 'tenant'",
                           "the source already has a field 'tenant'",
                           "rename onto a name the source does not use"]),
    "rename-onto-existing-vector": (lambda r: config(r, qdrant_src(r), lance_dst(r), transform={
        "rename_vectors": {"image": "text"}}), ["transform.rename_vectors: 'image' -> 'text'",
                                                "the source already has a vector 'text'"]),
    "transform-raises-on-the-sample": (lambda r: config(r, transform={
        "function": "rm_test_transforms:refuse_all"}),
        ["transform.function: rm_test_transforms:refuse_all raised ValueError: the embedding "
         "service is not configured", "fix the function"]),
    "rollback-without-inverse": (lambda r: config(r, rollback={"window_s": 60}, transform={
        "function": "rm_test_transforms:scale_up"}),
        ["rollback.window_s: the transform cannot be inverted",
         "set rollback.window_s: 0 or declare the inverse"]),
    "url-and-path": (lambda r: config(r, {"kind": "qdrant", "collection": "docs",
                                          "path": str(r / "src"), "url": "http://x:6333"}),
                     ["source", "give exactly one of path (Qdrant local mode folder) or url"]),
    "api-key-with-path": (lambda r: config(r, {"kind": "qdrant", "collection": "docs",
                                               "path": str(r / "src"), "api_key": "k"}),
                          ["source", "api_key only applies to url; remove it"]),
    "unreachable-url": (lambda r: config(r, {
        "kind": "qdrant", "collection": "docs", "url": f"http://127.0.0.1:{CLOSED}",
        "timeout_s": 2}), [f"source.url: cannot reach Qdrant at 'http://127.0.0.1:{CLOSED}' "
                           "within timeout_s=2", "check the address"]),
    "state-uri-unknown-scheme": (lambda r: config(r, state_uri="foo://x/y"),
                                 ["state_uri: scheme 'foo'", "is not supported",
                                  "one of: file://, s3://, gs://"]),
    "unknown-kind": (lambda r: config(r, target={"kind": "pinecone2", "uri": "x",
                                                 "table": "docs"}),
                     ["target: kind 'pinecone2' is not supported",
                      "kind must be one of: qdrant, lancedb"]),
    "no-kind": (lambda r: config(r, target={"uri": "x", "table": "docs"}),
                ["target: kind is required; kind must be one of: qdrant, lancedb"]),
    "state-under-a-file": (lambda r: (r / "plain-file").write_text("a file") and config(
        r, state_uri=str(r / "plain-file" / "state")),
        ["state_uri:", "plain-file' is a file, not a folder",
         "point state_uri at a folder"]),
}


def write_config(root: Path, setup: Callable[[Path], Any]) -> Path:
    raw = setup(root)
    path = root / "m.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input(tmp_path, capsys, kind):
    """plan, run and verify: exit 2, the field and the fix on stderr, nothing written."""
    setup, said = BAD[kind]
    path = write_config(tmp_path, setup)
    before = snapshot(tmp_path)
    for verb in VERBS:
        began = time.monotonic()
        code = main([verb, str(path)])
        err = capsys.readouterr().err
        assert code == 2, f"{verb}: exit {code}\n{err}"
        assert "Traceback" not in err, err
        for text in said:
            assert text in err, f"{verb}: {text!r} not in:\n{err}"
        assert len(err.strip().splitlines()) <= 4, f"{verb}: not short:\n{err}"
        if kind == "unreachable-url":
            assert time.monotonic() - began < 2 + 8, f"{verb}: not within about timeout_s"
        assert snapshot(tmp_path) == before, f"{verb} wrote something"
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("kind", ["yaml-syntax", "state-uri-unknown-scheme"])
def test_bad_input_through_the_console_script(tmp_path, kind):
    """The installed ``ray-migrate`` entry point exits 2 the same way, with no traceback."""
    setup, said = BAD[kind]
    path = write_config(tmp_path, setup)
    before = snapshot(tmp_path)
    for verb in VERBS:
        proc = subprocess.run([CLI, verb, str(path)], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and all(t in proc.stderr for t in said), \
            proc.stderr
    assert snapshot(tmp_path) == before


# --- exit 1: a transform function that raises on a batch --------------------------------------
def test_a_transform_that_raises_fails_its_unit_with_the_reason(ray_cluster, tmp_path, capsys):
    """Its unit is failed in ``status`` and the report, with the exception's message; the
    batch it raised on is not written; the other unit is cut over; ``run`` exits 1."""
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(200)))
    src = {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"}
    raw = config(tmp_path, src, migration_id="refuse", transform={
        "function": "rm_test_transforms:refuse_113"}, copy={"batch_size": 10, "workers": 2})
    path = write_config(tmp_path, lambda r: raw)
    reason = "the embedding service refused point 113: quota exceeded"
    assert main(["run", str(path)]) == 1
    out = capsys.readouterr()
    assert reason in out.out and "Traceback" not in out.err, out.out
    report = json.loads((tmp_path / "state" / "refuse" / "report.json").read_text())
    failed = [u for u in report["units"] if u["status"] == "failed"]
    assert len(failed) == 1 and reason in failed[0]["error"], report["units"]
    assert main(["status", str(path), "--json"]) == 0
    rows = {r["unit"]: r for r in json.loads(capsys.readouterr().out)["units"]}
    bad = rows[failed[0]["unit_id"]]
    assert bad["phase"] == "failed" and reason in bad["last_error"], bad
    assert main(["status", str(path)]) == 0
    assert reason in capsys.readouterr().out
    found = read_lance(str(tmp_path / "dst"), "docs")
    assert set(range(110, 120)).isdisjoint(found), "the batch it raised on is not written"
    other = [u for u in rows.values() if u["unit"] != bad["unit"]]
    # A failed unit stops alone: the other one is cut over (test_flaky.py's live run too).
    assert [u["phase"] for u in other] == ["done"] and set(range(100)) <= set(found)


# --- the client's bad points ------------------------------------------------------------------
GOOD = {"tenant": "t0"}
BAD_POINTS = {
    "wrong-dimension": ([{"id": 100, "vector": [0.1] * 5, "payload": GOOD}],
                        ["point 100", "shape (5,); expected (8,)"]),
    "nan-vector": ([{"id": 101, "vector": [float("nan")] + [0.1] * 7, "payload": GOOD}],
                   ["point 101", "NaN"]),
    "nan-beside-a-good-point": ([{"id": 102, "vector": [0.1] * 8, "payload": GOOD},
                                 {"id": 103, "vector": [0.1] * 7 + [float("inf")]}],
                                ["point 103", "NaN or infinity"]),
    "negative-id": ([{"id": -3, "vector": [0.1] * 8}], ["id -3", "0..2**64-1"]),
    "id-over-uint64": ([{"id": 2**64, "vector": [0.1] * 8}],
                       [f"id {2**64}", "0..2**64-1"]),
    "string-id-for-integer-ids": ([{"id": "doc-7", "vector": [0.1] * 8}],
                                  ["id 'doc-7'", "unsigned integer ids"]),
    "missing-vector": ([{"id": 104, "payload": GOOD}], ["point 104", "vector 'vector' is "
                                                                    "missing"]),
}


def test_bad_points_are_refused_before_anything_is_written(ray_cluster, tmp_path):
    """Each bad upsert raises InvalidPointError (a ValueError) naming the id and the fault,
    and writes nothing to either side (read with LanceDB's own client); the write lease is
    not held: a good write goes through and the unit still cuts over."""
    from ray_migrate.client import RoutedCollection
    from ray_migrate.config import parse_config
    from ray_migrate.errors import InvalidPointError
    from ray_migrate.migration import Migration
    from ray_migrate.waves import switch_units

    mid = f"points-{tmp_path.name}"[:60]
    cfg = parse_config(config(tmp_path, migration_id=mid,  # 20 points, ids 0..19 units={"by": "id_range", "count": 1},
                              cutover={"mode": "manual", "pause_s": 0}))
    m = Migration(cfg)
    m.start()
    try:
        m.prepare_units()
        coll = RoutedCollection.connect(mid)
        try:
            for kind, (points, said) in BAD_POINTS.items():
                with pytest.raises(InvalidPointError) as exc:
                    coll.upsert(points)
                assert isinstance(exc.value, ValueError)
                assert all(t in str(exc.value) for t in said), (kind, str(exc.value))
            coll.upsert([{"id": 500, "vector": [0.5] * 8, "payload": GOOD}])
            assert switch_units(m, None, "cutover")["range-0000"]["ok"]
            coll.upsert([{"id": 501, "vector": [0.5] * 8, "payload": GOOD}])
        finally:
            coll.close()
    finally:
        m.close()
    src, dst = read_lance(str(tmp_path / "src"), "docs"), read_lance(str(tmp_path / "dst"),
                                                                     "docs")
    # 501 was written after the cutover: the rollback window's sync back may have copied it
    assert set(src) - {501} == set(range(20)) | {500}, "bad points are not on the source"
    assert set(dst) == set(range(20)) | {500, 501}, "bad points are not on the target"


# --- exit 3: the cluster could not run it -----------------------------------------------------
def _no_ray_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def test_no_ray_cluster_at_the_address_exits_3_naming_it(tmp_path):
    """Through the console script: within a bound, not Ray's minutes of retries."""
    path = write_config(tmp_path, lambda r: config(r))
    address = f"127.0.0.1:{free_port()}"
    for verb in ("run", "plan", "verify"):
        began = time.monotonic()
        proc = subprocess.run([CLI, verb, str(path), "--address", address], capture_output=True,
                              text=True, timeout=120, env=_no_ray_env())
        assert proc.returncode == 3, (verb, proc.stderr[-2000:])
        assert f"no Ray cluster at --address '{address}'" in proc.stderr, proc.stderr
        assert "ray start --head" in proc.stderr and "Traceback" not in proc.stderr
        assert time.monotonic() - began < 60, verb
    assert not (tmp_path / "dst").exists()


def test_workers_no_node_can_start_exit_3_naming_the_resource(ray_cluster, tmp_path, capsys):
    """Found before the target, the router or a worker is made."""
    path = write_config(tmp_path, lambda r: config(r, migration_id="nogpu", copy={
        "workers": 1, "worker_resources": {"resources": {"no_such_gpu": 1}}}))
    began = time.monotonic()
    assert main(["run", str(path)]) == 3
    err = capsys.readouterr().err
    assert "no node of the Ray cluster can start a unit worker" in err, err
    assert "no_such_gpu=1" in err and "lower copy.worker_resources" in err
    assert time.monotonic() - began < 60
    assert not (tmp_path / "dst").exists() and not (tmp_path / "state").exists()


@pytest.mark.parametrize("verb", ["cutover", "rollback"])
def test_a_switch_with_no_router_and_no_state_exits_3(tmp_path, capsys, verb):
    """No router runs and no routing table is stored to start one from: nothing to switch."""
    path = write_config(tmp_path, lambda r: config(r))
    before = snapshot(tmp_path)
    assert main([verb, str(path)]) == 3
    err = capsys.readouterr().err
    assert "no router runs for migration 'bad-input'" in err and "ray-migrate run" in err, err
    assert snapshot(tmp_path) == before
