"""The real qdrant-client, over REST, against the gateway on the session Ray cluster: a
LanceDB-to-LanceDB migration mid-way (one tenant on the target, the others on the source), so
every read merges both owners. Each operation is checked against the truth read with LanceDB's
own client on each unit's owner, and against brute force for searches."""

from __future__ import annotations

import warnings
from typing import Any

import httpx
import numpy as np
import pytest
from gwserve import free_port, served
from test_live import DIM, live_config, other_side, read_side, seed

from ray_migrate.driver import Migration
from ray_migrate.waves import switch_units

KEY = "gw-secret"
ON_TARGET = "t1"
GRPC_PORT = free_port()


@pytest.fixture(scope="module")
def gw(ray_cluster, tmp_path_factory) -> Any:
    """(client, url, migration, source, target): the gateway over a migration whose tenant
    ``t1`` is cut over to the target; Serve is shut down at the end of the module."""
    root = tmp_path_factory.mktemp("gw")
    source, _ = seed("lancedb", root, n=200)
    target = other_side("lancedb", root)
    cfg = live_config(root, f"gw-{root.name}", source, target, cutover={"mode": "manual"},
                      gateway={"api_key": KEY, "num_cpus": 0, "grpc_port": GRPC_PORT})
    m = Migration(cfg)
    m.start()
    try:
        m.prepare_units()
        switch_units(m, [f"tenant={ON_TARGET}"], "cutover")
        with served(cfg, KEY) as (client, url):
            yield client, url, m, source, target
    finally:
        m.close()


def engines_truth(m: Migration, source: dict, target: dict) -> dict[int, Any]:
    """id -> (vector, payload) read with LanceDB's own client (tests/truth.py), each tenant
    from its owner."""
    from ray_migrate.routing.actor import get_router

    routes = get_router(m.cfg.migration_id).call("routes")["units"]
    out = {}
    for side, ep in (("source", source), ("target", target)):
        for pid, (vec, payload) in read_side(ep).items():
            if routes.get(f"tenant={payload['tenant']}", ("source",))[0] == side:
                out[pid] = (np.frombuffer(vec, np.float32), payload)
    return out


def point(pid: int, tenant: str, v: int, rng: np.random.Generator) -> dict[str, Any]:
    return {"id": pid, "vector": rng.standard_normal(DIM).astype(np.float32).tolist(),
            "payload": {"tenant": tenant, "v": v}}


def test_service_and_collection_info(gw):
    client, url, m, source, target = gw
    root = httpx.get(url)
    assert root.json().get("version", "").startswith("1.20"), root.text
    truth = engines_truth(m, source, target)
    info = client.get_collection("docs")
    assert info.points_count == len(truth)
    assert info.config.params.vectors.size == DIM
    assert info.config.params.vectors.distance.value == "Dot"
    assert client.collection_exists("docs") and not client.collection_exists("other")
    assert [c.name for c in client.get_collections().collections] == ["docs"]


def test_upsert_both_forms_retrieve_and_delete_by_ids_and_filter(gw):
    from qdrant_client import models

    client, url, m, source, target = gw
    rng = np.random.default_rng(3)
    listed = [point(5000 + i, ("t0", ON_TARGET)[i % 2], 1, rng) for i in range(6)]
    assert client.upsert("docs", [models.PointStruct(**p) for p in listed]).status.value \
        == "completed"
    batch = [point(6000 + i, ("t2", ON_TARGET)[i % 2], 2, rng) for i in range(4)]
    client.upsert("docs", models.Batch(ids=[p["id"] for p in batch],
                                       vectors=[p["vector"] for p in batch],
                                       payloads=[p["payload"] for p in batch]))
    truth = engines_truth(m, source, target)
    for p in listed + batch:  # on each tenant's owner, as written
        assert truth[p["id"]][1] == p["payload"]
        assert truth[p["id"]][0].tolist() == np.asarray(p["vector"], np.float32).tolist()
    got = client.retrieve("docs", [5000, 5001, 6003, 999999], with_vectors=True)
    assert sorted(r.id for r in got) == [5000, 5001, 6003]
    for r in got:
        assert r.payload == truth[r.id][1] and np.allclose(r.vector, truth[r.id][0])
    assert client.retrieve("docs", [5000])[0].vector is None  # with_vectors off by default

    client.delete("docs", models.PointIdsList(points=[5000, 5001]))
    client.delete("docs", models.FilterSelector(filter=models.Filter(must=[
        models.FieldCondition(key="v", match=models.MatchValue(value=2))])))
    truth = engines_truth(m, source, target)
    assert not {5000, 5001} & set(truth), "deleted by id on both owners"
    assert not [i for i, (_, p) in truth.items() if p["v"] == 2], "deleted by filter"
    assert {5002, 5003} <= set(truth)
    assert client.count("docs").count == len(truth)


