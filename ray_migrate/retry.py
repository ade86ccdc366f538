"""Bounded retries of transient errors; terminal ones go straight up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from ray_migrate.errors import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


def with_retries(fn: Callable[[], T], *, attempts: int, backoff_s: float, what: str) -> T:
    """Call ``fn``; on TransientError wait ``backoff_s * 2**i`` (capped at 30 s) and try again."""
    for i in range(attempts + 1):
        try:
            return fn()
        except TransientError as err:
            if i == attempts:
                raise
            delay = min(backoff_s * 2**i, 30.0)
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, err, i + 1, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
