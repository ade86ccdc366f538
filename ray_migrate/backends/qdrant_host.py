"""One Ray actor per Qdrant local-mode folder, serving every worker and client of the cluster.

Qdrant local mode admits one process per folder. ``hosted_qdrant`` gets or creates the detached
actor ``rm:qdrant-local:<sha1(abs path)[:12]>`` (namespace ``ray_migrate``), pinned to the
node given (else the calling process's: the folder is local to it), and returns a
``HostedBackend`` proxy whose methods forward to it. The actor holds one QdrantClient for the
folder and one QdrantBackend per collection; it runs one call at a time, so large writes go in
several calls (``HOSTED_WRITE_ROWS``). ``release_hosted_qdrant`` closes and kills it; the
migration's router decides when (``routing.presence``).

A proxy outlives its actor: when the actor was released or died, the proxy gets or creates it
again on the node that hosted it (the ``meta`` call says which) and calls again, with bounded,
jittered backoff (``REACQUIRE_*``). That is safe because every forwarded call is idempotent:
upserts and deletes by id, reads, and a ``create`` that is only retried when the collection is
still missing.

Errors: a ray_migrate error raised in the actor is re-raised in the caller as that same error
(the original instance, unwrapped from Ray's RayTaskError); an actor still unavailable after
the retries is a TransientError (``StoreUnavailableError``); any other failure a TerminalError.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from ray_migrate import failpoints
from ray_migrate.backends.base import Backend, Cursor, SearchHit
from ray_migrate.backends.qdrant import scan_by_pages
from ray_migrate.checksum import Digest
from ray_migrate.config import QdrantEndpoint
from ray_migrate.errors import RayMigrateError, TerminalError, TransientError
from ray_migrate.schema import CollectionInfo
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

NAMESPACE = "ray_migrate"
_MAX_TASK_RETRIES = 3  # every forwarded method is idempotent (upsert, delete by id, reads)
# Points per upsert call to the actor. It runs one call at a time, and local mode writes
# about 1,100 to 1,500 points/s (65 ms per 100 points in a one-off measurement), so a catch-up's write
# of 1,000 points would hold every client call for 0.65 s or more; in calls of this size a
# client call waits for about 0.1 s at most.
HOSTED_WRITE_ROWS = 128
# A call that finds its actor gone gets or creates it again and retries: first after
# REACQUIRE_FIRST_S, doubling up to REACQUIRE_MAX_S, each delay jittered by up to half of it,
# for REACQUIRE_BUDGET_S in all (a new actor starts in about 1 to 3 s on a busy machine).
REACQUIRE_FIRST_S = 0.05
REACQUIRE_MAX_S = 2.0
REACQUIRE_BUDGET_S = 60.0


class StoreUnavailableError(TransientError):
    """The hosting actor is gone or going (released, killed, its node lost)."""


def actor_name(path: str) -> str:
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    return f"rm:qdrant-local:{digest}"


class QdrantHost:
    """The actor body: owns the folder's client and one backend per collection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.client: Any = None
        self.backends: dict[str, Any] = {}
        self.released = False

    def _backend(self, endpoint: QdrantEndpoint) -> Any:
        from ray_migrate.backends.qdrant import QdrantBackend

        if self.released:  # between close() and the kill: the caller retries on a new actor
            raise StoreUnavailableError(f"hosted Qdrant for {self.path!r} is being released")
        backend = self.backends.get(endpoint.collection)
        if backend is None:
            if self.client is None:
                from qdrant_client import QdrantClient

                try:
                    self.client = QdrantClient(path=self.path)
                except RuntimeError as err:
                    raise TerminalError(
                        f"the hosting actor cannot open Qdrant local folder {self.path!r}: {err}; "
                        "close every other client of that folder") from err
            backend = QdrantBackend(endpoint, client=self.client)
            self.backends[endpoint.collection] = backend
        return backend

    def call(self, endpoint: QdrantEndpoint, method: str, *args: Any, **kwargs: Any) -> Any:
        backend = self._backend(endpoint)
        if method == "meta":
            import ray

            return backend.kind, backend.capabilities, ray.get_runtime_context().get_node_id()
        if method == "create" and kwargs.pop("if_missing", False) and backend.exists():
            return None  # a retry of a create that went through before the actor died
        failpoints.hit("qdrant_host.call", method=method, path=self.path,
                       unit=args[0].unit_id if args and isinstance(args[0], UnitSpec) else None)
        return getattr(backend, method)(*args, **kwargs)

    def close(self) -> bool:
        self.released = True
        self.backends.clear()
        if self.client is not None:
            self.client.close()
            self.client = None
        return True


