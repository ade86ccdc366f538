"""The gateway as a Ray Serve application: a FastAPI ingress whose replicas each hold one
``RoutedCollection.connect(migration_id)`` and answer every request through ``routes.handle``.
A replica keeps nothing the router does not hold (the routes are the router's, cached and
watched as any client's), so replicas are interchangeable and may be added or restarted freely.

``deploy`` starts it from ``ray-migrate gateway``; ``app_builder`` serves it with
``serve run ray_migrate.gateway.app:app_builder config=CONFIG``."""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations (Request)
# at runtime, and Serve's ingress wrapper resolves them in its own module.
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.concurrency import run_in_threadpool

from ray_migrate.config import LanceEndpoint, MigrationConfig, QdrantEndpoint, load_config
from ray_migrate.errors import ConfigError, TerminalError
from ray_migrate.gateway.grpc_service import SERVICERS, GrpcMethods
from ray_migrate.gateway.routes import handle
from ray_migrate.gateway.settings import GatewayConfig

log = logging.getLogger(__name__)

api = FastAPI(title="ray_migrate gateway", docs_url=None, redoc_url=None, openapi_url=None)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def app_name(migration_id: str) -> str:
    return f"rm-gateway-{migration_id}"


def collection_name(cfg: MigrationConfig) -> str:
    """The Qdrant collection name clients use: ``gateway.collection``, else the source's."""
    if cfg.gateway is not None and cfg.gateway.collection:
        return cfg.gateway.collection
    src = cfg.source
    return src.collection if isinstance(src, QdrantEndpoint) else src.table


def credentials(cfg: MigrationConfig) -> dict[str, Any]:
    """The engines' credentials of the local config, for the replicas' ``connect`` (the router
    hands out the config without them)."""
    keys, options = {}, {}
    for side in ("source", "target"):
        ep = getattr(cfg, side)
        if isinstance(ep, QdrantEndpoint) and ep.api_key:
            keys[side] = ep.api_key
        if isinstance(ep, LanceEndpoint):
            options[side] = dict(ep.storage_options)
    return {"api_key": keys or None, "storage_options": options or None}


