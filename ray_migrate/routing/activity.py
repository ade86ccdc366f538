"""Whether any client did anything since a moment, as the router saw it.

A wave's pause is there for the clients' traffic to show how the moved units behave (the SLO
gates judge it). With no client connected, no write lease taken and no request counted since
the wave began there is nothing to observe, and the pause ends at once (``waves``). Plain
Python, tested without Ray; ``routing.actor.Router.client_activity`` fills it in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ClientActivity:
    live_clients: int = 0  # clients connected now (``presence``: a routes watch under way)
    last_seen: float | None = None  # the last hello or routes watch of any client
    last_lease: float | None = None  # the last write lease any client began
    newest_stats: int | None = None  # the second of the newest client bucket handed in

    def since(self, t: float) -> str | None:
        """Why clients count as active since ``t`` (epoch seconds); None: nothing since."""
        if self.live_clients:
            return f"{self.live_clients} client(s) connected"
        if self.last_lease is not None and self.last_lease >= t:
            return "a client took a write lease since the wave began"
        if self.last_seen is not None and self.last_seen >= t:
            return "a client was connected since the wave began"
        if self.newest_stats is not None and self.newest_stats >= int(t):
            return "clients' requests were counted since the wave began"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ClientActivity:
        return cls(**doc)
