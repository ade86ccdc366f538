"""What callers of the router hold: ``RouterHandle`` (calls the actor and waits, retrying
while a killed router restarts), and the router's ``Signal`` (wakes every waiter at once)."""

from __future__ import annotations

import asyncio
import time
from typing import Any


class Signal:
    """Wakes everyone waiting at the moment it fires, once: an asyncio.Event made by the first
    waiter and dropped when set, so a later waiter waits for the next firing."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout_s: float) -> None:
        """Until the next firing, or ``timeout_s``."""
        if self._event is None:
            self._event = asyncio.Event()
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass


class RouterHandle:
    """Calls the router and waits for the answer; retries while a killed router restarts."""

    def __init__(self, actor: Any):
        self.actor = actor

    def call(self, method: str, *args: Any, timeout_s: float = 60.0, **kwargs: Any) -> Any:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get(getattr(self.actor, method).remote(*args, **kwargs))
            except (RayActorError, ActorUnavailableError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)


__all__ = ["RouterHandle", "Signal"]
