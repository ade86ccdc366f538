"""Re-embedding live: a transform.function that puts the target in another model's space, and
transform.query_function, which clients use to search units on the target. A tenant on the
target answers exactly as brute force in the new space; every unit on the target, the same
over all; a scope on both sides is merged by rank; parity reports the new model's recall
against the old. Without a query function a changed dimension is refused with a clear error;
the example's config validates."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rm_test_transforms import TOY_MODEL, toy_query
from test_live import DIM, live_config, other_side, seed

from ray_migrate import RoutedCollection
from ray_migrate.backends import open_backend
from ray_migrate.config import load_config, parse_config
from ray_migrate.driver import Migration
from ray_migrate.errors import ConfigError
from ray_migrate.parity import unit_parity
from ray_migrate.reembed import side_query
from ray_migrate.schema import CollectionInfo, VectorSpec
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec
from ray_migrate.waves import switch_units

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reembed"


def new_space(truth: dict, q: np.ndarray, k: int, tenant: str | None) -> list:
    """Brute force in the target's space: the toy model of every point, dot with the query
    through ``toy_query``."""
    qt = toy_query(q)
    scored = [(float(np.tanh(np.frombuffer(v, np.float32) @ TOY_MODEL) @ qt), pid)
              for pid, (v, p) in truth.items() if tenant is None or p["tenant"] == tenant]
    return [pid for _, pid in sorted(scored, key=lambda s: (-s[0], str(s[1])))[:k]]


def wait_owner(coll: RoutedCollection, unit: str, owner: str) -> None:
    deadline = time.monotonic() + 10
    while coll.routes()[unit][0] != owner:
        assert time.monotonic() < deadline, "the watch never brought the cutover"
        time.sleep(0.02)


def test_searches_of_target_units_use_the_query_function(ray_cluster, tmp_path):
    source, truth = seed("lancedb", tmp_path, n=160)
    target = other_side("lancedb", tmp_path)
    mid = f"reembed-{tmp_path.name}"
    transform = {"function": "rm_test_transforms:toy_embed",
                 "query_function": "rm_test_transforms:toy_query"}
    cfg = live_config(tmp_path, mid, source, target, cutover={"mode": "manual"},
                      transform=transform, rollback={"window_s": 0})
    m = Migration(cfg)
    m.start()
    try:
        m.prepare_units()
        coll = RoutedCollection.connect(mid)
        switch_units(m, ["tenant=t0"], "cutover")
        wait_owner(coll, "tenant=t0", "target")
        rng = np.random.default_rng(4)
        for _ in range(4):
            q = rng.standard_normal(DIM).astype(np.float32)
            got = coll.search(q.tolist(), k=5, filter={"tenant": "t0"})
            assert [h["id"] for h in got] == new_space(truth, q, 5, "t0")
            mixed = coll.search(q.tolist(), k=12)  # t0 new space, t1..t3 old: by rank
            assert len({h["id"] for h in mixed}) == 12
            assert sum(truth[h["id"]][1]["tenant"] == "t0" for h in mixed) == 3, \
                "a quarter of the units: a quarter of the ranks"

        # Parity: the target searched with the query function, judged in the new space.
        src, dst = open_backend(cfg.source), open_backend(cfg.target)
        unit = UnitSpec("tenant=t1", "tenant", field="tenant", value="t1")
        res = unit_parity(unit, src, dst, Transform(cfg.transform), ("vector", "dot", "dot"),
                          queries=10, k=5)
        assert res is not None and res.recall_at_k_target == 1.0
        assert res.recall_at_k_new_vs_old is not None and res.recall_at_k_new_vs_old < 1.0

        switch_units(m, None, "cutover")
        for u in ("tenant=t1", "tenant=t2", "tenant=t3"):
            wait_owner(coll, u, "target")
        q = rng.standard_normal(DIM).astype(np.float32)
        assert [h["id"] for h in coll.search(q.tolist(), k=10)] == new_space(truth, q, 10, None)
        coll.close()
    finally:
        m.close()


def test_a_changed_dimension_needs_a_query_function(tmp_path):
    plan = SimpleNamespace(target_info=CollectionInfo(
        "docs", (VectorSpec("vector", 4, "dot"),), "int"))
    base = {"migration_id": "r", "state_uri": "s",
            "source": {"kind": "lancedb", "uri": "a", "table": "docs"},
            "target": {"kind": "lancedb", "uri": "b", "table": "docs"}}
    q = np.ones(DIM, np.float32)
    plain = Transform(parse_config({**base, "transform": {
        "function": "rm_test_transforms:toy_embed_4d"}}).transform)
    assert side_query(plain, plan, "source", q, "vector") is q
    with pytest.raises(ConfigError, match="4-d on the target but queries are 8-d: set "
                       "transform.query_function"):
        side_query(plain, plan, "target", q, "vector")
    # A query function of the wrong dimension is named too.
    wrong = Transform(parse_config({**base, "transform": {
        "function": "rm_test_transforms:toy_embed_4d",
        "query_function": "rm_test_transforms:toy_query"}}).transform)
    with pytest.raises(Exception, match="must return 4 finite floats"):
        side_query(wrong, plan, "target", q, "vector")
    with pytest.raises(ConfigError, match="query_function embeds queries .* set "
                       "transform.function"):
        parse_config({**base, "transform": {"query_function": "rm_test_transforms:toy_query"}})
    # The fingerprint ignores the query function: adding one does not change the plan.
    a = parse_config({**base, "transform": {"function": "rm_test_transforms:toy_embed"}})
    b = parse_config({**base, "transform": {"function": "rm_test_transforms:toy_embed",
                                            "query_function": "rm_test_transforms:toy_query"}})
    assert a.fingerprint() == b.fingerprint()


def test_the_example_config_validates():
    import sys

    cfg = load_config(EXAMPLE / "reembed.yaml")
    assert cfg.transform.function and cfg.transform.query_function
    sys.path.insert(0, str(EXAMPLE))
    try:
        t = Transform(cfg.transform)
        out = t.embed_query(np.ones(64, np.float32), 32)
        assert out.shape == (32,)
    finally:
        sys.path.remove(str(EXAMPLE))
