"""Qdrant's REST paths mapped to ``QdrantOps``, the API key check and the response envelope,
with no web framework: ``handle(ops, key, method, path, headers, body)`` gives the HTTP status
and the JSON to send, so the whole API is testable without Serve (``app`` only carries
requests here)."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from ray_migrate.gateway.ops import GatewayError, QdrantOps, error_of

Handler = Callable[[QdrantOps, tuple[str, ...], Any], Any]
_C = r"/collections/([^/]+)"
# (method, path pattern, handler(ops, path groups, body)); the first match answers.
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [(m, re.compile(p + "$"), h) for m, p, h in [
    ("GET", r"/?", lambda o, g, b: QdrantOps.root()),
    ("GET", r"/(?:healthz|livez|readyz)", lambda o, g, b: "healthz check passed"),
    ("GET", r"/collections", lambda o, g, b: o.collections()),
    ("GET", _C, lambda o, g, b: o.collection_info(g[0])),
    ("GET", _C + "/exists", lambda o, g, b: o.exists(g[0])),
    ("PUT", _C + "/points", lambda o, g, b: o.upsert(g[0], b)),
    ("POST", _C + "/points", lambda o, g, b: o.retrieve(g[0], b)),
    ("POST", _C + "/points/delete", lambda o, g, b: o.delete(g[0], b)),
    ("POST", _C + "/points/scroll", lambda o, g, b: o.scroll(g[0], b)),
    ("POST", _C + "/points/count", lambda o, g, b: o.count(g[0], b)),
    ("POST", _C + "/points/search", lambda o, g, b: o.search(g[0], b)),
    ("POST", _C + "/points/search/batch", lambda o, g, b: o.search_batch(g[0], b)),
    ("POST", _C + "/points/query", lambda o, g, b: o.query(g[0], b)),
    ("POST", _C + "/points/query/batch", lambda o, g, b: o.query_batch(g[0], b)),
    ("GET", _C + "/points/([^/]+)", lambda o, g, b: o.get_point(g[0], g[1])),
]]
OPEN = {"/", "", "/healthz", "/livez", "/readyz"}  # answered without a key, as Qdrant does


def endpoints() -> list[str]:
    """The supported endpoints, for docs and error messages."""
    return [f"{m} {p.pattern[:-1]}" for m, p, _ in ROUTES]


def _check_key(key: str | None, headers: Mapping[str, str]) -> None:
    if key is None:
        return
    given = headers.get("api-key")
    auth = headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given:
        raise GatewayError(401, "Unauthorized: Must provide an API key or an Authorization "
                                "bearer token")
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise GatewayError(403, "Forbidden: Invalid API key or JWT")


def _route(method: str, path: str) -> tuple[Handler, tuple[str, ...]]:
    for m, pattern, handler in ROUTES:
        found = pattern.match(path)
        if found and m == method:
            return handler, found.groups()
    raise GatewayError(404, f"Not found: {method} {path} is not supported by the ray_migrate "
                            "gateway (it answers the point operations of the collection being "
                            "migrated: docs/GATEWAY.md lists them)")


def handle(ops: QdrantOps | None, key: str | None, method: str, path: str,
           headers: Mapping[str, str], body: Any) -> tuple[int, Any]:
    """(HTTP status, JSON) for one request, in Qdrant's envelope: ``{"result", "status":
    "ok", "time"}``, or ``{"status": {"error": ...}, "time"}`` with a Qdrant error status."""
    began = time.perf_counter()
    path = path.rstrip("/") or "/"
    if method.upper() == "GET" and path == "/":  # as Qdrant: no envelope (clients read .version)
        return 200, QdrantOps.root()
    try:
        if path not in OPEN:
            _check_key(key, headers)
        handler, groups = _route(method.upper(), path)
        if ops is None and path not in OPEN:
            raise GatewayError(503, "Service unavailable: the gateway is not connected yet")
        if body is not None and not isinstance(body, dict):
            raise GatewayError(400, "Bad request: the body must be a JSON object")
        result = handler(ops, groups, body or {})
    except Exception as err:  # noqa: BLE001 - every error answers in Qdrant's shape
        gw = error_of(err)
        return gw.status, {"status": {"error": gw.message},
                           "time": time.perf_counter() - began}
    return 200, {"result": result, "status": "ok", "time": time.perf_counter() - began}


__all__ = ["OPEN", "ROUTES", "endpoints", "handle"]
