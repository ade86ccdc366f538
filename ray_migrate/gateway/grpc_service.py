"""Qdrant's gRPC API (``prefer_grpc=True``) on the same replicas, through Ray Serve's gRPC proxy.

Serve hosts qdrant-client's compiled services (``SERVICERS``) and calls the deployment method
named after the RPC, with the request message and a ``grpc_context``. Each method converts the
request to the REST models with qdrant-client's own ``GrpcToRest``, answers it with the same
``QdrantOps`` call as REST (so leases, fencing and merged reads are the same), and converts the
result back with ``RestToGrpc``. ``Get`` and ``Delete`` exist in the Points and the Collections
services both: the request's type tells which was called. Errors set the gRPC status a Qdrant
server sets (INVALID_ARGUMENT, UNAUTHENTICATED, NOT_FOUND, ...)."""

from __future__ import annotations

import functools
import hmac
import sys
from collections.abc import Callable
from typing import Any

from ray_migrate.gateway.ops import GatewayError, QdrantOps, error_of

SERVICERS = [f"ray_migrate.gateway.grpc_service.add_{s.lower()}" for s in
             ("Points", "Collections", "Qdrant")]
_PB2 = ("points", "collections", "qdrant", "qdrant_common", "json_with_int", "points_service",
        "collections_service")


def alias_messages() -> None:
    """Make qdrant-client's messages importable under the bare module names they were built
    with (``points_pb2``): Serve pickles requests and replies between its proxy and the
    replicas, and pickle finds a class by its ``__module__``."""
    import importlib

    for name in _PB2:
        sys.modules.setdefault(f"{name}_pb2",
                               importlib.import_module(f"qdrant_client.grpc.{name}_pb2"))


def _adder(module: str, service: str) -> Callable[[Any, Any], None]:
    def add(servicer: Any, server: Any) -> None:  # runs in Serve's proxy
        import importlib

        alias_messages()
        grpc_module = importlib.import_module(f"qdrant_client.grpc.{module}_pb2_grpc")
        getattr(grpc_module, f"add_{service}Servicer_to_server")(servicer, server)
    return add


add_points = _adder("points_service", "Points")
add_collections = _adder("collections_service", "Collections")
add_qdrant = _adder("qdrant", "Qdrant")
_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
          404: "NOT_FOUND", 503: "UNAVAILABLE"}


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _rest() -> tuple[Any, Any, Any]:
    from qdrant_client.conversions.conversion import GrpcToRest, RestToGrpc
    from qdrant_client.http import models

    return GrpcToRest, RestToGrpc, models


def _selectors(req: Any, body: dict[str, Any], payload_default: bool) -> dict[str, Any]:
    g2r = _rest()[0]
    body["with_payload"] = _dump_any(g2r.convert_with_payload_selector(req.with_payload)) \
        if req.HasField("with_payload") else payload_default
    vectors_field = "with_vectors" if hasattr(req, "with_vectors") else "with_vector"
    body["with_vector"] = _dump_any(g2r.convert_with_vectors_selector(
        getattr(req, vectors_field))) if req.HasField(vectors_field) else False
    return body


def _dump_any(value: Any) -> Any:
    return _dump(value) if hasattr(value, "model_dump") else value


def _filter(req: Any) -> Any:
    return _dump(_rest()[0].convert_filter(req.filter)) if req.HasField("filter") else None


