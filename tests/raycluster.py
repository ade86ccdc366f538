"""A Ray head started as users start one: `ray start --head`, its own process, token auth.

Tests that run the product as users do (a job submitted to a cluster, `ray-migrate run
--address`, applications in other processes) need a cluster that is not the pytest process's
own. This one coexists with the session's in-process ``ray_cluster`` because it:

- uses its own ``--temp-dir``: `ray start` records its address in
  ``<temp-dir>/ray_current_cluster``, so a later ``ray.init()`` in this process does not find it
  and join it by mistake;
- uses free ports for everything it opens (GCS, dashboard, agents, client server, metrics);
- is stopped by killing the process group of its own ``ray start --block`` and then the
  processes that still run under its temp dir, never with ``ray stop``: ``ray stop`` kills every
  Ray process on the machine by name, the session's cluster and other users' included.

Authentication: Ray 2.60 turns on token authentication for clusters started with `ray start`.
The head gets RAY_AUTH_MODE=token and a fresh token in RAY_AUTH_TOKEN (so ~/.ray/auth_token is
neither needed nor touched); processes the cluster starts inherit both, and ``Head.env`` holds
them for the processes a test starts itself (drivers, CLIs, applications).

    with ray_head(tmp_path) as head:
        subprocess.run(["ray-migrate", "run", cfg, "--address", head.address], env=head.env)
"""

from __future__ import annotations

import contextlib
import logging
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

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
log = logging.getLogger(__name__)

START_TIMEOUT_S = 90.0
START_ATTEMPTS = 2


@dataclass
class Head:
    """A running head: ``address`` (GCS, for ``--address`` and ``ray.init``) and ``env`` (for
    every process that joins it: token auth on, this repo's code first on PYTHONPATH)."""

    address: str
    env: dict[str, str]
    token: str
    dashboard_url: str | None
    proc: subprocess.Popen
    log_path: Path
    temp_dir: str
    metrics_port: int | None = None  # the node's Prometheus export (``--metrics-export-port``)

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://127.0.0.1:{self.metrics_port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop `ray start` (SIGTERM: it drains the node and ends the processes it started, in
        about 2 s), kill what is left of its process group, then whatever still runs under its
        temp dir (workers that left the group)."""
        stop_group(self.proc, leader_only=True)
        kill_matching(self.temp_dir)


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


def _cmdlines() -> Iterator[tuple[int, str]]:
    """(pid, command line) of every process we can see, from /proc (psutil may be absent)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        yield int(entry), raw.replace(b"\0", b" ").decode(errors="replace")


def kill_matching(marker: str, timeout_s: float = 10.0) -> None:
    """Kill the processes whose command line names ``marker`` (a temp dir of ours), by pid."""
    me = os.getpid()
    pids = [pid for pid, cmd in _cmdlines() if marker in cmd and pid != me]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if pids:
            time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def stop_group(proc: subprocess.Popen, term_wait_s: float = 20.0,
               leader_only: bool = False) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), or only
    ``proc`` itself; after at most ``term_wait_s``, SIGKILL whatever is left of the group.

    `ray start --block` wants the SIGTERM alone: with its whole group signalled, the GCS is gone
    before the node drains and it waits 30 s for it."""
    with contextlib.suppress(ProcessLookupError):
        if leader_only:
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=term_wait_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def head_env(token: str) -> dict[str, str]:
    """The environment of a process that joins the head: token auth, no inherited cluster,
    this repo's ``ray_migrate`` and the tests' helpers importable, the venv's scripts on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    paths = [str(REPO), str(TESTS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return env


def _wait_ready(head: Head, timeout_s: float) -> None:
    """Until `ray start` says the runtime started (it prints that once every head process is
    up); fail with its log if it exits or takes longer than ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in head.log_tail(1_000_000):
        if head.proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {head.proc.returncode}:\n"
                               f"{head.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"`ray start` did not start within {timeout_s:.0f}s:\n"
                               f"{head.log_tail()}")
        time.sleep(0.2)


@contextlib.contextmanager
def ray_head(tmp_path: Path, num_cpus: int = 2, dashboard: bool = False,
             extra_kill_markers: tuple[str, ...] = (),
             env: dict[str, str] | None = None) -> Iterator[Head]:
    """Start a head, wait until it is up, yield it, stop it (also when the test fails).

    ``dashboard``: start the dashboard (job submission needs it) on a free port.
    ``extra_kill_markers``: more strings whose processes are killed at the end (for example
    ``str(tmp_path)``, for a submitted job's driver that names the test's files).
    ``env``: more environment for the head (so for every process the cluster starts) and for
    ``Head.env`` (the processes the test starts), e.g. a fault to inject.
    """
    head = _started_head(tmp_path, num_cpus, dashboard, env)
    try:
        yield head
    finally:
        _remove_head(head, extra_kill_markers)


def _remove_head(head: Head, extra_kill_markers: tuple[str, ...] = ()) -> None:
    head.stop()
    for marker in extra_kill_markers:
        kill_matching(marker)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    if os.path.exists(head.temp_dir):  # a process that was still ending wrote there meanwhile
        kill_matching(head.temp_dir)
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def _started_head(tmp_path: Path, num_cpus: int, dashboard: bool,
                  env: dict[str, str] | None) -> Head:
    """A head that is up. On a loaded 2-core machine `ray start` now and then gives up on its
    own GCS ("Failed to get node info ... Deadline Exceeded", the node "timed out during
    startup"): that is the harness failing to set up, not the code under test, so it gets one
    more try on fresh ports and a fresh folder."""
    for attempt in range(START_ATTEMPTS):
        head = _launch_head(tmp_path, num_cpus, dashboard, env)
        try:
            _wait_ready(head, START_TIMEOUT_S)
            return head
        except RuntimeError as exc:
            _remove_head(head)
            if attempt + 1 == START_ATTEMPTS:
                raise
            log.warning("ray start failed (attempt %d of %d), starting again: %s",
                        attempt + 1, START_ATTEMPTS, exc)
    raise AssertionError("unreachable")


def _launch_head(tmp_path: Path, num_cpus: int, dashboard: bool,
                 env: dict[str, str] | None) -> Head:
    token = secrets.token_hex(32)
    # Short on purpose: Ray's unix sockets live under it and their paths have a length limit.
    temp_dir = tempfile.mkdtemp(prefix="rmhead-")
    gcs, dash, agent_http, agent_grpc, rt_env, client, metrics = free_ports(7)
    env = {**head_env(token), **(env or {})}
    # A test's head stops at once: on SIGTERM Ray 2.60 first drains the node, for up to 30 s
    # while an actor (the detached router) lives.
    start_env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    log_path = tmp_path / "ray-start.log"
    cmd = [
        ray_cli(), "start", "--head", "--block", f"--port={gcs}", f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}",
        f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
        "--disable-usage-stats", f"--include-dashboard={str(dashboard).lower()}",
        # A port even without the dashboard: Ray starts a minimal one on 8265 otherwise, which
        # another cluster on the machine may hold.
        f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=start_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    head = Head(address=f"127.0.0.1:{gcs}", env=env, token=token,
                dashboard_url=f"http://127.0.0.1:{dash}" if dashboard else None, proc=proc,
                log_path=log_path, temp_dir=temp_dir, metrics_port=metrics)
    return head


__all__ = ["Head", "free_ports", "head_env", "kill_matching", "ray_cli", "ray_head",
           "stop_group"]
