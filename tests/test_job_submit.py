"""End to end as users run it: a real `ray start` head, `jobs/migrate.py` submitted as a Ray job.

The cluster here is separate from the session's in-process ``ray_cluster`` (``ray.init()``),
and the two coexist in one pytest session because this one:

- uses its own ``--temp-dir``: `ray start` records its address in ``<temp-dir>/ray_current_cluster``,
  so a later ``ray.init()`` in this process does not find it and join it by mistake;
- uses free ports for everything it opens (GCS, dashboard, agents, client server, metrics);
- is stopped by terminating the process group of its own ``ray start --block`` and then the
  processes that still run under its temp dir, never with ``ray stop``: ``ray stop`` kills every
  Ray process on the machine by name, the session's cluster included.

Authentication: Ray 2.60 turns on token authentication for clusters started with `ray start`.
The head gets RAY_AUTH_MODE=token and a fresh token in RAY_AUTH_TOKEN (so ~/.ray/auth_token is
neither needed nor touched); processes the cluster starts, the job's driver included, inherit
both. JobSubmissionClient sends ``Authorization: Bearer <token>``: it adds it by itself only
when this process runs in token mode, so the test passes the header explicitly.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
N_POINTS = 600
TENANTS = ("acme", "globex", "initech")
DIM = 8
JOB_TIMEOUT_S = 180


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_cli() -> str:
    """The `ray` next to this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.exists() else shutil.which("ray")
    assert found, "the ray CLI is missing: ray[default] installs it (pip install -e '.[dev]')"
    return found


def _kill_leftovers(marker: str) -> None:
    """Kill the processes whose command line names our temp dir (ours, by pid)."""
    import psutil

    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if marker in cmd and p.info["pid"] != me:
            procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head started with `ray start`, token auth on; yields (dashboard URL, token)."""
    token = secrets.token_hex(32)
    # Short on purpose: Ray's unix sockets live under it and their paths have a length limit.
    temp_dir = tempfile.mkdtemp(prefix="rmjob-")
    gcs, dash, agent_http, agent_grpc, rt_env, client, metrics = _free_ports(7)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        # `python` in the job's entrypoint is this interpreter, which can import ray_migrate.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    log_path = tmp_path / "ray-start.log"
    cmd = [
        _ray_cli(), "start", "--head", "--block",
        f"--port={gcs}", f"--dashboard-port={dash}", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rt_env}", f"--ray-client-server-port={client}",
        f"--metrics-export-port={metrics}", "--disable-usage-stats",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{dash}", token, proc, log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        _kill_leftovers(temp_dir)
        _kill_leftovers(str(tmp_path))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _client(url: str, token: str, proc: subprocess.Popen, log_path: Path):
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"`ray start` exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            return JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
        except Exception as err:  # the dashboard is not up yet
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard at {url} did not come up: {err}\n"
                            f"{log_path.read_text()[-4000:]}")
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
    url, token, proc, log_path = ray_head
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

    client = _client(url, token, proc, log_path)
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
