"""Preflight: what every command checks before anything is written and before Ray starts.

The source exists and holds points, its server answers, the plan can be made (which refuses
renames onto names the source already uses), and a target that exists can hold the plan's
points. ``plan``, ``run`` and ``verify`` read the same config, so they run the same checks.
Opening a missing local folder would create it (Qdrant local mode and LanceDB both do), so
missing local folders are judged from the file system, never opened.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from ray_migrate.backends import Backend, open_backend
from ray_migrate.config import LanceEndpoint, MigrationConfig, QdrantEndpoint
from ray_migrate.errors import ConfigError, IncompatibleTargetError, TerminalError, TransientError
from ray_migrate.plan import Plan, make_plan, stored_plan
from ray_migrate.state import StateStore

log = logging.getLogger(__name__)


class _Busy(Exception):
    """A Qdrant local folder held by another process (the router's store host of a running
    migration): the checks run later, through that host, still before anything is written."""


def _local(ep: QdrantEndpoint | LanceEndpoint) -> tuple[str, str] | None:
    """(field, folder) of an endpoint on the local file system, else None."""
    if isinstance(ep, QdrantEndpoint):
        return ("path", ep.path) if ep.path else None
    return None if "://" in ep.uri else ("uri", ep.uri)


def _unreachable(side: str, ep: QdrantEndpoint | LanceEndpoint, err: Exception) -> ConfigError:
    text = str(err)
    grpc = re.search(r'details = "([^"]*)"', text)  # gRPC errors are a page long
    reason = (grpc.group(1) if grpc else text.splitlines()[0])[-240:]
    if isinstance(ep, QdrantEndpoint):
        where = f"{side}.url: cannot reach Qdrant at {ep.url!r} within timeout_s={ep.timeout_s:g}"
    else:
        where = f"{side}.uri: cannot reach {ep.uri!r}"
    return ConfigError(f"{where} ({reason}); check the address and that the server runs and "
                       "is reachable from here")


def _open(side: str, ep: QdrantEndpoint | LanceEndpoint,
          payload_schema: dict[str, str] | None = None) -> Backend | None:
    """The endpoint opened in this process (through its host if Ray runs here), or None when
    its local folder does not exist."""
    local = _local(ep)
    if local is not None and not os.path.exists(local[1]):
        return None
    try:
        return open_backend(ep, payload_schema=payload_schema)
    except TerminalError as err:
        if local is not None and isinstance(ep, QdrantEndpoint) and isinstance(
                err.__cause__, RuntimeError):
            raise _Busy(str(err)) from err
        raise


def _call(side: str, ep: QdrantEndpoint | LanceEndpoint, fn: Any, *args: Any) -> Any:
    """``fn(*args)``; a transport error at this first contact is a wrong address (exit 2)."""
    try:
        return fn(*args)
    except TransientError as err:
        raise _unreachable(side, ep, err) from None


def preflight(cfg: MigrationConfig, store: StateStore) -> Plan | None:
    """The plan (stored, or made now and left unsaved) once every check passed; None when a
    Qdrant local folder is held by another process (then the checks run after Ray starts)."""
    plan = stored_plan(cfg, store)
    if plan is not None:
        return plan  # checked when it was made; the target may hold copied units by now
    try:
        plan = _plan(cfg)
        _check_target(cfg, plan)
    except _Busy as busy:
        log.info("preflight deferred until Ray runs: %s", busy)
        return None
    return plan


def _plan(cfg: MigrationConfig) -> Plan:
    ep = cfg.source
    source = _open("source", ep)
    if source is None:
        field, folder = _local(ep) or ("", "")
        raise ConfigError(f"source.{field}: {folder!r} does not exist; point source.{field} "
                          "at the folder that holds the source")
    try:
        if not _call("source", ep, source.exists):
            what = "collection" if isinstance(ep, QdrantEndpoint) else "table"
            raise ConfigError(f"source.{what}: {ep.name!r} does not exist at "
                              f"{ep.location!r}; check its name and location")
        return _call("source", ep, make_plan, cfg, source)
    finally:
        source.close()


def _check_target(cfg: MigrationConfig, plan: Plan) -> None:
    ep = cfg.target
    target = _open("target", ep, plan.target_info.payload_schema)
    if target is None:
        return  # created by the run
    try:
        if _call("target", ep, target.exists):
            _call("target", ep, target.check_compatible, plan.target_info)
    except IncompatibleTargetError as err:
        what = "collection" if isinstance(ep, QdrantEndpoint) else "table"
        raise IncompatibleTargetError(
            f"target: {err}; point target at a new {what} (ray_migrate creates it) or drop "
            "the existing one") from None
    finally:
        target.close()