FILTERS = [
    ({"must": [{"key": "tenant", "match": {"value": ON_TARGET}}]},
     lambda i, p: p["tenant"] == ON_TARGET),
    ({"must": [{"key": "tenant", "match": {"any": ["t0", ON_TARGET]}}],
      "must_not": [{"has_id": [1, 4, 5]}]},
     lambda i, p: p["tenant"] in ("t0", ON_TARGET) and i not in (1, 4, 5)),
    ({"should": [{"key": "tenant", "match": {"except": ["t0", "t2", "t3"]}},
                 {"key": "id_like", "range": {"gte": 0}}]},
     lambda i, p: p["tenant"] not in ("t0", "t2", "t3")),
    ({"must": [{"key": "v", "range": {"gte": 1, "lt": 2}}]}, lambda i, p: p["v"] == 1),
]


@pytest.mark.parametrize("flt, want", FILTERS)
def test_scroll_pages_and_count_match_the_truth(gw, flt, want):
    from qdrant_client import models

    client, url, m, source, target = gw
    truth = engines_truth(m, source, target)
    expected = sorted(i for i, (_, p) in truth.items() if want(i, p))
    qf = models.Filter.model_validate(flt)
    seen, offset = [], None
    while True:
        page, offset = client.scroll("docs", scroll_filter=qf, limit=37, offset=offset)
        seen += [r.id for r in page]
        if offset is None:
            break
    assert seen == expected, "every matching point once, ordered by id, across both owners"
    assert client.count("docs", count_filter=qf, exact=True).count == len(expected)


def brute(truth: dict[int, Any], q: np.ndarray, k: int, keep: Any = None) -> list[int]:
    scored = sorted(((-float(v @ q), i) for i, (v, p) in truth.items()
                     if keep is None or keep(i, p)))
    return [i for _, i in scored[:k]]


@pytest.mark.parametrize("flt, want", [(None, None), *FILTERS[:2]])
def test_query_and_search_equal_brute_force(gw, flt, want):
    from qdrant_client import models

    client, url, m, source, target = gw
    truth = engines_truth(m, source, target)
    rng = np.random.default_rng(8)
    qs = [rng.standard_normal(DIM).astype(np.float32) for _ in range(3)]
    qf = models.Filter.model_validate(flt) if flt else None
    for q in qs:
        hits = client.query_points("docs", query=q.tolist(), query_filter=qf, limit=7,
                                   with_payload=True).points
        assert [h.id for h in hits] == brute(truth, q, 7, want)
        assert all(h.payload == truth[h.id][1] for h in hits)
        assert np.allclose([h.score for h in hits], [float(truth[h.id][0] @ q) for h in hits],
                           rtol=1e-4)
    batch = client.query_batch_points("docs", [
        models.QueryRequest(query=q.tolist(), filter=qf, limit=5, offset=2) for q in qs])
    assert [[h.id for h in r.points] for r in batch] == [brute(truth, q, 7, want)[2:]
                                                         for q in qs]
    headers = {"api-key": KEY}  # search: the REST endpoint qdrant-client 1.20 no longer calls
    body = {"vector": qs[0].tolist(), "limit": 4, "filter": flt, "with_vector": True}
    res = httpx.post(f"{url}/collections/docs/points/search", json=body, headers=headers)
    assert [h["id"] for h in res.json()["result"]] == brute(truth, qs[0], 4, want)
    assert all(np.allclose(h["vector"], truth[h["id"]][0]) for h in res.json()["result"])
    res = httpx.post(f"{url}/collections/docs/points/search/batch", headers=headers,
                     json={"searches": [body, {**body, "limit": 2}]}).json()["result"]
    assert [len(r) for r in res] == [4, 2]


