"""The router's event loop never waits in ``ray.get``: every client call goes through that
loop, so a blocking get there stalls them all (Ray logs "Using blocking ray.get inside async
actor" once per process when one happens). Real Ray, router, hosted Qdrant folder."""

from __future__ import annotations

from test_live import live_config, other_side, seed
from test_store_lifetime import FREE_BOUND_S, folder_opens


def warned(router) -> bool:
    """Whether the router's process made a blocking ray.get (Ray's own once-only flag)."""
    import ray

    def look(_self) -> bool:
        import ray._private.worker as w

        return bool(w.blocking_get_inside_async_warned)

    return ray.get(router.actor.__ray_call__.remote(look))


def test_releasing_a_hosted_store_makes_no_blocking_get_in_the_router(ray_cluster, tmp_path):
    from ray_migrate.backends import open_backend
    from ray_migrate.driver import Migration

    source, _ = seed("qdrant", tmp_path, n=20)
    mid = f"loop-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, other_side("lancedb", tmp_path),
                              cutover={"mode": "manual"}))
    m.start(workers=False)
    assert open_backend(m.cfg.source).count(m.plan.units[0]) >= 0  # the store is hosted
    units = [u.unit_id for u in m.plan.units]
    for phase in ("capturing", "copying", "catching_up", "ready", "frozen"):
        m.router.call("set_phases", units, phase)
    for u in units:
        assert m.router.call("flip", u, "target")
    m.router.call("set_phases", units, "done")
    router = m.router
    assert not warned(router), "none before the release"
    m.close()  # no unit routes to the source: the router releases its store now
    folder_opens(source["path"], within_s=FREE_BOUND_S)
    assert not warned(router), "the router made a blocking ray.get"
