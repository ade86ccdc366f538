"""A client's config with its own credentials: the router hands clients the migration's config
without any (``MigrationConfig.public_dump``), and each client brings its own."""

from __future__ import annotations

import os
from typing import Any

from ray_migrate.config import LanceEndpoint, MigrationConfig, QdrantEndpoint
from ray_migrate.errors import ConfigError

Credential = str | dict[str, str] | None  # one for every side, or {"source": .., "target": ..}


def with_credentials(cfg: MigrationConfig, api_key: Credential = None,
                     storage_options: dict[str, Any] | None = None,
                     redacted: list[str] | tuple[str, ...] = ()) -> MigrationConfig:
    """A client's config (``public_dump``, from the router) with its own credentials: ``api_key``
    (default: ``QDRANT_API_KEY`` of this process) for a Qdrant server, ``storage_options``
    merged over the non-secret ones for LanceDB (LanceDB reads ``AWS_*`` itself). Each may be
    one value for both sides or ``{"source": ..., "target": ...}``. A Qdrant server whose
    migration had an api_key and gets none here is refused at once, naming the fix."""
    def per_side(value: Any, side: str, is_map: bool) -> Any:
        if isinstance(value, dict) and set(value) <= {"source", "target"} and value and (
                not is_map or all(isinstance(v, dict) for v in value.values())):
            return value.get(side)
        return value

    update = {}
    for side in ("source", "target"):
        ep = getattr(cfg, side)
        if isinstance(ep, QdrantEndpoint) and ep.url:
            key = per_side(api_key, side, False) or os.environ.get("QDRANT_API_KEY") \
                or ep.api_key
            if not key and f"{side}.api_key" in redacted:
                raise ConfigError(f"the {side} of migration {cfg.migration_id!r} is a Qdrant "
                                  f"server that needs an api_key: pass RoutedCollection.connect"
                                  f"(..., api_key=...) or set QDRANT_API_KEY in this process")
            update[side] = ep.model_copy(update={"api_key": key})
        elif isinstance(ep, LanceEndpoint):
            own = per_side(storage_options, side, True) or {}
            update[side] = ep.model_copy(
                update={"storage_options": {**ep.storage_options, **own}})
    return cfg.model_copy(update=update)
