"""What the object-store and secrets tests share: sources seeded with the engines' own clients
(a Qdrant local folder, or a LanceDB table on moto's S3), a config written as a user writes
one, `ray-migrate` and the application (tests/mp_workload.py) as processes joined to a
`ray start` head (tests/raycluster.py), and the one live S3 migration both read
(``q2l_killed_and_resumed``, the fixture ``q2l_on_s3`` of tests/reliability/conftest.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livecase import DIM, seed
from raycluster import Head, stop_group
from s3server import S3Server

N_POINTS = 2400
TENANTS = [f"tenant-{i}" for i in range(4)]
FIRST_NEW_ID = 1_000_000
TESTS = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "ray-migrate")
CLI_TIMEOUT_S = 300.0
POLL_S = 0.1
# Writes per second of the application: every write to a LanceDB table on S3 costs a dozen
# requests of moto's one-threaded server (and a fragment a catch-up read goes through).
WRITE_RATE = 8.0
KILL_TIMEOUT_S = 240.0
# The S3 secret key of the package's moto server (moto accepts any key pair): the actual
# credential of every S3 request, planted so that test_secrets.py can look for it everywhere.
PLANTED_S3_SECRET = "PLANTEDs3" + secrets.token_hex(12)

Initial = dict[int, tuple[bytes, dict[str, Any]]]


def seed_qdrant(path: Path) -> Initial:
    return seed("qdrant", path, N_POINTS, TENANTS)


def seed_lance(uri: str, storage_options: dict[str, str]) -> Initial:
    return seed("lancedb", uri, N_POINTS, TENANTS, storage_options)


def write_config(tmp: Path, mid: str, source: dict[str, Any], target: dict[str, Any],
                 state_uri: str, state_options: dict[str, str] | None = None,
                 **extra: Any) -> Path:
    """A migration by tenant, small batches, two workers, three short waves."""
    cfg = {
        "migration_id": mid, "source": source, "target": target,
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 200, "workers": 2},
        # S3 round trips (and a busy CI machine) make a drain take longer than on a disk.
        "cutover": {"mode": "auto", "waves": [1, "50%", "100%"], "pause_s": 1,
                    "max_freeze_ms": 3000},
        "state_uri": state_uri, **extra,
    }
    if state_options:
        cfg["state_storage_options"] = state_options
    path = tmp / f"{mid}.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


def write_initial(tmp: Path, initial: Initial) -> Path:
    path = tmp / "initial.json"
    path.write_text(json.dumps({"ids": {str(i): p["tenant"] for i, (_, p) in initial.items()},
                                "tenants": TENANTS, "first_new_id": FIRST_NEW_ID}))
    return path


def spawn(args: list[str], head: Head, tmp: Path, name: str,
          env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen:
    """A process of its own group joined to ``head``, its output in ``<tmp>/<name>.out``."""
    with open(tmp / f"{name}.out", "wb") as out:
        return subprocess.Popen(args, env={**head.env, **(env or {})}, cwd=tmp, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, **kw)


def tail(tmp: Path, name: str, chars: int = 3000) -> str:
    try:
        return (tmp / f"{name}.out").read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def writer(head: Head, tmp: Path, mid: str, initial: Path, name: str = "writer",
           env: dict[str, str] | None = None, storage_options: Path | None = None,
           rate: float = WRITE_RATE) -> subprocess.Popen:
    """The application: tests/mp_workload.py writing through ``RoutedCollection``."""
    args = [sys.executable, str(TESTS / "mp_workload.py"), "--address", head.address,
            "--migration-id", mid, "--initial", str(initial), "--ops-log",
            str(tmp / f"{name}.jsonl"), "--dim", str(DIM), "--max-rate", str(rate)]
    if storage_options is not None:
        args += ["--storage-options", str(storage_options)]
    return spawn(args, head, tmp, name, env=env, stdin=subprocess.PIPE)


def stop_writer(proc: subprocess.Popen, after_s: float = 2.0, timeout_s: float = 120.0) -> int:
    """Tell the writer to write ``after_s`` seconds more and exit; its exit code."""
    assert proc.stdin is not None
    proc.stdin.write(f"stop-after {after_s}\n".encode())
    proc.stdin.flush()
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            stop_group(proc, term_wait_s=5)


def cli(head: Head, tmp: Path, *args: str, env: dict[str, str] | None = None,
        timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`ray-migrate ARGS` to its end, output captured."""
    return subprocess.run([CLI, *args], env={**head.env, **(env or {})}, cwd=tmp,
                          capture_output=True, text=True, timeout=timeout_s)


def run_to_end(head: Head, tmp: Path, name: str, *args: str,
               timeout_s: float = CLI_TIMEOUT_S) -> int:
    """`ray-migrate ARGS` as a process of its own, output in ``<tmp>/<name>.out``; its exit
    code (a timeout fails the test with the output's tail)."""
    proc = spawn([CLI, *args], head, tmp, name)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`ray-migrate {' '.join(args)}` did not end in {timeout_s:.0f}s:"
                             f"\n{tail(tmp, name, 6000)}") from None
    finally:
        if proc.poll() is None:
            stop_group(proc, term_wait_s=5)


def wait_released(path: Path, bound_s: float = 30.0) -> None:
    """Until a Qdrant client can open ``path`` (local mode admits one process)."""
    from qdrant_client import QdrantClient

    t0 = time.monotonic()
    while True:
        try:
            QdrantClient(path=str(path)).close()
            return
        except RuntimeError:  # "already accessed by another instance"
            assert time.monotonic() - t0 < bound_s, f"{path} is still locked"
            time.sleep(POLL_S)  # polling for the hosted store's release


