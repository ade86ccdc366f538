"""The demo: a synthetic multi-tenant Qdrant local source, migrated to LanceDB on local Ray."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ray_migrate.config import MigrationConfig, parse_config
from ray_migrate.errors import ConfigError

log = logging.getLogger(__name__)

MARKER = ".ray-migrate-demo"  # in a work folder the demo made, and so may replace


def synthetic_points(n: int, tenants: int, dim: int, seed: int = 7,
                     uuid_ids: bool = False) -> Iterator[tuple[Any, np.ndarray, dict[str, Any]]]:
    """Deterministic points with the payload shapes real collections have (and their edges)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    for i in range(n):
        pid: Any = str(uuid.UUID(int=rng.integers(0, 2**63) << 64 | i)) if uuid_ids else i
        payload: dict[str, Any] = {"tenant": f"t{i % tenants}", "title": f"doc {i} ✓",
                                   "rank": int(i * 7919 % 1000)}
        if i % 3 == 0:
            payload["tags"] = ["a", "b"][: i % 2 + 1]
        if i % 5 == 0:
            payload["meta"] = {"source": "crawl", "depth": i % 4, "ok": i % 2 == 0}
        if i % 11 == 0:
            payload["note"] = None
        yield pid, vectors[i], payload


def seed_qdrant(path: str, collection: str, n: int, tenants: int, dim: int,
                batch: int = 2000) -> None:
    """Write the synthetic points into a Qdrant local folder with qdrant-client itself."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=path)
    try:
        if client.collection_exists(collection):
            client.delete_collection(collection)
        client.create_collection(collection, vectors_config=models.VectorParams(
            size=dim, distance=models.Distance.DOT))
        points: list[models.PointStruct] = []
        for pid, vec, payload in synthetic_points(n, tenants, dim):
            points.append(models.PointStruct(id=pid, vector=vec.tolist(), payload=payload))
            if len(points) == batch:
                client.upsert(collection, points)
                points = []
        if points:
            client.upsert(collection, points)
    finally:
        client.close()


def demo_config(workdir: Path, workers: int = 2) -> MigrationConfig:
    return parse_config({
        "migration_id": "demo",
        "source": {"kind": "qdrant", "path": "qdrant", "collection": "docs"},
        "target": {"kind": "lancedb", "uri": "lance", "table": "docs"},
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 1000, "workers": workers},
        "cutover": {"waves": [1, "25%", "100%"], "pause_s": 2.0},
        "state_uri": "state",
    }, base_dir=workdir)


def fresh_workdir(workdir: Path) -> None:
    """Empty ``workdir`` for a new demo run: only a folder an earlier run made (it holds
    ``MARKER``), or an empty one, is ever cleared; anything else is refused untouched."""
    if workdir.exists():
        if not workdir.is_dir() or (any(workdir.iterdir()) and not (workdir / MARKER).exists()):
            raise ConfigError(
                f"--workdir {str(workdir)!r}: it exists and was not made by 'ray-migrate demo' "
                f"(no {MARKER} file in it). The demo replaces its work folder: give a new or "
                "empty folder, or remove this one yourself")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by 'ray-migrate demo'; a new demo run replaces this "
                                  "folder\n")


def prepare_demo(workdir: Path, points: int, tenants: int, dim: int) -> MigrationConfig:
    """A fresh work folder with the seeded source; returns the migration config."""
    fresh_workdir(workdir)
    cfg = demo_config(workdir)
    log.info("seeding %d points over %d tenants into %s", points, tenants, cfg.source.location)
    seed_qdrant(cfg.source.location, cfg.source.name, points, tenants, dim)
    return cfg


def run_demo(workdir: Path, points: int, tenants: int, dim: int, traffic_s: float = 5.0,
             write_rate: float = 50.0, read_rate: float = 20.0) -> tuple[Any, Any]:
    """Seed, then migrate with a writer and a reader going through ``RoutedCollection``
    before, during and after the migration. Returns (run report, traffic)."""
    from ray_migrate.client import RoutedCollection
    from ray_migrate.driver import run_migration
    from ray_migrate.traffic import Traffic

    cfg = prepare_demo(workdir, points, tenants, dim)
    box: dict[str, Any] = {}

    def on_started(_: Any) -> None:
        coll = RoutedCollection.connect(cfg.migration_id)
        box["traffic"] = Traffic(coll, [f"t{i}" for i in range(tenants)], write_rate,
                                 read_rate, first_new_id=points).start()
        log.info("client traffic for %.0fs before the migration starts", traffic_s)
        time.sleep(traffic_s)
        box["traffic"].mark("during")

    report = run_migration(cfg, release_stores=False, on_started=on_started)
    traffic = box["traffic"]
    traffic.mark("after")
    time.sleep(traffic_s)
    traffic.stop()
    from ray_migrate.driver import release_local_stores

    release_local_stores(cfg)
    return report, traffic
