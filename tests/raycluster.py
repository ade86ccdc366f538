"""A Ray head started with `ray start` as a process of its own, as users run one; shared by the
tests that run ray_migrate in other processes.

    with ray_head(tmp_path) as (address, env):
        subprocess.run([sys.executable, "-m", "ray_migrate.cli", "run", cfg,
                        "--address", address], env=env)

Such a head coexists with the session's in-process ``ray_cluster`` (``ray.init()``) because it:

- uses its own ``--temp-dir``: `ray start` records its address in
  ``<temp-dir>/ray_current_cluster``, so a later ``ray.init()`` in this process does not find it
  and join it by mistake;
- uses free ports for everything it opens (GCS, dashboard, agents, client server, metrics);
- is stopped by terminating the process group of its own ``ray start --block`` and then the
  processes that still run under its temp dir, never with ``ray stop``: ``ray stop`` kills
  every Ray process on the machine by name, the session's cluster included.

Authentication: Ray 2.60 turns on token authentication for clusters started with `ray start`.
The head gets RAY_AUTH_MODE=token and a fresh token in RAY_AUTH_TOKEN (so ~/.ray/auth_token is
neither needed nor touched); processes the cluster starts inherit both, and ``env`` holds both
for the processes a test starts to join it.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120
STARTED = "Ray runtime started."


@dataclass
class Head:
    address: str  # the GCS address, for `ray.init(address=...)` and `--address`
    dashboard_url: str  # for the job submission client
    token: str
    env: dict[str, str]  # what a process needs to join the cluster
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def free_ports(n: int) -> list[int]:
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


def ray_cli() -> str:
    """The `ray` next to this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.exists() else shutil.which("ray")
    assert found, "the ray CLI is missing: ray[default] installs it (pip install -e '.[dev]')"
    return found


def kill_leftovers(marker: str) -> None:
    """Kill the processes whose command line names ``marker`` (ours, by pid)."""
    import ray  # noqa: F401 - its bundled psutil comes onto the path with it

    # isort: split
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


def client_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        # `python` in a job's entrypoint is this interpreter, which can import ray_migrate.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return env


@contextlib.contextmanager
def head_process(log_dir: Path, num_cpus: int = 2, dashboard: bool = True,
                 wait: bool = True) -> Iterator[Head]:
    """Start the head; with ``wait``, yield once it is up. Stopped and cleaned up after."""
    token = secrets.token_hex(32)
    # Short on purpose: Ray's unix sockets live under it and their paths have a length limit.
    temp_dir = tempfile.mkdtemp(prefix="rmhead-")
    gcs, dash, agent_http, agent_grpc, rt_env, client, metrics = free_ports(7)
    env = client_env(token)
    log_path = Path(log_dir) / f"ray-start-{gcs}.log"
    cmd = [
        ray_cli(), "start", "--head", "--block",
        f"--port={gcs}", f"--dashboard-port={dash}",
        f"--include-dashboard={'true' if dashboard else 'false'}",
        "--dashboard-host=127.0.0.1", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rt_env}", f"--ray-client-server-port={client}",
        f"--metrics-export-port={metrics}", "--disable-usage-stats",
    ]
    # A test's head stops at once: on SIGTERM Ray 2.60 first drains the node, for up to 30 s
    # while an actor (the detached router) lives, and waits out all of it when the GCS got the
    # signal too.
    head_env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=head_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    head = Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", token, env, proc, log_path)
    try:
        if wait:
            _wait_started(head)
        yield head
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        kill_leftovers(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_started(head: Head) -> None:
    """Until `ray start` says the runtime started (GCS, raylet and dashboard are up)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while STARTED not in head.log_path.read_text(errors="replace"):
        if head.proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {head.proc.returncode}:\n"
                               f"{head.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"`ray start` did not start in {START_TIMEOUT_S}s:\n"
                               f"{head.log_tail()}")
        time.sleep(0.2)


@contextlib.contextmanager
def ray_head(log_dir: Path | None = None, num_cpus: int = 2
             ) -> Iterator[tuple[str, dict[str, str]]]:
    """A running head with token auth: yields (GCS address, environment to join it with)."""
    own = log_dir is None
    folder = Path(tempfile.mkdtemp(prefix="rmlog-")) if own else Path(log_dir)
    try:
        with head_process(folder, num_cpus=num_cpus) as head:
            yield head.address, head.env
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