def units_by_status(report: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for u in report["units"]:
        out.setdefault(u["status"], []).append(u["unit_id"])
    return out


def lance_on_s3(s3: S3Server, bucket: str, prefix: str) -> dict[str, Any]:
    return {"kind": "lancedb", "table": "docs", "uri": f"s3://{bucket}/{prefix}",
            "distance": "dot", "storage_options": s3.storage_options}


def wait_first_copied(s3: S3Server, bucket: str, mid: str, run: subprocess.Popen,
                      tmp: Path) -> list[str]:
    """Until a unit's checkpoint in the bucket says copied (the run still going): the units
    copied so far."""
    t0 = time.monotonic()
    while True:
        assert run.poll() is None, f"the run ended before a unit was copied:\n{tail(tmp, 'run1')}"
        assert time.monotonic() - t0 < KILL_TIMEOUT_S, f"no unit copied:\n{tail(tmp, 'run1')}"
        keys = s3.keys(bucket, f"state/{mid}/checkpoints/")
        docs = [json.loads(s3.get(bucket, k)) for k in keys]
        copied = [d["unit_id"] for d in docs if d["status"] == "copied"]
        if copied:
            return copied
        time.sleep(POLL_S)  # polling the bucket for a checkpoint


def describe_router(head: Head, tmp: Path, mid: str) -> subprocess.CompletedProcess:
    """What the router hands every client (``RoutedCollection.connect`` reads it), as JSON."""
    code = (f"import json, ray; ray.init(address={head.address!r}, namespace='ray_migrate', "
            "log_to_driver=False); from ray_migrate.routing.actor import get_router; "
            f"print(json.dumps(get_router({mid!r}).call('describe'), default=str))")
    return subprocess.run([sys.executable, "-c", code], env=head.env, cwd=tmp,
                          capture_output=True, text=True, timeout=120)


@dataclass
class S3Run:
    """The live S3 migration, ended: what it was given and what every command answered."""

    tmp: Path
    bucket: str
    mid: str
    cfg: Path
    target: dict[str, Any]
    initial: Initial
    units: list[str]  # the units `plan --json` showed
    plan_state: Any  # plan.json in the bucket just after the plans
    copied: list[str]  # units copied before the kill
    rc: int  # the second `run`'s exit code
    run_ended_at: float
    writer_rc: int
    out: dict[str, subprocess.CompletedProcess]  # "plan --json", "verify", ... -> its result


def q2l_killed_and_resumed(s3: S3Server, head: Head, tmp: Path) -> S3Run:
    """Qdrant local -> LanceDB on S3, state on S3; `plan` (plain, --json, -v); a writer
    throughout whose credentials are its own ``storage_options=``; the driver killed with
    SIGKILL once a unit is copied, the same command run again; then the router's hand-out,
    `status` and `verify` (plain and --json): every command's result kept."""
    bucket, mid = s3.make_bucket("q2l-bucket"), "s3-q2l"
    initial = seed_qdrant(tmp / "source")
    target = lance_on_s3(s3, bucket, "lance")
    cfg = write_config(tmp, mid, {"kind": "qdrant", "collection": "docs",
                                  "path": str(tmp / "source")}, target,
                       f"s3://{bucket}/state", s3.storage_options,
                       copy={"batch_size": 100, "workers": 2, "max_points_per_s": 800})
    out = {" ".join(a): cli(head, tmp, *a, str(cfg)) for a in  # one at a time: Qdrant local
           (["plan"], ["plan", "--json"], ["-v", "plan"])}
    assert all(r.returncode == 0 for r in out.values()), {k: r.stderr[-2000:] for k, r in
                                                          out.items()}
    units = [u["unit_id"] for u in json.loads(out["plan --json"].stdout)["units"]]
    plan_state = json.loads(s3.get(bucket, f"state/{mid}/plan.json"))
    opts = tmp / "client-storage.json"  # the application's own credentials
    opts.write_text(json.dumps(s3.storage_options))
    app = writer(head, tmp, mid, write_initial(tmp, initial), storage_options=opts)
    try:
        run1 = spawn([CLI, "-v", "run", str(cfg), "--address", head.address], head, tmp,
                     "run1")
        copied = wait_first_copied(s3, bucket, mid, run1, tmp)
        os.kill(run1.pid, signal.SIGKILL)
        run1.wait(timeout=30)
        rc = run_to_end(head, tmp, "run2", "-v", "run", str(cfg), "--address", head.address)
        run_ended_at = time.time()
        with ThreadPoolExecutor(3) as pool:  # while the writer writes its last seconds
            late = {"router describe": pool.submit(describe_router, head, tmp, mid)} | {
                " ".join(a): pool.submit(cli, head, tmp, *a[:1], str(cfg), *a[1:])
                for a in (["status"], ["status", "--json"])}
            writer_rc = stop_writer(app)
            out.update((name, f.result()) for name, f in late.items())
    finally:
        if app.poll() is None:
            app.kill()
    for args in (["verify"], ["verify", "--json"]):  # after the writer; Qdrant local
        out[" ".join(args)] = cli(head, tmp, *args[:1], str(cfg), *args[1:],
                                  "--address", head.address)
    wait_released(tmp / "source")
    return S3Run(tmp, bucket, mid, cfg, target, initial, units, plan_state, copied, rc,
                 run_ended_at, writer_rc, out)
