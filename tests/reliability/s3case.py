"""What the object-store and secrets tests share: sources seeded with the engines' own clients
(a Qdrant local folder, or a LanceDB table on moto's S3), a config written as a user writes
one, `ray-migrate` and the application (tests/mp_workload.py) as processes joined to a
`ray start` head (tests/raycluster.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from livecase import DIM, seed
from raycluster import Head, stop_group

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
