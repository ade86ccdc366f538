"""Whether the Ray cluster can run a command at all, found out within a bound instead of a
hang: something listens at the address given, and some node can hold a unit worker. Each
failure is a ``ClusterError`` (the CLI exits 3) that names the address or the resource."""

from __future__ import annotations

import logging
import socket
from typing import Any

from ray_migrate.config import MigrationConfig
from ray_migrate.errors import ClusterError

log = logging.getLogger(__name__)

PROBE_S = 5.0  # a Ray head answers a TCP connect at once; ray.init retries for minutes


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of 'host:port' or 'ray://host:port'; None for 'auto', 'local', others."""
    rest = address.removeprefix("ray://")
    if "://" in rest or ":" not in rest:
        return None
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def probe_address(address: str | None, timeout_s: float = PROBE_S) -> None:
    """ClusterError, within ``timeout_s``, when nothing accepts a connection at ``address``."""
    target = _host_port(address) if address else None
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return
    except OSError as err:
        raise ClusterError(
            f"no Ray cluster at --address {address!r}: {err.strerror or err} within "
            f"{timeout_s:g}s; start one there (`ray start --head --port "
            f"{target[1]}`) or give the address of a running head") from None


def worker_needs(cfg: MigrationConfig) -> dict[str, float]:
    """The resources one unit worker asks Ray for (``pool._actor_options``)."""
    res = cfg.copy_cfg.worker_resources
    need = {"CPU": res.num_cpus, **res.resources}
    if res.memory_mb:
        need["memory"] = float(res.memory_mb) * 1024 * 1024
    return {k: v for k, v in need.items() if v > 0}


def check_feasible(cfg: MigrationConfig, nodes: list[dict[str, Any]] | None = None) -> None:
    """ClusterError when no live node can hold one unit worker: its actors would wait for the
    resources forever. Checked before the target, the router or a worker is created."""
    import ray

    need = worker_needs(cfg)
    alive = [n.get("Resources", {}) for n in (ray.nodes() if nodes is None else nodes)
             if n.get("Alive")]
    if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in alive):
        return
    short = [k for k, v in need.items() if not any(node.get(k, 0) >= v for node in alive)]
    most = {k: max((node.get(k, 0) for node in alive), default=0) for k in short}
    raise ClusterError(
        "no node of the Ray cluster can start a unit worker: copy.worker_resources asks for "
        + ", ".join(f"{k}={need[k]:g}" for k in short)
        + " and the most any node has is "
        + ", ".join(f"{k}={most[k]:g}" for k in short)
        + "; lower copy.worker_resources or add a node that has them (see `ray status`)")
