"""Bounded, jittered retries of transient errors (tenacity); terminal ones go straight up.

One policy shape everywhere: at most ``attempts`` calls; before retry n a wait of
``min(max_s, first_s * 2**(n-1))`` times a random factor in [0.5, 1), so processes that failed
together (every worker meeting the same blip) do not all call again at the same moment, and
no single wait exceeds ``max_s``. ``BACKEND`` is what every engine call gets
(``backends.retrying``): short, so a client's write that meets a blip is acknowledged a few
hundred ms later instead of failing, and its whole wait stays bounded.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from ray_migrate.errors import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` calls at most (the first included); exponential waits from ``first_s``,
    capped at ``max_s``, jittered over their upper half."""

    attempts: int
    first_s: float
    max_s: float

    def delay(self, retry: int, rng: Any = None) -> float:
        """The wait before retry number ``retry`` (1 for the first retry)."""
        exp = min(max(retry, 1) - 1, 30)  # 2**30 * first_s is past any cap
        cap = min(self.max_s, self.first_s * 2**exp)
        return cap * (0.5 + 0.5 * (rng or random).random())

    def longest_wait_s(self) -> float:
        """The most all the waits of one call can add up to (the calls' own time aside)."""
        return sum(min(self.max_s, self.first_s * 2**min(i, 30))
                   for i in range(self.attempts - 1))

    def call(self, fn: Callable[[], T], what: str,
             sleep: Callable[[float], None] = time.sleep, rng: Any = None) -> T:
        """``fn()``, called again after each TransientError until it has been called
        ``attempts`` times; then its last error is raised."""
        def wait(state: tenacity.RetryCallState) -> float:
            return self.delay(state.attempt_number, rng)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            log.warning("%s failed (%s: %s); retry %d/%d in %.2fs", what,
                        type(err).__name__, err, state.attempt_number, self.attempts - 1,
                        state.upcoming_sleep)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(self.attempts, 1)), wait=wait,
            retry=tenacity.retry_if_exception_type(TransientError), reraise=True,
            sleep=sleep, before_sleep=before_sleep)
        return retrying(fn)


# Every engine call (see backends.retrying): at most 5 calls, waits of 0.05 to 0.8 s (about
# 1.5 s of waiting in all at worst), so a client write is never held for long.
BACKEND = RetryPolicy(attempts=5, first_s=0.05, max_s=0.8)


def with_retries(fn: Callable[[], T], *, attempts: int, backoff_s: float, what: str,
                 max_s: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn``; on TransientError retry up to ``attempts`` more times, waiting
    ``backoff_s * 2**i`` (capped at ``max_s``), jittered, before each."""
    return RetryPolicy(attempts + 1, backoff_s, max_s).call(fn, what, sleep=sleep)


__all__ = ["BACKEND", "RetryPolicy", "with_retries"]