@serve.deployment(name="QdrantGateway")
@serve.ingress(api)
class QdrantGateway(GrpcMethods):
    """One replica: a routed collection and the Qdrant REST API over it (and the gRPC API:
    ``grpc_service``)."""

    def __init__(self, migration_id: str, collection: str, api_key: str | None,
                 creds: dict[str, Any]):
        from ray_migrate.client import RoutedCollection
        from ray_migrate.gateway.ops import QdrantOps

        super().__init__()
        self.coll = RoutedCollection.connect(migration_id, **creds)
        self.ops = QdrantOps(self.coll, collection)
        self.key = api_key

    @api.api_route("/", methods=METHODS)
    async def root(self, request: Request) -> JSONResponse:
        return await self.any_path("", request)

    @api.api_route("/{path:path}", methods=METHODS)
    async def any_path(self, path: str, request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError as err:
            return JSONResponse({"status": {"error": f"Bad request: JSON: {err}"}, "time": 0.0},
                                status_code=400)
        status, out = await run_in_threadpool(handle, self.ops, self.key, request.method,
                                              "/" + path, request.headers, body)
        return JSONResponse(out, status_code=status)

    def __del__(self) -> None:
        coll = getattr(self, "coll", None)
        if coll is not None:
            coll.close()


def bind(cfg: MigrationConfig, replicas: int | None = None) -> Any:
    """The application, bound to ``cfg``'s migration (not started)."""
    gw = cfg.gateway or GatewayConfig()
    return QdrantGateway.options(
        num_replicas=replicas or gw.replicas, max_ongoing_requests=gw.max_ongoing_requests,
        ray_actor_options={"num_cpus": gw.num_cpus},
    ).bind(cfg.migration_id, collection_name(cfg), gw.api_key, credentials(cfg))


def http_options(gw: GatewayConfig, host: str | None = None, port: int | None = None
                 ) -> dict[str, Any]:
    opts: dict[str, Any] = {"host": host or gw.host, "port": port or gw.port}
    if gw.tls_cert:
        opts.update(ssl_certfile=gw.tls_cert, ssl_keyfile=gw.tls_key)
    return opts


def grpc_options(gw: GatewayConfig) -> dict[str, Any] | None:
    """Serve's gRPC proxy with qdrant-client's services, when ``gateway.grpc_port`` is set."""
    if gw.grpc_port is None:
        return None
    return {"port": gw.grpc_port, "grpc_servicer_functions": SERVICERS}


def check_running_serve(opts: dict[str, Any]) -> None:
    """ConfigError when Serve already runs on the cluster with other HTTP options than
    ``opts``: Serve fixes them when it starts and only logs a warning for later ones, so the
    gateway would answer elsewhere than the URL it prints, or over plain HTTP when TLS was
    asked for."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return
    running = client.http_config
    wanted = {"ssl_certfile": None, "ssl_keyfile": None, **opts}
    differ = {k: (getattr(running, k), v) for k, v in wanted.items() if getattr(running, k) != v}
    if differ:
        said = "; ".join(f"{k}: running {have!r}, asked {want!r}"
                         for k, (have, want) in differ.items())
        raise ConfigError(
            f"Ray Serve already runs on this cluster with other HTTP options ({said}), and "
            "Serve keeps the options it started with: set the gateway section (or --host / "
            "--port) to the running ones, or stop what runs on it first (`ray-migrate gateway "
            "OTHER_CONFIG --stop`, or `serve shutdown`)")


def deploy(cfg: MigrationConfig, host: str | None = None, port: int | None = None,
           replicas: int | None = None) -> str:
    """Start Serve's HTTP proxy (``host``/``port`` override the config's) and the gateway's
    replicas on the connected cluster; returns the URL clients use. Serve's HTTP options are
    set by whoever starts Serve first on a cluster: a Serve already running with other ones
    is refused (``check_running_serve``) rather than joined."""
    gw = cfg.gateway or GatewayConfig()
    opts = http_options(gw, host, port)
    check_running_serve(opts)
    serve.start(http_options=opts, grpc_options=grpc_options(gw))
    serve.run(bind(cfg, replicas), name=app_name(cfg.migration_id), route_prefix="/")
    scheme = "https" if gw.tls_cert else "http"
    url = f"{scheme}://{opts['host']}:{opts['port']}"
    log.info("gateway for migration %s answers at %s", cfg.migration_id, url)
    return url


def stop(migration_id: str) -> str:
    """Remove the migration's gateway application from the connected cluster's Serve, and
    Serve itself when no other application is left (its proxy then frees the port, and the
    next gateway's HTTP and TLS options apply); what was done, in a sentence. TerminalError
    when no such application runs."""
    name = app_name(migration_id)
    apps = sorted(serve.status().applications)
    if name not in apps:
        raise TerminalError(
            f"no gateway for migration {migration_id!r} runs in this Ray cluster (no Serve "
            f"application {name!r}; Serve applications running: {', '.join(apps) or 'none'}): "
            "nothing to stop; check the config and --address")
    serve.delete(name)
    others = sorted(serve.status().applications)
    if others:
        return (f"removed Serve application {name!r} (the gateway of migration "
                f"{migration_id!r}); Serve keeps running for {', '.join(others)}")
    serve.shutdown()
    return (f"removed Serve application {name!r} (the gateway of migration {migration_id!r}) "
            "and shut Serve down, as no other application ran on it")


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run ray_migrate.gateway.app:app_builder config=CONFIG``."""
    if "config" not in args:
        raise ValueError("app_builder needs config=PATH (the migration's YAML)")
    return bind(load_config(args["config"]))


__all__ = ["QdrantGateway", "app_builder", "bind", "check_running_serve", "collection_name",
           "deploy", "stop"]
