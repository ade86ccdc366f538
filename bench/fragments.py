"""What small writes cost a LanceDB table: the reads and merges catch-up and cutover make.

    python bench/fragments.py [--points 20000] [--upserts 300] [--write]

A 20k-row table with a BTree index on ``id`` (as bench/live.py's source) takes 100-row
upserts, one fragment each; after 0, 50, 150 and 300 of them, and after ``optimize()``, it
times a fetch of 60 and of 500 ids by ``id IN (...)`` (what a catch-up step or a drain reads
from the owner) and a merge_insert of 60 rows (what a client write or a catch-up does). The
ratio column compares each time with the fresh table's, measured in the same run.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # last on sys.path: bench/copy.py != copy
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray  # noqa: F401 - imported first: ray puts its bundled psutil on sys.path
from _common import lance_source, machine, md_table, publish, run_script, upsert_rows

DIM = 64
REPEATS = 5


def main() -> int:
    import lancedb
    from lancedb.index import BTree

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--upserts", type=int, default=300)
    ap.add_argument("--write", action="store_true", help="replace the LanceDB fragments "
                    "section of bench/results/fragments.md with this run")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rm-frag-"))
    rng = np.random.default_rng(0)
    table_rows: list[tuple[str, ...]] = []
    base: dict[str, float] = {}
    try:
        lance_source(work, a.points, DIM)
        db = lancedb.connect(str(work), read_consistency_interval=dt.timedelta(0))
        tbl = db.open_table("src")
        tbl.create_index("id", config=BTree())

        def measure(label: str) -> None:
            times: dict[str, float] = {}
            for n in (60, 500):
                lits = ", ".join(str(int(x)) for x in rng.choice(a.points, n, replace=False))
                runs = []
                for _ in range(REPEATS):
                    t0 = time.perf_counter()
                    tbl.search().where(f"id IN ({lits})").to_arrow()
                    runs.append(time.perf_counter() - t0)
                times[f"fetch {n} ids"] = float(np.median(runs))
            runs = []
            for _ in range(REPEATS):
                ids = [int(x) for x in rng.choice(a.points, 60, replace=False)]
                batch = upsert_rows(ids, rng, DIM)
                t0 = time.perf_counter()
                tbl.merge_insert("id").when_matched_update_all() \
                    .when_not_matched_insert_all().execute(batch)
                runs.append(time.perf_counter() - t0)
            times["merge_insert 60 rows"] = float(np.median(runs))
            frags = tbl.stats()["fragment_stats"]["num_fragments"]
            for what, s in times.items():
                base.setdefault(what, s)
                table_rows.append((label, str(frags), what, f"{s * 1000:.1f}",
                                   f"{s / base[what]:.2f}"))
                print("  " + " | ".join(table_rows[-1]), flush=True)

        done = 0
        for upto in (0, 50, 150, a.upserts):
            for _ in range(upto - done):
                ids = list(dict.fromkeys(int(x) for x in rng.integers(0, a.points, 100)))
                tbl.merge_insert("id").when_matched_update_all() \
                    .when_not_matched_insert_all().execute(upsert_rows(ids, rng, DIM))
            done = upto
            measure(f"after {upto} upserts of 100 rows")
        tbl.optimize()
        measure("after optimize()")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = md_table(("Table state", "Fragments", "Operation", "ms (median of 5)",
                      "Ratio to fresh"), table_rows)
    cmd = ("python bench/fragments.py " + " ".join(sys.argv[1:])).strip()
    text = (f"## LanceDB fragments\n\n`{cmd}` on {dt.date.today().isoformat()}; "
            f"{a.points:,} rows, dim {DIM}.\n\nMachine: {machine()}.\n\n{table}\n\n"
            "Every small write to a LanceDB table adds a fragment; reads by id and merges "
            "slow down with their number until the table is compacted. Catch-up and cutover "
            "drains read changed ids from the owner (the source, before cutover), so a source "
            "that takes many small writes needs the application's usual `optimize()`.\n")
    publish("LanceDB fragments", text, a.write, "fragments")
    return 0


if __name__ == "__main__":
    run_script(main)
