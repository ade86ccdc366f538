"""One driver per migration: a lease under ``state_uri``, with the router as witness.

The driver that runs a migration (``ray-migrate run``, the Ray job) holds
``<state_uri>/<migration_id>/driver.json`` and renews it every ``HEARTBEAT_S`` from a thread;
the router records the same holder, and since it answers one call at a time, two drivers of one
cluster cannot both win. A second driver refuses while the holder is alive and takes over once
it is dead: its lease not renewed for ``EXPIRE_S``, or its pid gone on this host. Only the
holder starts unit workers (``pool.start_workers``), so a second run never kills a live run's
actors. A driver killed with SIGKILL leaves its lease to expire.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ray_migrate.errors import TerminalError
from ray_migrate.state import StateStore

if TYPE_CHECKING:
    from ray_migrate.routing.actor import RouterHandle

log = logging.getLogger(__name__)

LEASE_KEY = "driver.json"
HEARTBEAT_S = 1.0
EXPIRE_S = 6.0  # a holder not heard of for this long (six heartbeats) is dead
ROUTER_CALL_S = 5.0  # a heartbeat does not wait longer for a router that restarts


class DriverBusyError(TerminalError):
    """Another live driver runs this migration (the CLI exits 2)."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def holder_alive(info: dict[str, Any] | None, now: float, expire_s: float = EXPIRE_S) -> bool:
    """Is the driver of this lease record alive: renewed lately, and, on this host, its pid
    still there."""
    if not info or info.get("released_at") is not None:
        return False
    if now - float(info.get("renewed_at", 0.0)) > expire_s:
        return False
    return info.get("host") != socket.gethostname() or pid_alive(int(info["pid"]))


def describe(info: dict[str, Any], now: float | None = None) -> str:
    """'pid 123 on host h (ray-migrate run, Ray job 01000000), since 12:00:01, renewed 0.4 s
    ago': who to wait for, or which process to kill."""
    now = time.time() if now is None else now
    job = f", Ray job {info['ray_job_id']}" if info.get("ray_job_id") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started_at"]))
    return (f"pid {info['pid']} on host {info['host']} (ray-migrate {info['command']}{job}), "
            f"since {since}, renewed {max(0.0, now - info['renewed_at']):.1f}s ago")


def running_driver(store: StateStore, now: float | None = None) -> dict[str, Any] | None:
    """The live driver's lease record, or None when no driver runs the migration."""
    info = store.read(LEASE_KEY)
    now = time.time() if now is None else now
    return info if holder_alive(info, now) else None


def busy_message(migration_id: str, info: dict[str, Any], now: float | None = None) -> str:
    return (f"migration {migration_id!r} is already being run by another driver: "
            f"{describe(info, now)}. Wait for it to finish (`ray-migrate status CONFIG` shows "
            f"its progress), or, if it hangs, kill it (`kill {info['pid']}` on host "
            f"{info['host']}); a new run takes over at once when that process is gone, or "
            f"{EXPIRE_S:.0f}s after its last renewal")


class DriverLease:
    """This driver's lease: ``check`` before any work, ``acquire`` once the router is up,
    ``release`` at exit."""

    def __init__(self, store: StateStore, command: str = "run",
                 heartbeat_s: float = HEARTBEAT_S, expire_s: float = EXPIRE_S,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.heartbeat_s, self.expire_s, self.clock = heartbeat_s, expire_s, clock
        now = clock()
        self.info: dict[str, Any] = {
            "token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "command": command, "started_at": now, "renewed_at": now,
            "ray_job_id": None, "ray_node_id": None}
        self.replaced: dict[str, Any] | None = None  # the dead driver this one took over from
        self.lost: dict[str, Any] | None = None  # the driver that took this lease over
        self.router: RouterHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.info["token"]

    @property
    def held(self) -> bool:
        return self._thread is not None and self.lost is None

    def check(self) -> None:
        """Refuse at once while another live driver holds the lease (DriverBusyError)."""
        info = self.store.read(LEASE_KEY)
        if info and info.get("token") != self.token and holder_alive(info, self.clock(),
                                                                      self.expire_s):
            raise DriverBusyError(busy_message(self.store.migration_id, info, self.clock()))

    def acquire(self, router: RouterHandle | None) -> None:
        """Claim the lease through the router (the witness that serializes claims), write it
        and start renewing it."""
        self.check()
        old = self.store.read(LEASE_KEY)
        dead = old if old and old.get("token") != self.token and old.get(
            "released_at") is None else None
        # Known dead only when its pid is gone from this host; otherwise the router judges
        # by its own clock whether it was heard of lately (two hosts' clocks may disagree).
        gone = dead is not None and dead.get("host") == socket.gethostname() and not \
            pid_alive(int(dead["pid"]))
        self._ray_ids()
        if router is not None:
            held = router.call("claim_driver", self.info, self.expire_s,
                               dead["token"] if gone else None)
            if held is not None:
                raise DriverBusyError(busy_message(self.store.migration_id, held))
        self.router = router
        self.replaced = dead
        if dead:
            log.warning("taking over migration %s from a dead driver: %s",
                        self.store.migration_id, describe(dead, self.clock()))
        self._write()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="rm-driver-lease")
        self._thread.start()

    def _ray_ids(self) -> None:
        try:
            import ray

            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                self.info["ray_job_id"], self.info["ray_node_id"] = (ctx.get_job_id(),
                                                                     ctx.get_node_id())
        except Exception as err:  # noqa: BLE001 - only shown to operators
            log.debug("no Ray ids for the driver lease: %s", err)

    def _write(self, **extra: Any) -> None:
        self.info["renewed_at"] = self.clock()
        self.store.write(LEASE_KEY, {**self.info, "released_at": None, **extra})

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except Exception as err:  # noqa: BLE001 - the next beat tries again
                log.warning("driver lease: renewal failed: %s: %s", type(err).__name__, err)
            if self.lost is not None:
                return

    def renew(self) -> bool:
        """Renew the file and the router's record; False (and ``lost`` set) when another
        driver took the lease over meanwhile (this one was taken for dead)."""
        if self.lost is not None:
            return False
        now = self.clock()
        info = self.store.read(LEASE_KEY)
        if info and info.get("token") != self.token and holder_alive(info, now, self.expire_s):
            return self._lose(info)
        if self.router is not None:
            try:
                held = self.router.call("claim_driver", self.info, self.expire_s, None,
                                        timeout_s=ROUTER_CALL_S)
            except Exception as err:  # noqa: BLE001 - a restarting router: the file goes on
                log.debug("driver lease: router not reached: %s", err)
                held = None
            if held is not None:
                return self._lose(held)
        self._write()
        return True

    def _lose(self, other: dict[str, Any]) -> bool:
        self.lost = other
        log.error("migration %s: this driver lost its lease to %s; it stops driving",
                  self.store.migration_id, describe(other, self.clock()))
        return False

    def release(self) -> None:
        """Stop renewing and let go, unless another driver holds the lease by now."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._thread is None or self.lost is not None:
            return
        self._thread = None
        if self.router is not None:
            try:
                self.router.call("release_driver", self.token, timeout_s=ROUTER_CALL_S)
            except Exception as err:  # noqa: BLE001 - then its record expires
                log.warning("driver lease: the router did not hear the release: %s", err)
        info = self.store.read(LEASE_KEY)
        if info is None or info.get("token") == self.token:
            self._write(released_at=self.clock())
