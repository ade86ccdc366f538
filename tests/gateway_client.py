"""The multi-process writer's collection when it goes through the gateway: the same calls as
``RoutedCollection`` (upsert, delete, filtered search, close), made with the real qdrant-client
over REST, as an application that never heard of ray_migrate would make them; with a gRPC
port, every other call goes over gRPC (``prefer_grpc=True``) instead."""

from __future__ import annotations

import time
import warnings
from typing import Any


class GatewayCollection:
    def __init__(self, url: str, api_key: str | None, grpc_port: int | None = None,
                 collection: str = "docs"):
        from qdrant_client import QdrantClient

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an api key over plain HTTP: a test on localhost
            self.clients = [QdrantClient(url=url, api_key=api_key, timeout=60)]
            if grpc_port:
                self.clients.append(QdrantClient(url=url, grpc_port=grpc_port, api_key=api_key,
                                                 prefer_grpc=True, timeout=60))
        self.name, self.calls = collection, 0

    @property
    def client(self) -> Any:
        """REST and gRPC in turn, when both are given."""
        self.calls += 1
        return self.clients[self.calls % len(self.clients)]

    @classmethod
    def when_up(cls, url: str, api_key: str | None, timeout_s: float,
                grpc_port: int | None = None) -> GatewayCollection:
        """Once the gateway answers for the collection (it is deployed after the router)."""
        import httpx

        t0 = time.monotonic()
        while True:
            try:
                res = httpx.get(f"{url}/collections/docs/exists", timeout=5,
                                headers={"api-key": api_key or ""})
                if res.status_code == 200 and res.json()["result"]["exists"]:
                    return cls(url, api_key, grpc_port)
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() - t0 > timeout_s:
                raise SystemExit(f"no gateway at {url} after {timeout_s:.0f}s")
            time.sleep(0.2)  # polling for the gateway to be deployed

    def upsert(self, points: list[dict[str, Any]]) -> None:
        from qdrant_client import models

        self.client.upsert(self.name, [models.PointStruct(**p) for p in points], wait=True)

    def delete(self, ids: list[Any]) -> None:
        from qdrant_client import models

        self.client.delete(self.name, models.PointIdsList(points=ids), wait=True)

    def search(self, vector: list[float], k: int, filter: dict[str, Any]) -> list[dict]:
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key=key, match=models.MatchValue(
            value=value)) for key, value in filter.items()])
        hits = self.client.query_points(self.name, query=vector, query_filter=flt, limit=k,
                                        with_payload=True).points
        return [{"id": h.id, "score": h.score, "payload": h.payload} for h in hits]

    def close(self) -> None:
        for client in self.clients:
            client.close()
