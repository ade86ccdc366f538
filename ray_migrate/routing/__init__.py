"""The routing concept: which backend owns each unit, and the protocol that moves it.

- ``records``: phases, their transitions, a unit's route, a lease and a change-log entry;
- ``table``: the rules (``RoutingTable``), plain Python with no Ray;
- ``durable``: what of the table is written when, and how a restarted router rebuilds it;
- ``client_rows``: what clients wrote, kept for the appliers of the change log;
- ``appliers``: who may apply change logs and when (cutovers, upkeep, followers);
- ``presence``: drivers and clients, and when a hosted Qdrant store may be released;
- ``watch``: the client's side of it (``RouteCache``: cached routes, heartbeat, goodbye);
- ``actor``: the named, detached Ray actor around the table, and ``RouterHandle``.

``docs/PROTOCOL.md`` states the protocol as numbered invariants.
"""

from ray_migrate.routing.actor import (
    NAMESPACE,
    Router,
    RouterHandle,
    get_router,
    router_name,
    start_router,
)
from ray_migrate.routing.records import (
    CAPTURING,
    Lease,
    LogEntry,
    Phase,
    TransitionError,
    UnitRoute,
)
from ray_migrate.routing.table import RoutingTable

__all__ = ["CAPTURING", "NAMESPACE", "Lease", "LogEntry", "Phase", "Router", "RouterHandle",
           "RoutingTable", "TransitionError", "UnitRoute", "get_router", "router_name",
           "start_router"]