def _get_or_create(path: str, node_id: str | None = None) -> Any:
    """The folder's actor; a new one is pinned to ``node_id`` (default: this process's node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = node_id or ray.get_runtime_context().get_node_id()
    cls = ray.remote(QdrantHost)
    return cls.options(
        name=actor_name(path), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        num_cpus=0, max_restarts=-1, max_task_retries=_MAX_TASK_RETRIES,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
    ).remote(path)


def _unwrap(err: BaseException) -> BaseException:
    """The ray_migrate error to raise in the caller for an error from the actor."""
    import ray.exceptions as rex

    if isinstance(err, rex.RayTaskError):
        cause = err.cause
        if isinstance(cause, RayMigrateError):
            return cause
        return TerminalError(f"hosted Qdrant: {type(cause).__name__}: {cause}")
    if isinstance(err, RayMigrateError):
        return err
    if isinstance(err, (rex.RayActorError, rex.ActorUnavailableError, rex.GetTimeoutError)):
        return StoreUnavailableError(f"hosted Qdrant actor unavailable: {err}")
    return TerminalError(f"hosted Qdrant: {type(err).__name__}: {err}")


class HostedBackend(Backend):
    """A Backend whose every call runs in the actor that owns the local folder."""

    def __init__(self, endpoint: QdrantEndpoint, actor: Any, node_id: str | None = None,
                 budget_s: float = REACQUIRE_BUDGET_S) -> None:
        self.endpoint = endpoint
        self.actor = actor
        self.node_id = node_id
        self.budget_s = budget_s
        self.kind, self.capabilities, self.node_id = self._call("meta")

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Forward one call; while the actor is gone, get or create it again on its node and
        call again (see the module's docstring)."""
        deadline = time.monotonic() + self.budget_s
        delay = REACQUIRE_FIRST_S
        while True:
            try:
                return self._once(method, *args, **kwargs)
            except StoreUnavailableError as err:
                if time.monotonic() + delay > deadline:
                    raise
                log.info("hosted Qdrant %s: %s; calling %s again", self.endpoint.path, err,
                         method)
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, REACQUIRE_MAX_S)
            try:
                self.actor = _get_or_create(self.endpoint.path or "", self.node_id)
            except Exception as err:  # noqa: BLE001 - the name is still taken: try again
                log.debug("hosted Qdrant %s: get or create: %s", self.endpoint.path, err)
            if method == "create":
                kwargs = {**kwargs, "if_missing": True}

    def _once(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        try:
            return ray.get(self.actor.call.remote(self.endpoint, method, *args, **kwargs))
        except Exception as err:  # RayTaskError(TerminalError) is both: unwrap it
            raise _unwrap(err) from None

    def exists(self) -> bool:
        return self._call("exists")

    def describe(self, sample_size: int = 1000) -> CollectionInfo:
        return self._call("describe", sample_size)

    def create(self, info: CollectionInfo) -> None:
        self._call("create", info)

    def check_compatible(self, info: CollectionInfo) -> None:
        self._call("check_compatible", info)

    def tenant_counts(self, field: str) -> dict[Any, int]:
        return self._call("tenant_counts", field)

    def id_boundaries(self, count: int) -> list[Any]:
        return self._call("id_boundaries", count)

    def count(self, unit: UnitSpec) -> int:
        return self._call("count", unit)

    def scan_page(self, unit: UnitSpec, batch_size: int,
                  cursor: Cursor | None = None) -> tuple[pa.Table, Cursor | None]:
        return self._call("scan_page", unit, batch_size, cursor)

    def scan(self, unit: UnitSpec, batch_size: int,
             cursor: Cursor | None = None) -> Iterator[tuple[pa.Table, Cursor]]:
        return scan_by_pages(self.scan_page, unit, batch_size, cursor)

    def list_units(self, units: Sequence[UnitSpec]) -> str | None:
        return self._call("list_units", list(units))  # the lists stay in the actor

    def fetch(self, ids: Sequence[Any]) -> pa.Table:
        return self._call("fetch", list(ids))

    def checksum(self, unit: UnitSpec, batch_size: int = 2000) -> Digest:
        return self._call("checksum", unit, batch_size)  # computed next to the data

    def search(self, vector: Sequence[float], k: int, vector_name: str,
               unit: UnitSpec | None = None, within: Sequence[UnitSpec] | None = None,
               exact: bool = True) -> list[SearchHit]:
        return self._call("search", [float(x) for x in vector], k, vector_name, unit,
                          None if within is None else list(within), exact)

    def upsert(self, table: pa.Table,
               within: Sequence[UnitSpec] | None = None) -> list[Any]:
        """In calls of at most ``HOSTED_WRITE_ROWS`` points, so other callers' calls (clients'
        reads and writes) run in between. Each call is an idempotent upsert by id, so a retry
        after a partial write is harmless, as for any engine write."""
        kept: list[Any] = []
        for start in range(0, max(table.num_rows, 1), HOSTED_WRITE_ROWS):
            part = table.slice(start, HOSTED_WRITE_ROWS)
            kept += (self._call("upsert", part) if within is None
                     else self._call("upsert", part, list(within))) or []
        return kept

    def delete(self, ids: Sequence[Any], unit: UnitSpec | None = None) -> None:
        self._call("delete", list(ids), unit)

    def delete_many(self, parts: Sequence[tuple[Sequence[Any], UnitSpec | None]]) -> None:
        self._call("delete_many", [(list(ids), unit) for ids, unit in parts])

    def stored_form(self, table: pa.Table) -> pa.Table:
        return self._call("stored_form", table)

    def finalize(self, options: Any) -> dict[str, Any]:
        return self._call("finalize", options)

    def close(self) -> None:
        """The actor stays up for other users; ``release_hosted_qdrant`` stops it."""


def hosted_qdrant(endpoint: QdrantEndpoint, node_id: str | None = None) -> Backend:
    """The proxy of ``endpoint``'s collection, served by its folder's actor (created if
    needed, on ``node_id``: the node that holds the folder, by default this process's)."""
    if not endpoint.path:
        raise TerminalError("hosted_qdrant serves Qdrant local folders (path), not servers (url)")
    path = os.path.abspath(endpoint.path)
    endpoint = endpoint.model_copy(update={"path": path})
    return HostedBackend(endpoint, _get_or_create(path, node_id), node_id)


def hosted_path(path: str) -> bool:
    """Whether an actor hosts ``path`` now."""
    import ray

    try:
        ray.get_actor(actor_name(path), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _hosted_actor(path: str) -> Any | None:
    import ray

    try:
        return ray.get_actor(actor_name(path), namespace=NAMESPACE)
    except ValueError:
        return None


def _kill_and_wait_gone(actor: Any, path: str) -> None:
    """Kill it and wait until the name is free, so no one gets the corpse."""
    import ray

    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _hosted_actor(path) is not None:
        time.sleep(0.05)
    log.info("released hosted Qdrant for %s", path)


def release_hosted_qdrant(path: str) -> bool:
    """Close and kill the actor hosting ``path``, if there is one; True if there was. Once it
    returns, the folder is free for any process to open."""
    import ray

    actor = _hosted_actor(path)
    if actor is None:
        return False
    try:
        ray.get(actor.close.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - the kill below frees the folder anyway
        log.warning("hosted Qdrant for %s did not close cleanly", path, exc_info=True)
    _kill_and_wait_gone(actor, path)
    return True


async def release_hosted_qdrant_async(path: str) -> bool:
    """``release_hosted_qdrant`` for an async actor (the router): the close is awaited, not
    waited for with ``ray.get``, and the blocking look-ups run in a thread. A ``ray.get`` in
    the router's process makes Ray warn of a blocked event loop once, and that one false
    alarm would hide a real one later."""
    import asyncio

    actor = await asyncio.to_thread(_hosted_actor, path)
    if actor is None:
        return False
    try:
        await asyncio.wait_for(actor.close.remote(), 60)
    except Exception:  # noqa: BLE001 - the kill below frees the folder anyway
        log.warning("hosted Qdrant for %s did not close cleanly", path, exc_info=True)
    await asyncio.to_thread(_kill_and_wait_gone, actor, path)
    return True


__all__ = ["HostedBackend", "StoreUnavailableError", "hosted_path", "hosted_qdrant",
           "release_hosted_qdrant", "release_hosted_qdrant_async"]
