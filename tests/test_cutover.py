"""``switch_unit`` with a real router actor and real LanceDB on both sides: a confirm that
finds the other side differing refuses the switch (nothing frozen, the owner kept); a clean
unit switches at a quiet moment, without a freeze, and the target (read with lancedb) holds
the client's write."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from truth import read_lance, seed_lance_native

from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.config import LanceEndpoint, TransformConfig
from ray_migrate.cutover import switch_unit
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec


class DropsFirstRow:
    """The real target, whose upserts silently lose their first row: a faulty engine write."""

    def __init__(self, real: LanceBackend):
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def upsert(self, table: pa.Table) -> None:
        self.real.upsert(table.slice(1))


def test_a_differing_confirm_refuses_the_switch_and_a_clean_unit_switches_without_a_freeze(
        ray_cluster, tmp_path):
    from ray_migrate.router import start_router

    seed_lance_native(str(tmp_path / "src"), "docs", list(range(20)))
    source = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "src"), table="docs"))
    target = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "dst"), table="docs"))
    target.create(source.describe())
    target.upsert(source.fetch(list(range(20))))  # the copy
    unit = UnitSpec("all", "all")
    h = start_router("rt-switch", str(tmp_path / "state"), ["all"], {}, lease_s=5.0)
    try:
        for p in ("capturing", "copying", "catching_up", "ready"):
            h.call("set_phase", "all", p)
        # A client writes point 3 through a lease: captured in the unit's change log.
        rows = source.fetch([3])
        vec = rows.column("vector").type
        new = pa.FixedSizeListArray.from_arrays(pa.array(np.full(vec.list_size, 0.5,
                                                                 np.float32)), vec.list_size)
        rows = rows.set_column(rows.column_names.index("vector"), "vector", new)
        [lease] = h.call("begin_writes", [("all", [3], None)])
        source.upsert(rows)
        h.call("end_writes", [lease["token"]])
        identity = Transform(TransformConfig())

        res = switch_unit(h, (source, unit), (DropsFirstRow(target), unit), identity, "target",
                          "ready", 500, 1000)
        assert not res.ok and "differ" in res.reason and res.freeze_ms == 0.0
        st = h.call("unit", "all")
        assert (st["owner"], st["phase"]) == ("source", "ready"), "nothing switched or frozen"
        assert read_lance(str(tmp_path / "dst"), "docs")[3] != \
            read_lance(str(tmp_path / "src"), "docs")[3], "the faulty write really lost it"

        h.call("log_ids", "all", [3])  # the next catch-up applies it again
        res = switch_unit(h, (source, unit), (target, unit), identity, "target", "ready", 500,
                          1000)
        assert res.ok and res.how == "quiet" and res.steps_ms.keys() == {"switch"}, res
        st = h.call("unit", "all")
        assert (st["owner"], st["phase"], st["longest_freeze_ms"]) == ("target", "target", 0.0)
        assert read_lance(str(tmp_path / "dst"), "docs") == read_lance(str(tmp_path / "src"),
                                                                      "docs")
    finally:
        h.kill()
