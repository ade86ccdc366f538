"""Shadow reads at 100%: on a faithful copy every shadow agrees (overlap 1.0); a target whose
vectors were changed with lancedb itself disagrees (overlap below 1) while the application
still gets the owner's exact answer; a shadow side that hangs or fails never reaches the
application: its reads are skipped or counted as errors. The router's summary, the bucket
format's round trip and the report's line are checked too."""

from __future__ import annotations

import threading
import time
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from test_live import DIM, brute_force, live_config, other_side, seed

from ray_migrate import RoutedCollection
from ray_migrate.client_stats import ClientStats
from ray_migrate.driver import Migration
from ray_migrate.errors import TransientError
from ray_migrate.report_files import markdown
from ray_migrate.routing.client_stats import StatsSeries
from ray_migrate.waves import switch_units


class Blocking:
    """A backend whose searches wait for ``go`` and then raise: a hung, then failing side."""

    def __init__(self, backend: Any):
        self._inner, self.go, self.calls = backend, threading.Event(), 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.go.wait(30)
        raise TransientError("shadow side down")


def perturb(uri: str, tenant: str) -> None:
    """Give half the tenant's target points other vectors, with lancedb itself."""
    tbl = lancedb.connect(uri).open_table("docs")
    data = tbl.to_arrow()
    rows = data.filter(pc.equal(data.column("tenant"), tenant)).sort_by("id")
    part = rows.slice(0, rows.num_rows // 2)
    vecs = np.random.default_rng(7).standard_normal((part.num_rows, DIM)).astype(np.float32)
    part = part.set_column(part.schema.get_field_index("vector"), "vector",
                           pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM))
    tbl.merge_insert("id").when_matched_update_all().execute(part)


def shadow_of(coll: RoutedCollection) -> dict[str, Any]:
    coll.shadow.drain(30)
    coll.cache.push_stats(wait_s=30)
    summary = coll.router.call("client_stats")
    return {u: sides["shadow"] for u, sides in summary["units"].items() if "shadow" in sides}


def searches(coll: RoutedCollection, truth: dict, tenant: str | None, n: int = 4,
             drain: bool = True) -> None:
    """``n`` searches, each the owner's exact answer (brute force over the source's truth);
    ``drain``: each waits for its shadow (else a third shadow under way is skipped)."""
    rng = np.random.default_rng(sum(map(ord, tenant or "*")))
    for _ in range(n):
        q = rng.standard_normal(DIM).astype(np.float32)
        got = coll.search(q.tolist(), k=5, filter={"tenant": tenant} if tenant else None)
        assert [h["id"] for h in got] == [pid for _, pid in brute_force(truth, q, 5, tenant)]
        if drain:
            coll.shadow.drain(30)


def test_shadow_reads_record_overlap_and_never_reach_the_app(ray_cluster, tmp_path):
    source, truth = seed("lancedb", tmp_path, n=160)
    target = other_side("lancedb", tmp_path)
    mid = f"shadow-{tmp_path.name}"
    cfg = live_config(tmp_path, mid, source, target, cutover={"mode": "manual"},
                      reads={"shadow_percent": 100})
    m = Migration(cfg)
    m.start()
    try:
        m.prepare_units()
        coll = RoutedCollection.connect(mid)
        assert coll.shadow.percent == 100
        assert {phase for _, phase in coll.routes().values()} == {"ready"}

        # Ready units, a faithful copy: every shadow (on the target) agrees.
        searches(coll, truth, "t0")
        searches(coll, truth, None)
        got = shadow_of(coll)
        assert got["tenant=t0"]["reads"] == 4 and got["tenant=t0"]["overlap_at_k"] == 1.0
        assert got["*"]["reads"] == 4 and got["*"]["overlap_at_k"] == 1.0
        assert got["tenant=t0"]["p95_ms_owner"] > 0 and got["tenant=t0"]["p95_ms_shadow"] > 0

        # The target's t1 loses true neighbours: the shadow sees it, the app does not.
        perturb(target["uri"], "t1")
        searches(coll, truth, "t1", n=6)
        got = shadow_of(coll)
        assert got["tenant=t1"]["reads"] == 6 and got["tenant=t1"]["overlap_at_k"] < 1.0

        # t2 on the target; its shadow side (the source) hangs, then fails.
        switch_units(m, ["tenant=t2"], "cutover")
        deadline = time.monotonic() + 10
        while tuple(coll.routes()["tenant=t2"]) != ("target", "target"):
            assert time.monotonic() < deadline, "the watch never brought the cutover"
            time.sleep(0.02)
        hung = coll.backends["source"] = Blocking(coll.backends["source"])
        searches(coll, truth, "t2", n=5, drain=False)  # answered while the shadows hang
        hung.go.set()
        got = shadow_of(coll)["tenant=t2"]
        assert hung.calls == 2, "at most MAX_IN_FLIGHT shadows at once"
        assert (got["reads"], got["errors"], got["skipped"]) == (2, 2, 3)
        assert got["overlap_at_k"] is None
        summary = coll.router.call("client_stats")
        assert summary["shadow"]["reads"] == 4 + 4 + 6 + 2
        assert summary["by_op"]["search"]["requests"] == 4 + 4 + 6 + 5, "shadows not counted"
        assert summary["by_op"]["search"]["errors"] == 0
        assert any("shadow_reads" in p for p in summary["series"])
        coll.close()
    finally:
        m.close()


def test_shadow_buckets_merge_persist_and_reach_the_report(tmp_path):
    """No Ray: shadow rows merge across clients, survive ``to_dict``/``from_dict`` and give
    the report's line."""
    t = 1_700_000_000.0
    a, b = ClientStats(lambda: t), ClientStats(lambda: t)
    a.record("search", t, 3.0, False, "target", "u1")
    a.shadow(t, "target", "u1", 3.0, 8.0, 1.0)
    b.shadow(t, "target", "u1", 4.0, 9.0, 0.5)
    b.shadow(t, "target", "u1", 4.0, 30.0, None)  # failed
    b.shadow(t, "target", "u1", 4.0, None, None, skipped=True)
    series = StatsSeries(lambda: t + 1)
    series.add_client("a", a.take())
    series.add_client("b", b.take())
    again = StatsSeries.from_dict(series.to_dict(), lambda: t + 1)
    for s in (series, again):
        out = s.summary()
        sh = out["units"]["u1"]["shadow"]
        assert (sh["reads"], sh["errors"], sh["skipped"]) == (3, 1, 1)
        assert sh["overlap_at_k"] == 0.75 and sh["p95_ms_shadow"] >= 30.0
        assert out["totals"]["requests"] == 1  # shadows are not requests
        assert out["series"][0]["shadow_reads"] == 3
    doc = {"report": {"migration_id": "x", "units": []}, "ok": True, "why_not_ok": [],
           "since": t, "until": t + 1, "client": out, "events": [], "shadow": out["shadow"]}
    assert "shadow reads: 3" in markdown(doc)