def test_concurrent_requests_on_one_replica_lose_nothing(gw):
    """The replica answers up to max_ongoing_requests at once, from threads sharing one
    RoutedCollection: writes to both owners and reads at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    from qdrant_client import models

    client, url, m, source, target = gw
    rng = np.random.default_rng(12)
    pts = [point(8000 + i, ("t0", ON_TARGET, "t2")[i % 3], 4, rng) for i in range(48)]

    def one(i: int) -> Any:
        if i % 2:
            return client.query_points("docs", query=pts[i]["vector"], limit=3).points
        return client.upsert("docs", [models.PointStruct(**pts[i]), models.PointStruct(
            **pts[i + 1])])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(0, 48)))
    truth = engines_truth(m, source, target)
    assert all(truth[p["id"]][1] == p["payload"] for p in pts), "every point, on its owner"
    assert all(truth[p["id"]][0].tolist() == np.asarray(p["vector"], np.float32).tolist()
               for p in pts)


def test_the_api_key_is_required_as_a_qdrant_server_requires_it(gw):
    from qdrant_client import QdrantClient
    from qdrant_client.http.exceptions import UnexpectedResponse

    client, url, m, source, target = gw
    anonymous = QdrantClient(url=url, timeout=30)
    with pytest.raises(UnexpectedResponse) as err:
        anonymous.count("docs")
    assert err.value.status_code == 401
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrong = QdrantClient(url=url, api_key="nope", timeout=30)
    with pytest.raises(UnexpectedResponse) as err:
        wrong.count("docs")
    assert err.value.status_code == 403
    res = httpx.get(f"{url}/collections/docs", headers={"Authorization": f"Bearer {KEY}"})
    assert res.status_code == 200 and res.json()["status"] == "ok"


@pytest.mark.parametrize("method, path, body, status, named", [
    ("PUT", "/collections/docs/points/payload", {"payload": {}, "points": [1]}, 404,
     "PUT /collections/docs/points/payload"),
    ("POST", "/collections/docs/points/count",
     {"filter": {"must": [{"key": "geo", "geo_radius": {"center": {"lon": 0, "lat": 0},
                                                         "radius": 1}}]}}, 400, "geo_radius"),
    ("POST", "/collections/docs/points/query", {"prefetch": [{"query": [0.0] * DIM}]}, 400,
     "prefetch"),
    ("POST", "/collections/other/points/count", {}, 404, "other"),
    ("PUT", "/collections/docs/points", {"points": [{"id": 1, "vector": [1.0, 2.0]}]}, 400,
     "shape"),
])
def test_unsupported_or_bad_calls_answer_qdrants_error_shape(gw, method, path, body, status,
                                                             named):
    client, url, m, source, target = gw
    before = engines_truth(m, source, target)
    res = httpx.request(method, url + path, json=body, headers={"api-key": KEY})
    assert res.status_code == status
    out = res.json()
    assert set(out) == {"status", "time"} and named in out["status"]["error"]
    assert engines_truth(m, source, target).keys() == before.keys(), "nothing written"


def grpc_client(url: str, key: str | None = KEY) -> Any:
    from qdrant_client import QdrantClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return QdrantClient(url=url, grpc_port=GRPC_PORT, prefer_grpc=True, api_key=key,
                            timeout=60)


def test_grpc_prefer_grpc_upserts_reads_queries_and_deletes(gw):
    from qdrant_client import models

    client, url, m, source, target = gw
    g = grpc_client(url)
    rng = np.random.default_rng(21)
    pts = [point(7000 + i, ("t3", ON_TARGET)[i % 2], 3, rng) for i in range(6)]
    assert g.upsert("docs", [models.PointStruct(**p) for p in pts]).status.value \
        == "completed"
    truth = engines_truth(m, source, target)
    for p in pts:
        assert truth[p["id"]][1] == p["payload"]
    got = g.retrieve("docs", [7000, 7001], with_vectors=True)
    assert sorted(r.id for r in got) == [7000, 7001]
    assert all(np.allclose(r.vector, truth[r.id][0]) and r.payload == truth[r.id][1]
               for r in got)
    flt, want = FILTERS[1]
    qf = models.Filter.model_validate(flt)
    expected = sorted(i for i, (_, p) in truth.items() if want(i, p))
    assert g.count("docs", count_filter=qf).count == len(expected)
    seen, offset = [], None
    while True:
        page, offset = g.scroll("docs", scroll_filter=qf, limit=50, offset=offset)
        seen += [r.id for r in page]
        if offset is None:
            break
    assert seen == expected
    q = rng.standard_normal(DIM).astype(np.float32)
    hits = g.query_points("docs", query=q.tolist(), query_filter=qf, limit=6).points
    assert [h.id for h in hits] == brute(truth, q, 6, want)
    g.delete("docs", models.FilterSelector(filter=models.Filter(must=[
        models.FieldCondition(key="v", match=models.MatchValue(value=3))])))
    assert not [i for i, (_, p) in engines_truth(m, source, target).items() if p["v"] == 3]
    info = g.get_collection("docs")
    assert info.config.params.vectors.size == DIM and g.collection_exists("docs")
    g.close()


def test_grpc_without_the_key_is_refused(gw):
    from qdrant_client import models

    client, url, m, source, target = gw
    g = grpc_client(url, key=None)
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        g.count("docs")
    with pytest.raises(Exception, match="UNIMPLEMENTED") as err:  # an RPC it does not serve
        grpc_client(url).set_payload("docs", {"x": 1}, points=[1])
    assert "SetPayload is not supported by the ray_migrate gateway" in str(err.value)
    with pytest.raises(Exception, match="prefetch"):
        grpc_client(url).query_points("docs", prefetch=[models.Prefetch(query=[0.0] * DIM)],
                                      query=[0.0] * DIM)
