"""The gateway on the session Ray cluster for a test module: Serve on a free port, shut down
when the module is done (Serve allows one application at the route prefix ``/``)."""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(cfg: Any, api_key: str | None = None) -> Iterator[tuple[Any, str]]:
    """(a real ``QdrantClient`` over REST, the URL) of the gateway of ``cfg``'s migration."""
    from qdrant_client import QdrantClient
    from ray import serve

    from ray_migrate.gateway.app import bind, grpc_options

    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port},
                    grpc_options=grpc_options(cfg.gateway) if cfg.gateway else None)
        serve.run(bind(cfg), name="gw-test", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an api key over plain HTTP: a test on localhost
            client = QdrantClient(url=url, api_key=api_key, timeout=60)
        yield client, url
        client.close()
    finally:
        serve.shutdown()
