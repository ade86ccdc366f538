"""RoutedCollection's cached routing table: a watch keeps it current, and a write that saw a
newer epoch makes the next read ask the router."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from test_live import DIM, live_config, other_side, seed

from ray_migrate import RoutedCollection
from ray_migrate.driver import Migration
from ray_migrate.waves import switch_units


def test_router_answers_a_route_watch_at_the_next_change(ray_cluster, tmp_path):
    import ray

    from ray_migrate.routing.actor import start_router

    h = start_router("rt-watch", str(tmp_path), ["a"], {}, lease_s=5.0)
    try:
        now = h.call("routes")
        assert h.call("wait_routes", now["epoch"] - 1, 30.0) == now, "differs: answered at once"
        started = time.monotonic()
        assert h.call("wait_routes", now["epoch"], 0.3) == now
        assert time.monotonic() - started >= 0.25, "no change: answered after the timeout"
        pending = h.actor.wait_routes.remote(now["epoch"], 30.0)
        time.sleep(0.3)
        assert ray.wait([pending], timeout=0)[0] == [], "waits while nothing changes"
        h.call("set_phase", "a", "capturing")
        out = ray.get(pending, timeout=10)
        assert out["epoch"] > now["epoch"] and tuple(out["units"]["a"]) == ("source", "capturing")
    finally:
        h.kill()


def test_reads_use_the_cached_routes_and_a_newer_epoch_seen_by_a_write_refreshes_them(
        ray_cluster, tmp_path, monkeypatch):
    from ray_migrate.routing.watch import RouteCache

    source, _ = seed("lancedb", tmp_path, n=40)
    mid = f"cache-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, other_side("lancedb", tmp_path),
                              cutover={"mode": "manual"}))
    m.start()
    try:
        m.prepare_units()
        held = threading.Event()  # the watch's answers arrive late, as over a slow network
        real_once = RouteCache._watch_once

        def slow(self: RouteCache, epoch: int) -> Any:
            out = real_once(self, epoch)
            held.wait(60)
            return out

        monkeypatch.setattr(RouteCache, "_watch_once", slow)
        coll = RoutedCollection.connect(mid)
        calls: Counter[str] = Counter()
        real_call = coll.router.call

        def counting(method: str, *args: Any, **kwargs: Any) -> Any:
            calls[method] += 1
            return real_call(method, *args, **kwargs)

        coll.router.call = counting  # type: ignore[method-assign]
        q = [0.1] * DIM
        for _ in range(3):
            coll.retrieve([1, 2])
            coll.search(q, k=3)
            coll.count()
        assert calls["routes"] == 0, "reads use the table the client got when it connected"

        switch_units(m, ["tenant=t1"], "cutover")  # the watch brings nothing: stale cache
        point = {"id": 9001, "vector": [0.5] * DIM, "payload": {"tenant": "t1", "v": 1}}
        coll.upsert([point])  # its lease comes from the router, with the newer epoch
        assert coll.routes()["tenant=t1"][0] == "target"
        assert calls["routes"] == 1, "a write saw a newer epoch: the next read asked"
        assert [r["id"] for r in coll.retrieve([9001])] == [9001], "reads its own write"

        held.set()  # from now on the watch answers at once
        switch_units(m, ["tenant=t2"], "cutover")
        deadline = time.monotonic() + 10
        while coll.routes()["tenant=t2"][0] != "target":
            assert time.monotonic() < deadline, "the watch never brought the change"
            time.sleep(0.02)
        assert calls["routes"] == 1, "the watch, not a read, brought the change"
        coll.close()
    finally:
        m.close()
