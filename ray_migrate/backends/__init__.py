"""Backends: one module per engine behind the contract in ``base``.

``open_backend`` is the one way to open an endpoint. A Qdrant local-mode folder admits one
process, so under Ray it is opened through the actor that owns it (``qdrant_host``).
"""

from __future__ import annotations

from ray_migrate.backends.base import Backend, Capabilities, SearchHit
from ray_migrate.config import LanceEndpoint, QdrantEndpoint

__all__ = ["Backend", "Capabilities", "SearchHit", "open_backend"]


def open_backend(endpoint: QdrantEndpoint | LanceEndpoint,
                 payload_schema: dict[str, str] | None = None,
                 hosted: bool | None = None) -> Backend:
    """Open ``endpoint`` in this process.

    ``hosted``: for a Qdrant local path, go through its hosting actor (default: whenever Ray
    is initialized in this process).
    """
    if endpoint.kind == "qdrant":
        if endpoint.path:
            import ray

            if hosted is None:
                hosted = ray.is_initialized()
            if hosted:
                from ray_migrate.backends.qdrant_host import hosted_qdrant

                return hosted_qdrant(endpoint)
        from ray_migrate.backends.qdrant import QdrantBackend

        return QdrantBackend(endpoint)
    from ray_migrate.backends.lancedb import LanceBackend

    return LanceBackend(endpoint, payload_schema=payload_schema)
