"""Backends: one module per engine behind the contract in ``base``.

``open_backend`` is the one way to open an endpoint. A Qdrant local-mode folder admits one
process, so under Ray it is opened through the actor that owns it (``qdrant_host``). Every
backend it returns retries transient errors of idempotent calls (``retrying``).

Test and chaos hook: with ``RAY_MIGRATE_BACKEND_WRAPPER=module:function`` in the environment
(of the driver, the cluster's workers and the clients), every opened backend is passed as
``function(backend, endpoint)`` and its return value used instead, inside the retries, so an
injected fault meets the product's retries as an engine's own would (see docs/CHAOS.md).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ray_migrate.backends.base import Backend, Capabilities, SearchHit
from ray_migrate.backends.retrying import RetryingBackend
from ray_migrate.config import LanceEndpoint, QdrantEndpoint
from ray_migrate.errors import ConfigError

__all__ = ["Backend", "Capabilities", "SearchHit", "WRAPPER_ENV", "open_backend"]

WRAPPER_ENV = "RAY_MIGRATE_BACKEND_WRAPPER"


def open_backend(endpoint: QdrantEndpoint | LanceEndpoint,
                 payload_schema: dict[str, str] | None = None,
                 hosted: bool | None = None, node_id: str | None = None) -> Backend:
    """Open ``endpoint`` in this process.

    ``hosted``: for a Qdrant local path, go through its hosting actor (default: whenever Ray
    is initialized in this process); ``node_id``: the node a new hosting actor goes to
    (default: this process's).
    """
    backend = _open(endpoint, payload_schema, hosted, node_id)
    wrapper = _wrapper()
    if wrapper is not None:
        backend = wrapper(backend, endpoint)
    return RetryingBackend(backend)


def _open(endpoint: QdrantEndpoint | LanceEndpoint, payload_schema: dict[str, str] | None,
          hosted: bool | None, node_id: str | None) -> Backend:
    if endpoint.kind == "qdrant":
        if endpoint.path:
            import ray

            if hosted is None:
                hosted = ray.is_initialized()
            if hosted:
                from ray_migrate.backends.qdrant_host import hosted_qdrant

                return hosted_qdrant(endpoint, node_id=node_id)
        from ray_migrate.backends.qdrant import QdrantBackend

        return QdrantBackend(endpoint)
    from ray_migrate.backends.lancedb import LanceBackend

    return LanceBackend(endpoint, payload_schema=payload_schema)


def _wrapper() -> Any:
    """The function named by ``RAY_MIGRATE_BACKEND_WRAPPER``, or None when it is unset."""
    spec = os.environ.get(WRAPPER_ENV, "").strip()
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{WRAPPER_ENV}={spec!r}: cannot load it ({err}); it must name "
                          "module:function, importable in every process of the cluster, "
                          "or be unset") from err
