"""A wrapper that slows one side's client-facing calls, for the SLO gate test.

Installed through the product's hook (docs/CHAOS.md) in every process of the cluster:

    RAY_MIGRATE_BACKEND_WRAPPER=observe.slow_target:wrap  RM_SLOW_SIDE=target  RM_SLOW_MS=200

Every ``search``, ``upsert`` and ``delete`` of the backend whose folder is named
``RM_SLOW_SIDE`` sleeps ``RM_SLOW_MS`` first, then runs for real; the other side and every other
call are untouched.
"""

from __future__ import annotations

import os
import time
from typing import Any

WRAPPER = "observe.slow_target:wrap"  # tests/ is on every process's PYTHONPATH
SLOWED = ("search", "upsert", "update_in_place", "delete")


def env(side: str = "target", ms: float = 200.0) -> dict[str, str]:
    """The environment that turns the wrapper on."""
    return {"RAY_MIGRATE_BACKEND_WRAPPER": WRAPPER, "RM_SLOW_SIDE": side, "RM_SLOW_MS": str(ms)}


class SlowBackend:
    """Delegates everything to ``real``; ``SLOWED`` calls sleep ``ms`` first."""

    def __init__(self, real: Any, ms: float):
        self.real, self.ms = real, ms

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name not in SLOWED:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            time.sleep(self.ms / 1000)
            return attr(*args, **kwargs)

        return call


def wrap(backend: Any, endpoint: Any) -> Any:
    """The hook's function: the backend of the ``RM_SLOW_SIDE`` folder slowed, others as is."""
    where = getattr(endpoint, "path", None) or getattr(endpoint, "uri", None) or ""
    if os.path.basename(str(where).rstrip("/")) != os.environ.get("RM_SLOW_SIDE", "target"):
        return backend
    return SlowBackend(backend, float(os.environ.get("RM_SLOW_MS", "200")))
