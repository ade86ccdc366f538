"""A unit cut over, rolled back and cut over again, with a real router actor and real LanceDB
on both sides, and no verify: what clients wrote while it was back on the source reaches the
target (read with lancedb), a delete included."""

from __future__ import annotations

from test_cutover import ready_unit, with_vector
from truth import read_lance

from ray_migrate.catchup import UnitSync
from ray_migrate.config import TransformConfig
from ray_migrate.cutover import switch_unit
from ray_migrate.transform import Transform


def test_a_delete_made_while_rolled_back_reaches_the_target_at_the_next_cutover(
        ray_cluster, tmp_path):
    source, target, unit, h = ready_unit(tmp_path, "rt-recut", 5.0)
    identity = Transform(TransformConfig())
    try:
        res = switch_unit(h, (source, unit), (target, unit), identity, "target", "ready", 500,
                          1000)
        assert res.ok and h.call("unit", "all")["owner"] == "target", res
        res = switch_unit(h, (target, unit), (source, unit), identity, "rolled_back", "target",
                          500, 1000)
        assert res.ok and h.call("unit", "all")["phase"] == "rolled_back", res

        # Back on the source, a client deletes point 4 and updates point 6, through leases.
        [lease] = h.call("begin_writes", [("all", [4], None)])
        assert lease["owner"] == "source"
        source.delete([4])
        h.call("end_writes", [lease["token"]], {lease["token"]: (("delete", [4]), 16)})
        [lease] = h.call("begin_writes", [("all", [6], None)])
        source.upsert(with_vector(source.fetch([6]), 0.5))
        h.call("end_writes", [lease["token"]])

        # Prepared again as ``worker.prepare`` does with verify off: capture, copy (skipped:
        # its checkpoint says copied), catch up, ready; then the cutover.
        for p in ("capturing", "copying", "catching_up"):
            h.call("set_phase", "all", p)
        lag, applied = UnitSync(unit, h, source, target, identity).until(0, timeout_s=30)
        assert lag == 0 and applied == {4, 6}, (lag, applied)
        h.call("set_phase", "all", "ready")
        res = switch_unit(h, (source, unit), (target, unit), identity, "target", "ready", 500,
                          1000)
        assert res.ok and h.call("unit", "all")["owner"] == "target", res

        dst = read_lance(str(tmp_path / "dst"), "docs")
        assert 4 not in dst, "the point deleted while rolled back came back"
        assert dst == read_lance(str(tmp_path / "src"), "docs")
    finally:
        h.kill()