@functools.cache
def _rpc_names() -> dict[str, Any]:
    """RPC name -> its reply message class, over qdrant-client's services."""
    from google.protobuf import message_factory
    from qdrant_client.grpc import (
        collections_service_pb2,
        points_service_pb2,
        qdrant_pb2,
        snapshots_service_pb2,
    )

    out = {}
    for module in (points_service_pb2, collections_service_pb2, qdrant_pb2,
                   snapshots_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.setdefault(method.name, message_factory.GetMessageClass(
                    method.output_type))
    return out


class GrpcMethods:
    """The gRPC half of ``QdrantGateway``: it provides ``ops`` (a ``QdrantOps``) and ``key``."""

    ops: QdrantOps
    key: str | None

    def __init__(self) -> None:
        alias_messages()  # replies are pickled back to the proxy, requests come pickled

    def _answer(self, ctx: Any, call: Callable[[], Any], empty: Callable[[], Any]) -> Any:
        import grpc

        try:
            self._check_key(ctx)
            return call()
        except Exception as err:  # noqa: BLE001 - every error answers as a gRPC status
            gw = error_of(err)
            ctx.set_code(getattr(grpc.StatusCode, _CODES.get(gw.status, "INTERNAL")))
            ctx.set_details(gw.message)
            return empty()

    def _check_key(self, ctx: Any) -> None:
        if self.key is None or ctx is None:
            return
        meta = dict(ctx.invocation_metadata())
        given = meta.get("api-key")
        auth = meta.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise GatewayError(401, "Must provide an API key or an Authorization bearer token")
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            raise GatewayError(403, "Invalid API key or JWT")

    # --- Qdrant and Collections ----------------------------------------------------------
    def HealthCheck(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from qdrant_client.grpc import qdrant_pb2

        root = QdrantOps.root()
        return qdrant_pb2.HealthCheckReply(title=root["title"], version=root["version"])

    def List(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from qdrant_client.grpc import collections_pb2 as c

        return self._answer(grpc_context, lambda: c.ListCollectionsResponse(
            collections=[c.CollectionDescription(name=self.ops.name)], time=0.0),
            c.ListCollectionsResponse)

    def CollectionExists(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from qdrant_client.grpc import collections_pb2 as c

        return self._answer(grpc_context, lambda: c.CollectionExistsResponse(
            result=c.CollectionExists(exists=request.collection_name == self.ops.name),
            time=0.0), c.CollectionExistsResponse)

    def _collection_info(self, request: Any, ctx: Any) -> Any:
        from qdrant_client.grpc import collections_pb2 as c

        _, r2g, models = _rest()

        def call() -> Any:
            info = models.CollectionInfo.model_validate(
                self.ops.collection_info(request.collection_name))
            return c.GetCollectionInfoResponse(result=r2g.convert_collection_info(info),
                                               time=0.0)
        return self._answer(ctx, call, c.GetCollectionInfoResponse)

    # --- Points ----------------------------------------------------------------------------
    def Upsert(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        g2r = _rest()[0]
        if request.HasField("update_filter"):
            body: dict[str, Any] = {"update_filter": True}  # refused by QdrantOps, by name
        else:
            body = {"points": [_dump(g2r.convert_point_struct(p)) for p in request.points]}
        return self._update(grpc_context, lambda: self.ops.upsert(request.collection_name,
                                                                  body))

    def Delete(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from qdrant_client.grpc import collections_pb2, points_pb2

        if not isinstance(request, points_pb2.DeletePoints):
            return self._answer(grpc_context, lambda: self._unsupported("Collections/Delete"),
                                collections_pb2.CollectionOperationResponse)
        g2r = _rest()[0]
        body = _dump(g2r.convert_points_selector(request.points))
        return self._update(grpc_context, lambda: self.ops.delete(request.collection_name,
                                                                  body))

    def _update(self, ctx: Any, call: Callable[[], Any]) -> Any:
        from qdrant_client.grpc import points_pb2 as p

        _, r2g, models = _rest()
        return self._answer(ctx, lambda: p.PointsOperationResponse(
            result=r2g.convert_update_result(models.UpdateResult.model_validate(call())),
            time=self._took_so_far()), p.PointsOperationResponse)

    def Get(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from qdrant_client.grpc import points_pb2 as p

        if not isinstance(request, p.GetPoints):
            return self._collection_info(request, grpc_context)
        g2r = _rest()[0]
        body = _selectors(request, {"ids": [g2r.convert_point_id(i) for i in request.ids]},
                          True)
        return self._answer(grpc_context, lambda: p.GetResponse(
            result=self._records(self.ops.retrieve(request.collection_name, body)),
            time=self._took_so_far()), p.GetResponse)

    def Scroll(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from qdrant_client.grpc import points_pb2 as p

        g2r, r2g, _ = _rest()
        body = _selectors(request, {"filter": _filter(request),
                                    "limit": request.limit if request.HasField("limit") else 10},
                          True)
        if request.HasField("offset"):
            body["offset"] = g2r.convert_point_id(request.offset)
        if request.HasField("order_by"):
            body["order_by"] = True  # refused by QdrantOps, by name

        def call() -> Any:
            out = self.ops.scroll(request.collection_name, body)
            nxt = out["next_page_offset"]
            extra = {} if nxt is None else {"next_page_offset": r2g.convert_extended_point_id(
                nxt)}
            return p.ScrollResponse(result=self._records(out["points"]),
                                    time=self._took_so_far(), **extra)
        return self._answer(grpc_context, call, p.ScrollResponse)

    def Count(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from qdrant_client.grpc import points_pb2 as p

        body = {"filter": _filter(request)}
        return self._answer(grpc_context, lambda: p.CountResponse(
            result=p.CountResult(count=self.ops.count(request.collection_name, body)["count"]),
            time=self._took_so_far()), p.CountResponse)

    def Query(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from qdrant_client.grpc import points_pb2 as p

        return self._answer(grpc_context, lambda: p.QueryResponse(
            result=self._query(request), time=self._took_so_far()), p.QueryResponse)

    def QueryBatch(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from qdrant_client.grpc import points_pb2 as p

        return self._answer(grpc_context, lambda: p.QueryBatchResponse(
            result=[p.BatchResult(result=self._query(q)) for q in request.query_points],
            time=self._took_so_far()), p.QueryBatchResponse)

    def _query(self, request: Any) -> list[Any]:
        g2r, r2g, models = _rest()
        if len(request.prefetch) or request.HasField("lookup_from"):
            raise GatewayError(400, "query: prefetch and lookup_from are not supported by "
                                    "the ray_migrate gateway")
        query = _dump_any(g2r.convert_query(request.query)) if request.HasField("query") \
            else None
        body = _selectors(request, {
            "query": query, "using": request.using if request.HasField("using") else None,
            "filter": _filter(request),
            "limit": request.limit if request.HasField("limit") else 10,
            "offset": request.offset if request.HasField("offset") else 0,
            "score_threshold": request.score_threshold
            if request.HasField("score_threshold") else None}, False)
        hits = self.ops.query(request.collection_name, body)["points"]
        return [r2g.convert_scored_point(models.ScoredPoint.model_validate(h)) for h in hits]

    # --- shapes ----------------------------------------------------------------------------
    @staticmethod
    def _records(rows: list[dict[str, Any]]) -> list[Any]:
        _, r2g, models = _rest()
        return [r2g.convert_record(models.Record.model_validate(r)) for r in rows]

    def __getattr__(self, name: str) -> Any:
        """Any other RPC of qdrant-client's services answers UNIMPLEMENTED naming it (Serve
        calls the method named after the RPC; without one the client would get Ray's error)."""
        if name not in _rpc_names():
            raise AttributeError(name)

        def unimplemented(request: Any, grpc_context: Any = None) -> Any:
            import grpc

            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
                grpc_context.set_details(f"{name} is not supported by the ray_migrate gateway "
                                         "(docs/GATEWAY.md lists what is)")
            return _rpc_names()[name]()
        return unimplemented

    @staticmethod
    def _unsupported(what: str) -> Any:
        raise GatewayError(404, f"{what} is not supported by the ray_migrate gateway")

    @staticmethod
    def _took_so_far() -> float:
        return 0.0  # Qdrant's seconds spent; the replica does not time its calls


__all__ = ["SERVICERS", "GrpcMethods"]
