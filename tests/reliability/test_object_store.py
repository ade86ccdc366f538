"""``state_uri`` and LanceDB tables on S3, as the README promises: plan, copy, a live
migration, resume after the driver is killed, verify.

moto's S3 server (tests/s3server.py) runs on 127.0.0.1 as its own process; a `ray start` head
(tests/raycluster.py) runs the router and the workers; `ray-migrate` and the application
(tests/mp_workload.py, writing through ``RoutedCollection``) are processes of their own. The
head and the application have no AWS variables: the run's processes get the endpoint and
credentials from the config only (``storage_options``, ``state_storage_options``), the
application from ``storage_options=`` (case q2l) or its own environment (case l2l). The q2l
run is the package's ``q2l_on_s3`` (tests/reliability/conftest.py; test_secrets.py reads it
too); the moto server and the head are the package's.

Checked against what the test recorded (the writer's ops log replayed, tests/truth.py), with
the engines' own clients (``lancedb.connect(s3 uri, storage_options=...)``, Qdrant local);
the state read with boto3: every document under ``<bucket>/state/<migration_id>/``, each
written by one PUT (moto's request log), no folder markers, nothing written locally.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from raycluster import Head
from s3case import (
    N_POINTS,
    S3Run,
    cli,
    lance_on_s3,
    run_to_end,
    seed_lance,
    stop_writer,
    tail,
    units_by_status,
    write_config,
    write_initial,
    writer,
)
from s3server import S3Server
from truth import compare, read_side, replay_ops


def client_env(s3: S3Server) -> dict[str, str]:
    """The standard AWS environment LanceDB reads when given no storage_options."""
    return {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_ENDPOINT": s3.endpoint, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


def state_doc(s3: S3Server, bucket: str, mid: str, key: str) -> Any:
    return json.loads(s3.get(bucket, f"state/{mid}/{key}"))


def check_state_objects(s3: S3Server, bucket: str, mid: str, units: list[str],
                        tmp: Path) -> None:
    """Every state document is in the bucket under state/<mid>/, each written by single PUTs
    (no multipart upload, no copy: S3 has no rename), no folder marker; none on local disk."""
    keys = set(s3.keys(bucket, "state/"))
    prefix = f"state/{mid}/"
    assert all(k.startswith(prefix) for k in keys), sorted(keys)
    for name in ("plan.json", "routing.json", "report.json", "driver.json", "target.json",
                 "presence.json", "finalized.json"):
        assert prefix + name in keys, f"{name} missing from {sorted(keys)}"
    for unit in units:
        assert f"{prefix}checkpoints/{unit.replace('=', '%3D')}.json" in keys, unit
    assert not [k for k in keys if k.endswith("/") or ".tmp" in k], sorted(keys)
    requests = s3.requests()
    state_requests = [r for r in requests if f"/{bucket}/state/" in r]
    assert [r for r in state_requests if r.startswith("PUT ")], "no PUT of a state document"
    odd = [r for r in state_requests
           if "uploads" in r or "uploadId" in r or r.startswith(("POST", "COPY"))]
    assert not odd, f"state written by more than one request per document: {odd[:5]}"
    local = [p for p in tmp.rglob("*") if "s3:" in str(p) or p.name == "state"]
    assert not local, f"state written to local disk: {local}"


def check_truth(tmp: Path, initial: Any, run_ended_at: float, sides: dict[str, Any],
                units: dict[str, Any], log: str = "writer.jsonl") -> None:
    exp = replay_ops(tmp / log, initial, run_ended_at)
    owners = {u: row["owner"] for u, row in units.items()}
    findings = compare(exp, sides, owners)
    assert exp.acked > 0 and not exp.errors, exp.errors[:5]
    assert not exp.bad_hits, exp.bad_hits[:5]
    assert not findings.counts, (findings.counts, findings.examples)


def status_units(head: Head, tmp: Path, cfg: Path) -> dict[str, dict[str, Any]]:
    return status_rows(cli(head, tmp, "status", str(cfg), "--json"))


def verify_ids(res: subprocess.CompletedProcess) -> tuple[int, set[Any]]:
    """`ray-migrate verify --json`'s answer: (exit code, every id it found missing, extra or
    changed)."""
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(res.stdout)["units"]
    assert rows and not [r["error"] for r in rows if r["error"]], rows
    ids = {i for r in rows for key in ("missing_ids", "extra_ids", "changed_ids")
           for i in r[key]}
    assert res.returncode == (1 if ids else 0), res.stdout[-3000:]
    return res.returncode, ids


def verify(head: Head, tmp: Path, cfg: Path) -> tuple[int, set[Any]]:
    return verify_ids(cli(head, tmp, "verify", str(cfg), "--json", "--address", head.address))


def status_rows(res: subprocess.CompletedProcess) -> dict[str, dict[str, Any]]:
    assert res.returncode == 0, res.stdout + res.stderr
    return {row["unit"]: row for row in json.loads(res.stdout)["units"]}


def written_ids(ops_log: Path) -> set[Any]:
    return {doc["id"] for doc in map(json.loads, ops_log.read_text().splitlines())
            if doc.get("phase") == "begin" and "id" in doc}


def test_qdrant_to_lance_on_s3_killed_and_resumed(s3: S3Server, q2l_on_s3: S3Run) -> None:
    """Qdrant local -> LanceDB on S3, state on S3; a writer throughout; the driver killed
    with SIGKILL once a unit is copied, the same command run again: exact, nothing twice.
    The run is the package's ``q2l_on_s3`` (tests/reliability/conftest.py), which
    test_secrets.py searches for the planted secret."""
    run = q2l_on_s3
    bucket, mid, units, tmp_path = run.bucket, run.mid, run.units, run.tmp
    assert run.plan_state["units"] == json.loads(run.out["plan --json"].stdout)["units"]
    assert len(run.copied) < len(units), "every unit was copied before the kill"
    assert run.rc == 0, tail(tmp_path, "run2", 6000)
    assert run.writer_rc == 0, tail(tmp_path, "writer")
    report = state_doc(s3, bucket, mid, "report.json")
    assert sum(u["copied_now"] for u in report["units"]) < N_POINTS, \
        "the second run copied the units the first had copied again"
    assert set(run.copied) <= set(units_by_status(report).get("skipped", [])) | {
        u["unit_id"] for u in report["units"] if u["copied_now"] == 0}
    # The application wrote on after each cutover, to the target only (no rollback window):
    # verify finds those ids and no other.
    _, differ = verify_ids(run.out["verify --json"])
    assert differ <= written_ids(tmp_path / "writer.jsonl"), differ
    rows = status_rows(run.out["status --json"])
    assert {u: (r["phase"], r["owner"]) for u, r in rows.items()} == {
        u: ("done", "target") for u in units}
    sides = {"source": read_side("qdrant", tmp_path / "source"),
             "target": read_side("lancedb", run.target["uri"], storage_options=s3.storage_options)}
    check_truth(tmp_path, run.initial, run.run_ended_at, sides, rows)
    check_state_objects(s3, bucket, mid, units, tmp_path)


def test_lance_on_s3_to_lance_on_s3(s3: S3Server, head: Head, tmp_path: Path) -> None:
    """LanceDB on S3 -> LanceDB on S3 (another bucket), state on S3: verify finds 0
    differences, a run again copies nothing, and then an application whose credentials come
    from its own environment (the AWS variables LanceDB reads) writes and searches the
    target."""
    src_bucket, bucket, mid = s3.make_bucket("l2l-src"), s3.make_bucket("l2l-dst"), "s3-l2l"
    source = lance_on_s3(s3, src_bucket, "lance")
    initial = seed_lance(source["uri"], s3.storage_options)
    target = lance_on_s3(s3, bucket, "lance")
    cfg = write_config(tmp_path, mid, source, target, f"s3://{bucket}/state",
                       s3.storage_options)
    rc = run_to_end(head, tmp_path, "run", "run", str(cfg), "--address", head.address)
    assert rc == 0, tail(tmp_path, "run", 6000)
    assert verify(head, tmp_path, cfg) == (0, set())
    rc = run_to_end(head, tmp_path, "again", "run", str(cfg), "--address", head.address)
    assert rc == 0, tail(tmp_path, "again", 6000)
    assert sum(u["copied_now"] for u in state_doc(s3, bucket, mid, "report.json")["units"]) == 0
    rows = status_units(head, tmp_path, cfg)
    assert all((r["phase"], r["owner"]) == ("done", "target") for r in rows.values()), rows

    app = writer(head, tmp_path, mid, write_initial(tmp_path, initial), env=client_env(s3))
    try:
        assert stop_writer(app, after_s=3.0) == 0, tail(tmp_path, "writer")
    finally:
        if app.poll() is None:
            app.kill()
    sides = {side: read_side("lancedb", ep["uri"], storage_options=s3.storage_options)
             for side, ep in (("source", source), ("target", target))}
    check_truth(tmp_path, initial, 0.0, sides, rows)
    check_state_objects(s3, bucket, mid, list(rows), tmp_path)
    assert not s3.keys(src_bucket, "state/"), "state written next to the source"


def test_state_options_from_environment_and_bad_options(s3: S3Server, monkeypatch: Any,
                                                        tmp_path: Path) -> None:
    """Without state_storage_options the state's endpoint and credentials come from the
    process's AWS environment; an unknown option, or options with a local state_uri, are
    refused naming them (and nothing is written)."""
    from ray_migrate.config import parse_config
    from ray_migrate.errors import ConfigError
    from ray_migrate.state import StateStore

    bucket = s3.make_bucket("env-state")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    store = StateStore(f"s3://{bucket}/state", "env")
    store.save_checkpoint("tenant=a/b", {"copied": 3})
    assert store.load_checkpoint("tenant=a/b") == {"copied": 3}
    assert store.read("absent.json", "default") == "default"
    assert s3.keys(bucket) == ["state/env/checkpoints/tenant%3Da%2Fb.json"]
    base = {"migration_id": "m", "source": {"kind": "qdrant", "collection": "c", "path": "x"},
            "target": {"kind": "lancedb", "uri": "y", "table": "t"}}
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['aws_regon'\]"):
        parse_config({**base, "state_uri": f"s3://{bucket}/s",
                      "state_storage_options": {"aws_regon": "x"}}, tmp_path)
    with pytest.raises(ConfigError, match="only an s3:// state_uri takes options"):
        parse_config({**base, "state_uri": "state", "state_storage_options": {
            "aws_region": "x"}}, tmp_path)
    assert not list(tmp_path.iterdir())
