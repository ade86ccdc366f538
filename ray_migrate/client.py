"""``RoutedCollection``: what applications use while their collection moves.

Points are given and returned in the *source's* terms (its payload field and vector names);
writes to the target go through the forward transform and reads from it through the inverse.
Every write asks the router for a lease first (see ``routing.table`` for why that keeps every
acknowledged write), so a client never needs a fresh routing table to be correct: the lease
carries the owner, and a write whose owner changed meanwhile is written again to the new one.

Reads use the cached routing table of ``routing.watch.RouteCache``: one watch call stays
outstanding from ``connect`` to ``close``, keeps the cache current and tells the router that
this client is alive, so the stores it may call stay up (``routing.presence``). A client
opens a side only when a unit routes to it, and reads only the sides that own units: once
every unit is on the target it never calls the source.

With tenant units a point may change tenant: unless the router grants the write wide leases
(no unit captures, one owner: P2a), ``upsert`` looks up where each id lives now, and an id
that lives in another unit is moved, under leases on both units taken together
(the old unit logs a delete, the new one an upsert): the new copy is written to the new
unit's owner and the old copy deleted from the old unit's owner, only where it is still in
that unit (``Backend.delete`` with the unit). Deletes are unit-scoped the same way.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_migrate.backends import Backend, open_backend
from ray_migrate.client_leases import LeasedWrites
from ray_migrate.client_points import check_id, points_table
from ray_migrate.client_scan import ScanReads
from ray_migrate.client_stats import ClientStats, timed
from ray_migrate.config import MigrationConfig
from ray_migrate.credentials import with_credentials
from ray_migrate.errors import InvalidDataError, InvalidPointError
from ray_migrate.metrics import TimedBackend
from ray_migrate.placement import InPlaceOdds, Lookup
from ray_migrate.plan import Plan, label
from ray_migrate.reembed import merge_hits, side_query, similarity
from ray_migrate.routing.actor import RouterHandle, get_router
from ray_migrate.routing.client_rows import encode_rows
from ray_migrate.routing.watch import RouteCache
from ray_migrate.schema import ID, payload_dicts, vectors_to_numpy
from ray_migrate.shadow import Shadow
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)




class _Moved(Exception):
    """Raised before an upsert's engine write: (old unit -> ids that live there now, old
    unit -> its tenant value). The upsert writes again with leases on those units too."""


class _Missed(Exception):
    """Raised by an update in place (P2b) that left a row unreplaced: the upsert looks its
    ids up and writes them all again."""


class _Backends(dict):
    """The client's backends by side, each opened on first use: a side no unit routes to is
    never opened (a Qdrant local store released after the run is not created again)."""

    def __init__(self, opener: Callable[[str], Backend], migration_id: str):
        super().__init__()
        self._open, self._migration_id = opener, migration_id

    def __missing__(self, side: str) -> Backend:  # its engine calls counted and timed
        backend = self[side] = TimedBackend(self._open(side), self._migration_id, side)
        return backend


class RoutedCollection(LeasedWrites, ScanReads):
    """Upsert, delete, retrieve, search and count, routed per unit to its current owner;
    scroll, count and delete by filter (``client_scan``).

    Bad points raise ``errors.InvalidPointError``, a ``ValueError``, naming the id and the
    fault (a wrong dimension, NaN or infinity, a missing vector, an id the collection cannot
    hold: a negative or too large integer, a string for integer ids, or the reverse; a payload
    a LanceDB side cannot hold: ``_check_sides``), before any lease is taken or anything is
    written to either side: the whole call writes nothing.
    """

    def __init__(self, cfg: MigrationConfig, plan: Plan, router: RouterHandle):
        self.cfg, self.plan, self.router = cfg, plan, router
        self.info = plan.source_info
        self.forward = Transform(cfg.transform)
        self.inverse = Transform(cfg.transform, inverse=True) if cfg.transform.invertible else None
        self.units = {u.unit_id: u for u in plan.units}
        self._seen_units: dict[str, UnitSpec] = {}  # tenants first seen while running
        ranges = [u for u in plan.units if u.kind == "id_range"]
        self._range_units = sorted(ranges, key=lambda u: (u.lo is not None, u.lo))
        self._range_los = [u.lo for u in self._range_units[1:]]
        # Two owners at most (source and target); threads start on first use.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rm-write")
        self._lookups = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rm-lookup")
        # The engines' reads of a look-up, both sides at once (``Placement._on_sides``).
        self._reads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rm-read")
        # Ends leases the write need not wait for (P9a), in order, off the write's path.
        self._ender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-end")
        # What this client sees; the watch hands it to the router.
        self.stats = ClientStats(migration_id=cfg.migration_id)
        self.cache = RouteCache(router, cfg.migration_id, self.stats)  # the watch starts now
        self.backends: dict[str, Backend] = _Backends(self._open, cfg.migration_id)
        self.shadow = Shadow(cfg.reads.shadow_percent, self.stats, cfg.migration_id)
        self._odds = InPlaceOdds()  # whether upserts try an update in place first (P2b)

    def _open(self, side: str) -> Backend:
        ep = self.cfg.source if side == "source" else self.cfg.target
        if ep.kind == "qdrant" and ep.path:  # its store lives on the node of the folder
            return open_backend(ep, hosted=True, node_id=self.cache.store_node)
        schema = self.plan.target_info.payload_schema if side == "target" else None
        return open_backend(ep, payload_schema=schema)

    @classmethod
    def connect(cls, migration_id: str, address: str | None = None, *,
                api_key: str | dict[str, str] | None = None,
                storage_options: dict[str, Any] | None = None) -> RoutedCollection:
        """Attach to a running migration from any process that can reach the Ray cluster.

        The router hands out the config without credentials: a Qdrant server's ``api_key``
        comes from ``api_key`` (default: ``QDRANT_API_KEY``), a LanceDB store's from
        ``storage_options`` (default: the ``AWS_*`` environment LanceDB reads); either may be
        ``{"source": ..., "target": ...}`` (``credentials.with_credentials``)."""
        import ray

        if not ray.is_initialized():
            ray.init(address=address or "auto", namespace="ray_migrate",
                     log_to_driver=False, configure_logging=False)
        router = get_router(migration_id)
        info = router.call("describe")
        cfg = with_credentials(MigrationConfig.model_validate(info["config"]), api_key,
                               storage_options, info.get("redacted", ()))
        return cls(cfg, Plan.from_dict(info["plan"]), router)

    def close(self) -> None:
        """Stop watching the routing table and say goodbye to the router, which releases at
        once the stores no live client needs any more (see ``routing.presence``)."""
        self.cache.close()
        self.shadow.close()
        self._pool.shutdown(wait=False)
        self._lookups.shutdown(wait=False)
        self._reads.shutdown(wait=False)
        self._ender.shutdown(wait=True)  # the leases this client holds end before it goes

    # --- routes ---------------------------------------------------------------------------
    def routes(self) -> dict[str, tuple[str, str]]:
        """unit -> (owner, phase), as the cache or the router has it (``RouteCache.routes``)."""
        return self.cache.routes()

    def _saw_epoch(self, epoch: int) -> None:
        self.cache.saw_epoch(epoch)

    # --- units ----------------------------------------------------------------------------
    def unit_of(self, pid: Any, payload: dict[str, Any] | None) -> str:
        if self.cfg.units.by == "tenant":
            fld = self.cfg.units.field or ""
            value = (payload or {}).get(fld)
            if isinstance(value, (list, dict)):
                raise InvalidPointError(f"point {pid!r}: payload field {fld!r} (units.field) "
                                       "must hold one scalar value, not a list or object")
            return f"{fld}={label(value)}"
        i = bisect.bisect_right(self._range_los, pid) if self._range_los else 0
        return self._range_units[i].unit_id

    def _side(self, owner: str, table: pa.Table) -> pa.Table:
        return table if owner == "source" else self.forward.apply(table)

    def _from_target(self, table: pa.Table) -> pa.Table:
        return self.inverse.apply(table) if self.inverse is not None else table

    # --- input ----------------------------------------------------------------------------
    def to_table(self, points: Iterable[dict[str, Any]] | pa.Table) -> pa.Table:
        """Validate points (ids, dimensions, NaN) and make a canonical table in source terms."""
        return points_table(self.info, points)

    def _check_sides(self, table: pa.Table) -> None:
        """Refuse what either LanceDB side cannot hold (README: payload keys while live):
        the owner must never take a write that catch-up or the rollback sync cannot take to
        the other side. Once every unit is done on the target, the source is out of play."""
        routes = self.routes().values()
        over = bool(routes) and all(r == ("target", "done") for r in routes)
        for side, ep in (("source", self.cfg.source), ("target", self.cfg.target)):
            if ep.kind != "lancedb" or (over and side == "source"):
                continue  # Qdrant payloads are schemaless: it holds any JSON payload
            try:
                self.backends[side].check_writable(self._side(side, table))
            except InvalidPointError:
                raise
            except InvalidDataError as err:
                raise InvalidPointError(f"{err} ({side} {ep.kind})") from None

    # --- writes (the leases around them: ``client_leases``) -----------------------------
    @timed("upsert")
    def upsert(self, points: Iterable[dict[str, Any]] | pa.Table) -> int:
        """Insert or replace points by id. With tenant units, an id that lives in another
        tenant now is moved there: its old copy is deleted under a lease on its old unit.

        While no unit captures and all have one owner, the router grants wide leases and
        nothing is looked up: that owner's upsert by id replaces the old copy (P2a).
        Otherwise, where the owners can, each row first replaces its point only where that
        point is in the row's tenant on the owner of that tenant's unit (P2b): a point that
        is there lives nowhere else, so when every row did, nothing is looked up. Else
        where each id lives is looked up (while the leases are asked for), and the engine
        write waits for the answer. A move found then ends those leases unwritten (their
        log entries are harmless) and writes again with leases on both units."""
        table = self.to_table(points)
        rows, values = self._split(table)
        self._check_sides(table)
        lookup = self._lookup(table, rows)
        moved: dict[str, list[Any]] = {}
        while True:
            try:
                self._write_rows(table, rows, values, moved, lookup)
                break
            except _Missed:
                self._odds.record(False)
                lookup = lookup.first() if lookup is not None else None
            except _Moved as found:
                moved, old_values = found.args
                values, lookup = {**old_values, **values}, None
        if lookup is not None and lookup.replaced:
            self._odds.record(True)
        return table.num_rows

    def _lookup(self, table: pa.Table, rows: dict[str, list[int]]) -> Lookup | None:
        """With tenant units, an upsert's look-up. Not quiet, where every owner can update
        in place and recent tries mostly replaced every row: asked only if the update in
        place misses (P2b). Otherwise started at once while the cached routes are not
        quiet, else only if the router grants no wide leases (P2a)."""
        if self.cfg.units.by != "tenant":
            return None
        ids = table.column(ID).to_pylist()
        new_unit = {ids[i]: u for u, r in rows.items() for i in r}
        quiet = self._quiet()
        in_place = not quiet and all(self.backends[side].capabilities.updates_in_place
                                     for side in self._owners(self.routes())) \
            and self._odds.worth()
        return Lookup(lambda: self._moves(new_unit), self._lookups,
                      not quiet and not in_place, in_place)

    def _in_place(self, owner: str, side: pa.Table, lookup: Lookup | None) -> bool:
        """P2b: ``side``'s rows replace their points on ``owner`` only where they keep their
        tenant. True when every row did; False when not tried (a wide lease, an engine or a
        field that cannot); ``_Missed`` when some row did not."""
        if lookup is None or not lookup.in_place or lookup.wide:
            return False
        done = self.backends[owner].update_in_place(side, self._unit_field(owner))
        if done is None:
            return False
        if not done:
            raise _Missed()
        lookup.replaced = True
        return True

    def _write_rows(self, table: pa.Table, rows: dict[str, list[int]], values: dict[str, Any],
                    moved: dict[str, list[Any]], lookup: Lookup | None) -> None:
        """Write ``rows`` (unit -> row numbers) and delete ``moved`` ids from their old units,
        under leases on all those units; raise ``_Moved`` before any engine write if
        ``lookup`` finds ids that live in another unit now, ``_Missed`` if its update in
        place left a row unreplaced (the rows it did replace are written again)."""
        ids = table.column(ID).to_pylist()

        def write(owner: str, units: list[str], report: set[str]) -> dict[str, tuple[Any, int]]:
            backend = self.backends[owner]
            mine = [i for u in units for i in rows.get(u, [])]
            side = self._side(owner, table.take(pa.array(mine, pa.int64())))
            replaced = bool(mine) and self._in_place(owner, side, lookup)
            found = lookup.moves() if lookup is not None and not replaced else ({}, {})
            if found[0]:
                raise _Moved(*found)
            if mine and not replaced:
                backend.upsert(side)
            # A point moving between two units of this owner was just replaced by id: a delete
            # of its old copy could only delete another client's write of it to the old
            # tenant since the look-up (P5a). Only copies left on the other owner go.
            here = {ids[i] for i in mine} if moved else set()
            gone = [(left, self._scope(owner, u)) for u in units
                    if (left := [pid for pid in moved.get(u, ()) if pid not in here])]
            if gone:
                backend.delete_many(gone)
            out = {}
            for u in report:  # each unit's rows as written (by id: a transform may reorder)
                if u in moved:  # a delete: its rows, or rows and a delete, stay unreported
                    if u not in rows:
                        out[u] = (("delete", moved[u]), 16 * len(moved[u]))
                    continue
                unit_ids = pa.array([ids[i] for i in rows[u]], side.column(ID).type)
                part = side.filter(pc.is_in(side.column(ID), value_set=unit_ids))
                out[u] = (("upsert", encode_rows(part)), part.nbytes)
            return out

        parts = {u: ([ids[i] for i in rows.get(u, [])] + moved.get(u, []), values.get(u))
                 for u in {*rows, *moved}}
        self._leased(parts, write, lookup)

    @timed("delete")
    def delete(self, ids: Sequence[Any]) -> int:
        ids = [check_id(self.info, i) for i in ids]
        located = self._locate(ids)

        def write(owner: str, units: list[str], report: set[str]) -> dict[str, tuple[Any, int]]:
            # Each unit's ids only where they are still in it: one that moved to another
            # tenant meanwhile stays (its new unit's log does not hold this delete).
            self.backends[owner].delete_many([(located[u], self._scope(owner, u))
                                              for u in units])
            return {u: (("delete", located[u]), 16 * len(located[u])) for u in report}

        self._leased({u: (unit_ids, None) for u, unit_ids in located.items()}, write)
        return len(ids)

    # --- reads ----------------------------------------------------------------------------
    @timed("retrieve")
    def retrieve(self, ids: Sequence[Any]) -> list[dict[str, Any]]:
        ids = [check_id(self.info, i) for i in ids]
        routes = self.routes()
        result: dict[Any, dict[str, Any]] = {}
        for side in self._owners(routes):
            self.stats.tag(side)
            t = self.backends[side].fetch(ids)
            if side == "target":
                t = self._from_target(t)
            for row in self._rows(t):
                if routes.get(self.unit_of(row["id"], row["payload"]), ("source",))[0] == side:
                    result[row["id"]] = row
        return [result[i] for i in ids if i in result]

    def _rows(self, t: pa.Table) -> list[dict[str, Any]]:
        names = [v.name for v in self.info.vectors]
        vecs = {n: vectors_to_numpy(t.column(n)) for n in names if n in t.column_names}
        out = []
        for i, (pid, p) in enumerate(zip(t.column(ID).to_pylist(), payload_dicts(t),
                                         strict=True)):
            vector: Any = {n: vecs[n][i].tolist() for n in vecs}
            if self.info.unnamed_vector or names == ["vector"]:
                vector = vector.get(names[0])
            out.append({"id": pid, "vector": vector, "payload": p})
        return out

    @timed("search")
    def search(self, vector: Sequence[float], k: int = 10,
               filter: dict[str, Any] | None = None, vector_name: str | None = None
               ) -> list[dict[str, Any]]:
        """Exact top-k over the current data of every unit, whichever backend owns it.

        ``filter`` is an equality filter on payload keys (source names). Scores are on one
        scale where higher is better (see ``similarity``). With a re-embedding transform the
        target is searched in its own space and a scope on both sides is merged by rank
        (``reembed``). A share of searches is shadowed on the other side (``shadow``).
        """
        name = vector_name or self.info.vectors[0].name
        spec = self.info.vector(name)
        if spec is None:
            raise InvalidDataError(f"vector_name {name!r}: the collection has "
                                   f"{self.info.vector_names}")
        q = np.asarray(vector, dtype=np.float32)
        if q.shape != (spec.dim,) or not np.isfinite(q).all():
            raise InvalidDataError(f"query vector must be {spec.dim} finite floats")
        if k < 1:
            raise InvalidDataError("k must be at least 1")
        flt = filter or {}
        scope = self._search_scope(flt, self.routes())
        began, t0 = self.stats.clock(), time.perf_counter()
        top = self._search_routes(q, k, name, spec.distance, flt, scope)
        if self.shadow.percent:
            def again(routes: dict[str, tuple[str, str]]) -> list[Any]:
                self.stats._begin()  # the shadow's thread: its tags are never recorded
                hits = self._search_routes(q, k, name, spec.distance, flt, routes, raw=True)
                return [h[1] for h in hits]
            self.shadow.after_search(again, scope, [h[1] for h in top],
                                     (time.perf_counter() - t0) * 1000, k, began)
        return [{"id": pid, "score": s, "payload": p} for s, pid, p in top]

    def _search_scope(self, flt: dict[str, Any], routes: dict[str, tuple[str, str]]
               ) -> dict[str, tuple[str, str]]:
        """The routes of the units a search covers: its tenant's, or every unit's."""
        if self.cfg.units.by == "tenant" and self.cfg.units.field in flt:
            uid = self.unit_of(None, flt)
            return {uid: routes.get(uid, ("source", "source"))}
        return routes

    def _search_routes(self, q: np.ndarray, k: int, name: str, distance: str,
                       flt: dict[str, Any], routes: dict[str, tuple[str, str]],
                       raw: bool = False) -> list[tuple]:
        per_side = {side: self._search_side(side, q, k, name, distance, flt, routes, raw)
                    for side in ("source", "target")}
        shares = {side: sum(owner == side for owner, _ in routes.values()) / max(len(routes), 1)
                  for side in per_side}
        return merge_hits(per_side, k, shares, self.forward.query_function is not None)

    def _search_side(self, side: str, q: np.ndarray, k: int, name: str, distance: str,
                     flt: dict[str, Any], routes: dict[str, Any], raw: bool = False
                     ) -> list[tuple]:
        tname = self.forward.rename_vectors.get(name, name) if side == "target" else name
        unit = None
        if self.cfg.units.by == "tenant" and self.cfg.units.field in flt:
            uid = self.unit_of(None, flt)
            if routes.get(uid, ("source",))[0] != side:
                return []
            unit = UnitSpec(uid, "tenant", field=self.cfg.units.field,
                            value=flt[self.cfg.units.field])
            if side == "target":
                unit = self.forward.target_unit(unit)
        owned = {u for u, (owner, _) in routes.items() if owner == side}
        if not owned:
            return []  # never opened: a side that owns no unit is not called
        q = side_query(self.forward, self.plan, side, q, name)
        self.stats.tag(side, [unit.unit_id] if unit is not None else owned)
        backend = self.backends[side]
        if raw and isinstance(backend, TimedBackend):  # a shadow: not a client engine call
            backend = backend._backend
        within = None
        if unit is None and len(owned) < max(len(routes), len(self.units)) \
                and all(u in self.units for u in owned) and self.cfg.units.by == "tenant":
            # Search only the units this side owns, rather than top-k of all and then more
            # of all until k are owned: one scan of each side, not several.
            within = [self.units[u] for u in sorted(owned)]
            if side == "target":
                within = [self.forward.target_unit(u) for u in within]
        return self._hits(backend, side, q, k, tname, unit, within, distance, flt, owned)

    def _hits(self, backend: Backend, side: str, q: np.ndarray, k: int, tname: str,
              unit: UnitSpec | None, within: list[UnitSpec] | None, distance: str,
              flt: dict[str, Any], owned: set[str]) -> list[tuple]:
        fetch_k = k
        while True:
            raw = backend.search(q.tolist(), fetch_k, tname, unit, within)
            out = []
            for h in raw:
                payload = h.payload
                if side == "target" and self.inverse is not None:
                    payload = self._inverse_payload(payload)
                if any(payload.get(key) != val for key, val in flt.items()):
                    continue
                if self.unit_of(h.id, payload) not in owned:
                    continue
                out.append((similarity(h.score, distance, backend.capabilities
                                       .higher_score_is_better), h.id, payload))
            if len(out) >= k or len(raw) < fetch_k:
                return out
            fetch_k *= 4

    def _inverse_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {self.inverse.rename_fields.get(key, key): v for key, v in payload.items()}

    @timed("count")
    def count(self) -> int:
        routes = self.routes()
        total = 0
        for unit_id, (owner, _) in routes.items():
            unit = self.units.get(unit_id) or self._new_unit(unit_id)
            self.stats.tag(owner, [unit_id])
            if owner == "target":
                unit = self.forward.target_unit(unit)
            total += self.backends[owner].count(unit)
        return total

__all__ = ["RoutedCollection", "similarity"]
