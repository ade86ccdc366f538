"""Qdrant's REST operations on one ``RoutedCollection``, in Qdrant's JSON shapes (those of
qdrant-client's ``http/models/models.py``), with no web framework: each method takes the
request's JSON body and returns the response's ``result``. Errors raise ``GatewayError`` with
the HTTP status a Qdrant server answers.

Every call goes through the routed collection, so a write is leased, fenced and captured as an
application's own ``RoutedCollection`` write, and a read reads each unit where it lives now.
A write returns only once it is durable on its owner: ``wait`` changes nothing, and the status
is always ``completed``."""

from __future__ import annotations

import logging
import re
from typing import Any

from ray_migrate.client import RoutedCollection
from ray_migrate.errors import InvalidDataError, TransientError
from ray_migrate.gateway.filters import Unsupported, compile_filter, tenant_equality

log = logging.getLogger(__name__)

QDRANT_VERSION = "1.20.0"  # the REST shapes implemented: those of qdrant-client 1.20
DISTANCES = {"cosine": "Cosine", "dot": "Dot", "l2": "Euclid", "manhattan": "Manhattan"}
_UPDATED = {"operation_id": 0, "status": "completed"}


class GatewayError(Exception):
    """An error answered as Qdrant does: HTTP ``status`` and ``{"status": {"error": ...}}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _refuse_keys(body: dict[str, Any], what: str, *keys: str) -> None:
    for key in keys:
        if body.get(key) is not None:
            raise GatewayError(400, f"{what}: {key!r} is not supported by the ray_migrate "
                                    "gateway")


class QdrantOps:
    """The REST API of one Qdrant collection, answered by ``coll`` (a ``RoutedCollection``)."""

    def __init__(self, coll: RoutedCollection, name: str):
        self.coll, self.name = coll, name
        self.info = coll.info
        names = [v.name for v in self.info.vectors]
        # One unnamed vector to Qdrant clients, as ``RoutedCollection._rows`` returns it.
        self.unnamed = self.info.unnamed_vector or names == ["vector"]
        self.tenant_field = coll.cfg.units.field if coll.cfg.units.by == "tenant" else None

    # --- service and collections -----------------------------------------------------------
    @staticmethod
    def root() -> dict[str, Any]:
        return {"title": "ray_migrate gateway", "version": QDRANT_VERSION}

    def collections(self) -> dict[str, Any]:
        return {"collections": [{"name": self.name}]}

    def exists(self, name: str) -> dict[str, Any]:
        return {"exists": name == self.name}

    def check(self, name: str) -> None:
        if name != self.name:
            raise GatewayError(404, f"Not found: Collection `{name}` doesn't exist! (this "
                                    f"gateway answers for `{self.name}` only)")

    def collection_info(self, name: str) -> dict[str, Any]:
        self.check(name)
        params = {v.name: {"size": v.dim, "distance": DISTANCES.get(v.distance, "Cosine")}
                  for v in self.info.vectors}
        vectors = next(iter(params.values())) if self.unnamed else params
        count = self.coll.count()
        return {
            "status": "green", "optimizer_status": "ok", "segments_count": 1,
            "points_count": count, "indexed_vectors_count": 0,
            "config": {
                "params": {"vectors": vectors, "shard_number": 1, "replication_factor": 1,
                           "write_consistency_factor": 1, "on_disk_payload": True},
                "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
                "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                                     "default_segment_number": 0, "flush_interval_sec": 5},
                "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
            },
            "payload_schema": {},
        }

    # --- writes ----------------------------------------------------------------------------
    def upsert(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.check(name)
        _refuse_keys(body, "upsert", "shard_key", "update_filter")
        if "points" in body:
            points = [self._point_in(p) for p in body["points"]]
        elif "batch" in body:
            points = self._batch_in(body["batch"])
        else:
            raise GatewayError(400, "upsert: the body needs 'points' or 'batch'")
        self.coll.upsert(points)
        return _UPDATED

    def _point_in(self, p: Any) -> dict[str, Any]:
        if not isinstance(p, dict) or "id" not in p:
            raise GatewayError(400, f"upsert: each point needs an 'id': got {p!r}"[:200])
        return {"id": self._id(p["id"]), "vector": self._vector_in(p.get("vector")),
                "payload": p.get("payload") or {}}

    def _batch_in(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        ids, vectors = batch.get("ids") or [], batch.get("vectors")
        payloads = batch.get("payloads") or [{}] * len(ids)
        if isinstance(vectors, dict):
            per_point = [{n: vs[i] for n, vs in vectors.items()} for i in range(len(ids))]
        else:
            per_point = list(vectors or [])
        if not len(per_point) == len(payloads) == len(ids):
            raise GatewayError(400, f"upsert batch: {len(ids)} ids, {len(per_point)} vectors "
                                    f"and {len(payloads)} payloads: they must be as many")
        return [{"id": self._id(i), "vector": self._vector_in(v), "payload": p or {}}
                for i, v, p in zip(ids, per_point, payloads, strict=True)]

    def _vector_in(self, v: Any) -> Any:
        if isinstance(v, dict):
            if self.unnamed and set(v) <= {"", self.info.vectors[0].name}:
                return next(iter(v.values()), None)
            for key, value in v.items():
                if not isinstance(value, list):
                    raise GatewayError(400, f"vector {key!r}: sparse, multi and document "
                                            "vectors are not supported by the gateway")
        return v

    def delete(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.check(name)
        _refuse_keys(body, "delete", "shard_key")
        if "points" in body:
            self.coll.delete([self._id(i) for i in body["points"]])
        elif "filter" in body:
            where, eq = self._filter(body["filter"])
            self.coll.delete_where(eq, where)
        else:
            raise GatewayError(400, "delete: the body needs 'points' or 'filter'")
        return _UPDATED

    # --- reads -----------------------------------------------------------------------------
    def retrieve(self, name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.check(name)
        _refuse_keys(body, "retrieve", "shard_key")
        rows = self.coll.retrieve([self._id(i) for i in body.get("ids") or []])
        return [self._record(r, body.get("with_payload", True), body.get("with_vector", False))
                for r in rows]

    def get_point(self, name: str, pid: str) -> dict[str, Any]:
        self.check(name)
        rows = self.coll.retrieve([self._id(pid)])
        if not rows:
            raise GatewayError(404, f"Not found: No point with id {pid} found")
        return self._record(rows[0], True, True)

    def scroll(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.check(name)
        _refuse_keys(body, "scroll", "shard_key", "order_by")
        where, eq = self._filter(body.get("filter"))
        offset = body.get("offset")
        page, nxt = self.coll.scroll(eq, int(body.get("limit") or 10),
                                     None if offset is None else self._id(offset), where)
        return {"points": [self._record(r, body.get("with_payload", True),
                                        body.get("with_vector", False)) for r in page],
                "next_page_offset": nxt}

    def count(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.check(name)
        _refuse_keys(body, "count", "shard_key")
        flt = body.get("filter")
        if flt is None:
            return {"count": self.coll.count()}
        where, eq = self._filter(flt)
        return {"count": self.coll.count_where(eq, where)}

    # --- search and query ------------------------------------------------------------------
    def search(self, name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.check(name)
        _refuse_keys(body, "search", "shard_key")
        vector, using = body.get("vector"), None
        if isinstance(vector, dict):  # a NamedVector
            vector, using = vector.get("vector"), vector.get("name")
        return self._nearest(vector, using, body, with_payload=False)

    def search_batch(self, name: str, body: dict[str, Any]) -> list[list[dict[str, Any]]]:
        return [self.search(name, one) for one in body.get("searches") or []]

    def query(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.check(name)
        _refuse_keys(body, "query", "shard_key", "prefetch", "lookup_from")
        query = body.get("query")
        if isinstance(query, dict) and set(query) <= {"nearest"}:
            query = query["nearest"]
        if not (isinstance(query, list) and all(isinstance(x, (int, float)) for x in query)):
            raise GatewayError(400, f"query {str(query)[:80]!r}: the gateway supports a "
                                    "nearest query with a dense vector only")
        return {"points": self._nearest(query, body.get("using"), body, with_payload=False)}

    def query_batch(self, name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.query(name, one) for one in body.get("searches") or []]

    def _nearest(self, vector: Any, using: str | None, body: dict[str, Any],
                 with_payload: bool) -> list[dict[str, Any]]:
        """Top ``limit`` after ``offset`` of the points the filter keeps, in Qdrant's scores:
        the routed search is asked for more until enough pass the filter."""
        vname = using or self.info.vectors[0].name
        spec = self.info.vector(vname)
        if spec is None:
            raise GatewayError(400, f"Wrong input: Not existing vector name error: {vname}")
        where, eq = self._filter(body.get("filter"))
        limit, offset = int(body.get("limit") or 10), int(body.get("offset") or 0)
        need, k = limit + offset, limit + offset
        while True:
            hits = self.coll.search(vector, k, filter=eq, vector_name=vname)
            kept = [h for h in hits if where is None or where(h["id"], h["payload"])]
            if len(kept) >= need or len(hits) < k:
                break
            k *= 4
        sign = -1.0 if spec.distance in ("l2", "manhattan") else 1.0  # back to a distance
        threshold = body.get("score_threshold")
        out = []
        for h in kept[offset:need]:
            score = float(sign * h["score"])
            if threshold is not None and (score < threshold if sign > 0 else score > threshold):
                continue
            out.append({"id": h["id"], "version": 0, "score": score,
                        "payload": self._payload(h["payload"],
                                                 body.get("with_payload", with_payload))})
        selector = body.get("with_vector", False)
        if selector and out:
            rows = {r["id"]: r for r in self.coll.retrieve([p["id"] for p in out])}
            for p in out:
                p["vector"] = self._vector(rows[p["id"]]["vector"], selector) \
                    if p["id"] in rows else None
        return out

    # --- shapes ----------------------------------------------------------------------------
    def _filter(self, flt: Any) -> tuple[Any, dict[str, Any]]:
        """(predicate or None, the tenant equality a routed read takes) of a Qdrant filter."""
        if flt is None:
            return None, {}
        try:
            return compile_filter(flt), tenant_equality(flt, self.tenant_field)
        except Unsupported as err:
            raise GatewayError(400, f"Bad request: {err}") from None

    def _id(self, pid: Any) -> Any:
        if self.info.id_type == "int" and isinstance(pid, str) and re.fullmatch(r"\d+", pid):
            return int(pid)
        return pid

    def _record(self, row: dict[str, Any], with_payload: Any, with_vector: Any
                ) -> dict[str, Any]:
        return {"id": row["id"], "payload": self._payload(row["payload"], with_payload),
                "vector": self._vector(row["vector"], with_vector) if with_vector else None}

    @staticmethod
    def _payload(payload: dict[str, Any], selector: Any) -> dict[str, Any] | None:
        if selector is True:
            return payload
        if not selector:
            return None
        if isinstance(selector, list):
            return {k: v for k, v in payload.items() if k in selector}
        if isinstance(selector, dict) and "include" in selector:
            return {k: v for k, v in payload.items() if k in selector["include"]}
        if isinstance(selector, dict) and "exclude" in selector:
            return {k: v for k, v in payload.items() if k not in selector["exclude"]}
        raise GatewayError(400, f"with_payload {selector!r} is not supported by the gateway")

    def _vector(self, vector: Any, selector: Any) -> Any:
        if selector is True or not isinstance(vector, dict):
            return vector
        if isinstance(selector, list):
            return {k: v for k, v in vector.items() if k in selector}
        return vector


def error_of(err: BaseException) -> GatewayError:
    """A library error as the status a Qdrant server would answer: bad input is a 400."""
    if isinstance(err, GatewayError):
        return err
    if isinstance(err, (InvalidDataError, ValueError, TypeError, KeyError)):
        return GatewayError(400, f"Bad request: {err}")
    if isinstance(err, TransientError):  # e.g. a unit frozen too long: the client retries
        return GatewayError(503, f"Service unavailable: {err}")
    log.exception("gateway request failed", exc_info=err)
    return GatewayError(500, f"Service internal error: {type(err).__name__}: {err}")


__all__ = ["DISTANCES", "QDRANT_VERSION", "GatewayError", "QdrantOps", "error_of"]
