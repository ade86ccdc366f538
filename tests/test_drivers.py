"""One driver per migration, with every command a process of its own, as users run them: a Ray
head from `ray start`, `ray-migrate run --address` running, a second `run` refused, `status`,
`verify` and a `rollback` in the run's rollback window beside it (none of them touching the
run's workers), the run's report, then a driver killed with SIGKILL and a run that takes over.

The test holds the first run's rollback window open until its commands are done (``HELD_RUN``):
a window of fixed length would have to outlast them on the slowest machine, and be waited out.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from livecase import HELD_RUN
from raycluster import ray_head
from truth import assert_same, read_lance, seed_lance_native

from ray_migrate.lease import LEASE_KEY
from ray_migrate.state import StateStore

MID = "two-drivers"
WINDOW_S = 1.0  # what is left of the rollback window once the test lets it end
CLI_TIMEOUT_S = 120

# HELD_RUN: `ray-migrate run`, whose rollback window begins only once the file argv[1] is gone
# (tests/livecase.py).

PROBE = """
import json, sys, ray
ray.init(address=sys.argv[1], namespace="ray_migrate", log_to_driver=False)
names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith(sys.argv[2]))
print(json.dumps({n: ray.get_actor(n, namespace="ray_migrate")._actor_id.hex() for n in names}))
"""


def write_config(tmp_path: Path, name: str, window_s: float) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "migration_id": MID,
        "source": {"kind": "lancedb", "uri": str(tmp_path / "src"), "table": "docs"},
        "target": {"kind": "lancedb", "uri": str(tmp_path / "dst"), "table": "docs"},
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 100, "workers": 2, "worker_resources": {"num_cpus": 0.5}},
        "cutover": {"mode": "auto", "waves": [1, "100%"], "pause_s": 0,
                    "max_freeze_ms": 3000},
        "rollback": {"window_s": window_s},
        "state_uri": str(tmp_path / "state")}))
    return path


def cli(env: dict, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_migrate.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_run(env: dict, cfg: Path, address: str, log: Path, hold: Path | None = None
              ) -> subprocess.Popen:
    """`ray-migrate run`; with ``hold``, its rollback window stays open while that file is."""
    run = ["-c", HELD_RUN, str(hold)] if hold else ["-m", "ray_migrate.cli", "run"]
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *run, str(cfg), "--address", address],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def wait_for(what: str, check, proc: subprocess.Popen, log: Path, timeout: float = 180):
    """Until ``check()`` is true; fails at once if the run ended meanwhile."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert proc.poll() is None, f"the run ended ({proc.returncode}) before {what}:\n" \
            f"{log.read_text()[-6000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s:\n" \
            f"{log.read_text()[-6000:]}"
        time.sleep(0.1)
    return found


def workers(env: dict, address: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, address, f"rm:{MID}:worker:"],
                         env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_driver_per_migration_across_processes(tmp_path):
    truth = seed_lance_native(str(tmp_path / "src"), "docs", list(range(400)))
    store = StateStore(str(tmp_path / "state"), MID)
    long_cfg = write_config(tmp_path, "window", WINDOW_S)
    with ray_head(tmp_path) as head:
        address, env = head.address, head.env
        log, hold = tmp_path / "run1.log", tmp_path / "hold-window"
        hold.touch()
        first = start_run(env, long_cfg, address, log, hold)
        try:
            lease = wait_for("driver lease", lambda: (store.read(LEASE_KEY) or {}).get(
                "pid") == first.pid and store.read(LEASE_KEY), first, log)
            # 1. A second driver of the same migration: refused at once, naming the first.
            second = cli(env, "run", str(long_cfg), "--address", address)
            assert second.returncode == 2, second.stderr[-3000:]
            assert f"pid {first.pid} on host {lease['host']}" in second.stderr
            assert "since" in second.stderr and "ray-migrate status" in second.stderr
            assert f"kill {first.pid}" in second.stderr
            assert first.poll() is None, "the first driver went on"
            # 2. In its rollback window: status, verify and a rollback, beside the driver.
            wait_for("every unit on the target", lambda: {
                u["phase"] for u in (store.read("routing.json") or {"units": {}})[
                    "units"].values()} == {"target"}, first, log)
            before = workers(env, address)
            assert len(before) == 2, before
            status = cli(env, "status", str(long_cfg))
            assert status.returncode == 0 and f"driver: pid {first.pid}" in status.stdout
            verify = cli(env, "verify", str(long_cfg), "--address", address)
            assert verify.returncode == 0, verify.stdout + verify.stderr[-3000:]
            back = cli(env, "rollback", str(long_cfg), "--units", "tenant=t1",
                       "--address", address)
            assert back.returncode == 0, back.stdout + back.stderr[-3000:]
            assert "tenant=t1: rollback ok" in back.stdout
            assert workers(env, address) == before, "a command replaced the run's workers"
            assert first.poll() is None, "the run ended in its rollback window"
            # 3. The run ends after its window: the unit stays rolled back, and it says so.
            hold.unlink()
            first.wait(WINDOW_S + CLI_TIMEOUT_S)
        finally:
            hold.unlink(missing_ok=True)
            if first.poll() is None:
                first.kill()
        out = log.read_text()
        assert first.returncode == 1, out[-6000:]
        t1 = next(line for line in out.splitlines() if line.startswith("tenant=t1 "))
        assert "rolled_back" in t1 and "rolled back at" in t1 and "ray-migrate rollback" in t1
        assert "1 rolled back during the run (tenant=t1)" in out, out[-3000:]
        assert store.read(LEASE_KEY)["released_at"] is not None
        # 4. A driver killed with SIGKILL: the next run takes over at once and finishes.
        short_cfg = write_config(tmp_path, "resume", 0)
        log = tmp_path / "run2.log"
        killed = start_run(env, short_cfg, address, log)
        try:
            wait_for("driver lease", lambda: (store.read(LEASE_KEY) or {}).get(
                "pid") == killed.pid, killed, log)
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait(30)
        resumed = cli(env, "run", str(short_cfg), "--address", address, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-6000:]
        assert f"taking over migration {MID} from a dead driver: pid {killed.pid}" in \
            resumed.stderr
        units = store.read("routing.json")["units"]
        assert {u["phase"] for u in units.values()} == {"done"}, units
    assert_same(read_lance(str(tmp_path / "dst"), "docs"), truth)
