"""End to end as users run it: a real `ray start` head, `jobs/migrate.py` submitted as a Ray job.

The head (tests/raycluster.py) is its own process with token auth, free ports and its own
--temp-dir, so it coexists with the session's in-process ``ray_cluster``. JobSubmissionClient
sends ``Authorization: Bearer <token>``: it adds it by itself only when this process runs in
token mode, so the test passes the header explicitly.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest
from raycluster import Head
from raycluster import ray_head as start_head

REPO = Path(__file__).resolve().parent.parent
N_POINTS = 600
TENANTS = ("acme", "globex", "initech")
DIM = 8
JOB_TIMEOUT_S = 180


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head started with `ray start`, token auth on, the dashboard up (jobs need it);
    the submitted job's driver names the test's files, so whatever names them is killed too."""
    with start_head(tmp_path, dashboard=True, extra_kill_markers=(str(tmp_path),)) as head:
        yield head


def _client(head: Head):
    from ray.job_submission import JobSubmissionClient

    url = head.dashboard_url
    deadline = time.monotonic() + 90
    while True:
        if head.proc.poll() is not None:
            pytest.fail(f"`ray start` exited with {head.proc.returncode}:\n{head.log_tail()}")
        try:
            return JobSubmissionClient(url, headers={"Authorization": f"Bearer {head.token}"})
        except Exception as err:  # the dashboard is not up yet
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard at {url} did not come up: {err}\n{head.log_tail()}")
            time.sleep(1)


def _seed_qdrant(path: Path) -> list[int]:
    from qdrant_client import QdrantClient, models

    rng = np.random.default_rng(7)
    ids = list(range(1, N_POINTS + 1))
    vectors = rng.standard_normal((N_POINTS, DIM)).astype(np.float32)
    client = QdrantClient(path=str(path))
    try:
        client.create_collection(
            "docs", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
        for start in range(0, N_POINTS, 200):
            batch = ids[start:start + 200]
            client.upsert("docs", points=models.Batch(
                ids=batch,
                vectors=vectors[start:start + 200].tolist(),
                payloads=[{"tenant": TENANTS[i % len(TENANTS)], "title": f"doc {i}",
                           "rank": i % 50, "tags": ["a", "b"][: i % 3],
                           "meta": {"n": i}} for i in batch],
            ), wait=True)
        assert client.count("docs", exact=True).count == N_POINTS
    finally:
        client.close()
    return ids


def test_migrate_job_on_a_ray_start_cluster(ray_head, tmp_path):
    head = ray_head
    url = head.dashboard_url
    ids = _seed_qdrant(tmp_path / "qdrant")
    cfg = tmp_path / "migration.yaml"
    # Absolute paths: the job runs in a temporary copy of the working dir.
    cfg.write_text(
        "migration_id: job-submit-test\n"
        "source:\n  kind: qdrant\n  collection: docs\n"
        f"  path: {tmp_path / 'qdrant'}\n"
        "target:\n  kind: lancedb\n  table: docs\n"
        f"  uri: {tmp_path / 'lance'}\n"
        "units:\n  by: tenant\n  field: tenant\n"
        "copy:\n  batch_size: 128\n  workers: 2\n  worker_resources:\n    num_cpus: 0.5\n"
        f"state_uri: {tmp_path / 'state'}\n"
        "cutover: {pause_s: 0}\n"
    )

    from ray.job_submission import JobStatus

    client = _client(head)
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(Exception, match="(?i)forbidden|unauthori|authenticat|40[13]"):
        JobSubmissionClient(url, headers={"Authorization": "Bearer wrong"}).list_jobs()
    job_id = client.submit_job(
        entrypoint=f"python jobs/migrate.py --config {cfg}",
        runtime_env={
            "working_dir": str(REPO),
            "excludes": [".git", ".venv", "data", "examples/data", "ray-migrate-demo",
                         "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"],
        },
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                client.stop_job(job_id)
            break
        time.sleep(1)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, (
        f"job {job_id} ended {status} (timeout {JOB_TIMEOUT_S}s); its logs:\n{logs[-12000:]}")

    import lancedb

    table = lancedb.connect(str(tmp_path / "lance")).open_table("docs")
    assert table.count_rows() == N_POINTS, logs[-4000:]
    got = sorted(table.to_arrow().column("id").to_pylist())
    assert got == ids


def _job_main():
    """jobs/migrate.py's ``main`` (a script, not a module of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rm_job_migrate", REPO / "jobs" / "migrate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def job_main():
    """The job's main; the root logging it sets up (to this test's stderr) is undone after."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield _job_main()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _lance_config(tmp_path: Path, mid: str) -> Path:
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"migration_id: {mid}\n"
                   "source: {kind: lancedb, uri: src, table: docs}\n"
                   "target: {kind: lancedb, uri: dst, table: docs}\n"
                   "state_uri: state\n")
    return cfg


def test_a_second_job_for_a_running_migration_exits_2_naming_the_driver(job_main, tmp_path,
                                                                        capsys):
    """No Ray needed: the job refuses at its first step, before it connects."""
    import os

    from ray_migrate.lease import DriverLease
    from ray_migrate.state import StateStore

    cfg = _lance_config(tmp_path, "job-busy")
    running = DriverLease(StateStore(str(tmp_path / "state"), "job-busy"))
    running.acquire(None)  # the first driver, alive and renewing
    try:
        assert job_main(["--config", str(cfg)]) == 2
    finally:
        running.release()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "migration 'job-busy' is already being run by another driver" in err
    assert f"pid {os.getpid()} on host" in err and f"kill {os.getpid()}" in err


@pytest.mark.parametrize("kind, code", [
    ("ConfigError", 2), ("IncompatibleTargetError", 2), ("InvalidDataError", 2),
    ("UnsupportedError", 2), ("TerminalError", 2), ("DriverBusyError", 2),
    ("TransientError", 1), ("ClusterError", 3)])
def test_the_job_exits_as_the_cli_does_for_every_error_kind(job_main, tmp_path, capsys,
                                                            monkeypatch, kind, code):
    """The run raises ``kind`` (injected); the job and ``ray-migrate run`` exit alike."""
    from ray_migrate import driver, errors, lease
    from ray_migrate.cli import main as cli_main

    error = getattr(errors, kind, None) or getattr(lease, kind)
    cfg = _lance_config(tmp_path, "job-errors")

    def fails(*args, **kwargs):
        raise error(f"injected {kind}")

    monkeypatch.setattr(driver, "run_migration", fails)
    assert job_main(["--config", str(cfg)]) == code
    assert f"error: injected {kind}" in capsys.readouterr().err
    assert cli_main(["run", str(cfg)]) == code
    assert f"error: injected {kind}" in capsys.readouterr().err


def test_a_job_with_a_bad_config_exits_2_naming_the_field(job_main, tmp_path, capsys):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("migration_id: bad\nsource: {kind: lancedb, uri: src, table: docs}\n"
                   "target: {kind: lancedb, uri: dst, table: docs}\ncopy: {workers: 0}\n")
    assert job_main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "copy.workers" in err and "Traceback" not in err
