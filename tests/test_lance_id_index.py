"""The target's id index, rebuilt by finalize, against a model, under every write the run makes.

ray_migrate makes the target's BTree index on ``id`` with the empty table, so the bulk load's
rows are not in it until finalize rebuilds it (``lance_upkeep.finalize``); from then on the
live writes (merges, scoped merges, deletes, scoped deletes) and the live upkeep (merging small
fragments) go on over an index that covers part of the table. A seeded random sequence of
those, with the rebuild at a random step, is checked after every step against a dict the test
keeps: every id read by ``fetch`` and ``fetch_values`` (through the index where it covers the
row), the count, no id twice in a scan. A failing seed is printed.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_lancedb_backend import info_of, new_backend, scan_all

from ray_migrate.backends import lance_upkeep
from ray_migrate.config import LanceTargetOptions
from ray_migrate.schema import make_batch, payload_dicts, vectors_to_numpy
from ray_migrate.units import UnitSpec

ALL = UnitSpec("all", "all")
TENANTS = ["a", "b", "c"]
IDS = 240  # ids drawn from 0..IDS-1
STEPS = 30
UPKEEP = LanceTargetOptions(compact_min_fragments=2, index_min_rows=10**9)


def unit(t: str) -> UnitSpec:
    return UnitSpec(f"tenant={t}", "tenant", field="tenant", value=t)


class Model:
    """id -> (tenant, vector bytes), and the backend under test."""

    def __init__(self, tmp_path, rng: random.Random):
        self.info = info_of(vectors=(("vector", 4, "l2"),), schema={"tenant": "string"})
        self.b = new_backend(tmp_path, self.info)
        self.rng, self.points, self.n = rng, {}, 0

    def rows(self, ids: list[int], tenant: str | None = None):
        self.n += 1
        vecs = np.random.default_rng(self.n).standard_normal((len(ids), 4)).astype(np.float32)
        tenants = [tenant or self.rng.choice(TENANTS) for _ in ids]
        table = make_batch(self.info, ids, {"vector": vecs}, [{"tenant": t} for t in tenants])
        want = {pid: (t, vecs[i].tobytes())
                for i, (pid, t) in enumerate(zip(ids, tenants, strict=True))}
        return table, want

    def some(self, k: int) -> list[int]:
        return self.rng.sample(range(IDS), k)

    # --- the run's writes -----------------------------------------------------------------
    def bulk(self) -> str:
        ids = [i for i in range(IDS) if i % 2 == 0]
        table, want = self.rows(ids)
        self.b.append(table)
        self.points.update(want)
        return f"append {len(ids)}"

    def upsert(self) -> str:
        table, want = self.rows(self.some(self.rng.randint(1, 30)))
        self.b.upsert(table)
        self.points.update(want)
        return f"upsert {len(want)}"

    def scoped_upsert(self) -> str:
        t = self.rng.choice(TENANTS)
        table, want = self.rows(self.some(self.rng.randint(1, 30)), tenant=t)
        back = set(self.b.upsert(table, within=[unit(t)]))
        blocked = {pid for pid in want if pid in self.points and self.points[pid][0] != t}
        assert back == blocked, f"handed back {sorted(back)}, blocked {sorted(blocked)}"
        self.points.update({pid: v for pid, v in want.items() if pid not in blocked})
        return f"scoped upsert {len(want)} into {t}"

    def delete(self) -> str:
        ids = self.some(self.rng.randint(1, 20))
        self.b.delete(ids)
        for pid in ids:
            self.points.pop(pid, None)
        return f"delete {len(ids)}"

    def scoped_delete(self) -> str:
        t, ids = self.rng.choice(TENANTS), self.some(self.rng.randint(1, 20))
        self.b.delete(ids, unit(t))
        for pid in ids:
            if self.points.get(pid, ("",))[0] == t:
                del self.points[pid]
        return f"scoped delete {len(ids)} in {t}"

    def upkeep(self) -> str:
        done = self.b.maintain(UPKEEP, keep_versions=self.rng.random() < 0.5)
        return f"upkeep {done}"

    def finalize(self) -> str:
        compact = self.rng.random() < 0.5
        done = self.b.finalize(LanceTargetOptions(compact=compact, index_min_rows=10**9,
                                                  cleanup_older_than_s=0))
        assert done["id_index"], done
        return f"finalize compact={compact}"

    # --- the check ------------------------------------------------------------------------
    def check(self) -> None:
        asked = sorted(set(self.some(60)) | set(self.rng.sample(sorted(self.points),
                                                                 min(20, len(self.points)))))
        got = self.b.fetch(asked)
        vecs = vectors_to_numpy(got.column("vector"))
        have = {pid: (p.get("tenant"), vecs[i].tobytes()) for i, (pid, p) in enumerate(
            zip(got.column("id").to_pylist(), payload_dicts(got), strict=True))}
        assert got.num_rows == len(have), "an id fetched twice"
        assert have == {pid: self.points[pid] for pid in asked if pid in self.points}
        values = dict(self.b.fetch_values(asked, "tenant"))
        assert values == {pid: v[0] for pid, v in have.items()}
        ids = scan_all(self.b).column("id").to_pylist()
        assert len(ids) == len(set(ids)) == len(self.points) == self.b.count(ALL)
        assert set(ids) == set(self.points)


@pytest.mark.parametrize("seed", range(12))
def test_the_id_index_finalize_rebuilds_agrees_with_a_model_under_live_writes(seed, tmp_path):
    rng = random.Random(seed)
    m = Model(tmp_path, rng)
    done = [m.bulk()]
    ops = [m.upsert, m.scoped_upsert, m.delete, m.scoped_delete, m.upkeep]
    finalize_at = rng.randrange(STEPS // 2)
    for step in range(STEPS):
        op = m.finalize if step == finalize_at else rng.choice(ops)
        try:
            done.append(op())
            m.check()
        except AssertionError as err:
            raise AssertionError(f"seed {seed}, step {step} after {done}: {err}") from err
    index = {i.index_type: i for i in m.b.tbl.list_indices()}["BTree"]
    assert index.num_indexed_rows > 0, "finalize put the bulk load's rows in the id index"


def test_finalize_rebuilds_only_an_id_index_the_table_has(tmp_path):
    """A table made elsewhere (a LanceDB source, a target the user made) with no id index
    gets none from finalize."""
    m = Model(tmp_path, random.Random(0))
    m.bulk()
    m.b.tbl.drop_index(next(i.name for i in m.b.tbl.list_indices()))
    assert lance_upkeep.finalize(m.b.tbl, m.b._layout(),
                                 LanceTargetOptions(index_min_rows=10**9))["id_index"] is False
    assert m.b.tbl.list_indices() == []
