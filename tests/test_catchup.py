"""Catch-up with clients' own rows: ids the router hands out with the rows a client wrote are
not read back from the owner; everything else is. Real LanceDB on both sides, the owner
wrapped to count what is read; the other side read with lancedb itself."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from truth import read_lance, seed_lance_native

from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.catchup import apply_ids
from ray_migrate.config import LanceEndpoint, TransformConfig
from ray_migrate.routing.client_rows import encode_rows
from ray_migrate.transform import Transform


class CountingFetch:
    """The real backend; remembers which ids were read."""

    def __init__(self, real: LanceBackend):
        self.real, self.asked = real, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def fetch(self, ids):
        self.asked += list(ids)
        return self.real.fetch(ids)


@pytest.mark.parametrize("wire", ["ipc", "table"])
def test_apply_uses_clients_rows_and_reads_only_the_rest(tmp_path, wire):
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(20)))
    source = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "src"), table="docs"))
    target = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "dst"), table="docs"))
    target.create(source.describe())
    target.upsert(source.fetch(list(range(20))))
    # A client wrote 3 and 4 and deleted 5 on the source; 6 changed too (no rows handed in).
    written = source.fetch([3, 4, 6])
    rng = np.random.default_rng(9)
    vec = written.column("vector").type
    new = pa.FixedSizeListArray.from_arrays(
        pa.array(rng.standard_normal(3 * vec.list_size).astype(np.float32)), vec.list_size)
    written = written.set_column(written.column_names.index("vector"), "vector", new)
    source.upsert(written)
    source.delete([5])
    by_client = written.filter(pc.is_in(written.column("id"),
                                                value_set=pa.array([3, 4], pa.int64())))
    owner = CountingFetch(source)
    seen: list = []
    up, gone = apply_ids([3, 4, 5, 6, 7], owner, target, Transform(TransformConfig()), seen,
                         carried=[([3, 4], ("upsert", encode_rows(by_client) if wire == "ipc"
                                                       else by_client)),
                                  ([5], ("delete", [5]))])
    assert sorted(owner.asked) == [6, 7], "only ids without a client's rows are read"
    assert (up, gone) == (4, 1)
    assert sorted(i for asked, _ in seen for i in asked) == [3, 4, 5, 6, 7]
    have, want = read_lance(str(tmp_path / "dst"), "docs"), read_lance(str(tmp_path / "src"), "docs")
    assert 5 not in have and set(have) == set(want)
    for pid in want:
        assert have[pid] == want[pid], f"point {pid} differs"
