"""What keeps a unit worker's memory flat in the source's size: its scans' bounded Lance
caches, and the glibc arena limit its actor process starts with (issue 15; the figures are
bench/copy_lance.py's, never asserted here)."""

from __future__ import annotations

import lancedb.table
import numpy as np
import pyarrow as pa

from ray_migrate.backends.lancedb import SCAN_CACHE, LanceBackend
from ray_migrate.config import LanceEndpoint, parse_config
from ray_migrate.pool import WORKER_ENV, _actor_options
from ray_migrate.schema import CollectionInfo, VectorSpec, make_batch
from ray_migrate.units import UnitSpec


def test_a_scan_opens_its_dataset_with_bounded_caches(tmp_path, monkeypatch):
    b = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "db"), table="t"))
    info = CollectionInfo("c", (VectorSpec("vector", 4, "l2"),), "int", {})
    b.create(info)
    vecs = {"vector": np.ones((30, 4), np.float32)}
    b.append(make_batch(info, list(range(30)), vecs, [{}] * 30))
    real, opened = lancedb.table.LanceTable.to_lance, []

    def recorded(self, **kw):  # the real call, its arguments noted
        opened.append(kw)
        return real(self, **kw)

    monkeypatch.setattr(lancedb.table.LanceTable, "to_lance", recorded)
    got = pa.concat_tables([t for t, _ in b.scan(UnitSpec("u", "id_range", lo=5, hi=25), 7)])
    assert sorted(got.column("id").to_pylist()) == list(range(5, 25))
    assert opened == [SCAN_CACHE]
    assert all(0 < v <= 64 << 20 for v in SCAN_CACHE.values())


def _cfg(tmp_path):
    return parse_config({
        "migration_id": "mem", "source": {"kind": "lancedb", "uri": str(tmp_path), "table": "s"},
        "target": {"kind": "lancedb", "uri": str(tmp_path), "table": "t"},
        "state_uri": str(tmp_path / "state")})


class _Env:
    def get(self, name: str) -> str | None:
        import os

        return os.environ.get(name)


def test_a_worker_process_starts_with_few_malloc_arenas(ray_cluster, tmp_path):
    import ray

    options = _actor_options(_cfg(tmp_path))
    assert options["runtime_env"]["env_vars"] == WORKER_ENV == {"MALLOC_ARENA_MAX": "2"}
    options.pop("name", None)
    actor = ray.remote(_Env).options(**options).remote()
    try:
        assert ray.get(actor.get.remote("MALLOC_ARENA_MAX"), timeout=120) == "2"
    finally:
        ray.kill(actor, no_restart=True)
