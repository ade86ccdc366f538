"""What a second writer process does to a client's merge_insert latency on a LanceDB table.

    python bench/conflicts.py [--points 20000] [--seconds 20] [--write]

A 20k-row table with a BTree index on ``id`` (as bench/live.py's source), fresh for each case,
takes a "client" process's merge_insert of 100 rows (50 random existing ids, 50 new ones)
every 0.2 s for ``--seconds``, timing each call. A second process (an applier, as ray_migrate's
follower or back-sync) does a merge_insert of 300 random existing ids to the same table every
2.0, 0.5 or 0.25 s, or none (the baseline). A merge_insert whose commit conflicts with another
writer's newer one is retried with backoff: the retried column counts the client's writes that
took more than one attempt (``num_attempts``), and a p99 column leaves them out. The last case
(the control) has the second process write another table in the same folder every 0.5 s: the
same CPU and disk load without a shared table, which separates sharing the table from load.
Both processes connect with ``read_consistency_interval=0`` as ray_migrate does and make one
untimed write before the timed span starts in both at once. The ratio column compares each
p99 with the baseline's, measured in the same run; the last column counts the client's table's
fragments at the end (every write adds one; see bench/fragments.py).
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # last on sys.path: bench/copy.py != copy
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import datetime as dt
import multiprocessing as mp
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray  # noqa: F401 - imported first: ray puts its bundled psutil on sys.path
from _common import lance_source, machine, md_table, publish, run_script, upsert_rows

DIM = 64
CLIENT_EVERY_S = 0.2
CLIENT_EXISTING, CLIENT_NEW = 50, 50
APPLIER_IDS = 300
PERIODS = (2.0, 0.5, 0.25)  # the second writer's pace on the client's table
CONTROL_EVERY_S = 0.5  # the second writer's pace on another table
START_TIMEOUT_S = 120.0


def writer(role: str, uri: str, table: str, every: float, existing: int, new: int,
           points: int, seconds: float, seed: int, barrier: Any, out: Any) -> None:
    """One writer process: a merge_insert of ``existing`` random existing ids and ``new`` new
    ones every ``every`` s for ``seconds``; puts (role, latencies in s, attempts, error)."""
    try:
        import lancedb

        rng = np.random.default_rng(seed)
        tbl = lancedb.connect(uri, read_consistency_interval=dt.timedelta(0)).open_table(table)
        fresh = points + seed * 10_000_000  # new ids, never another writer's

        def batch() -> pa.Table:
            nonlocal fresh
            ids = list(dict.fromkeys(int(x) for x in rng.integers(0, points, existing)))
            ids += range(fresh, fresh + new)
            fresh += new
            return upsert_rows(ids, rng, DIM)

        def upsert(data: pa.Table) -> Any:
            return tbl.merge_insert("id").when_matched_update_all() \
                .when_not_matched_insert_all().execute(data)

        upsert(batch())  # untimed: opens the table's files and index
        barrier.wait(START_TIMEOUT_S)
        lat: list[float] = []
        attempts: list[int] = []
        next_at = time.monotonic()
        end = next_at + seconds
        while time.monotonic() < end:
            data = batch()
            t0 = time.perf_counter()
            res = upsert(data)
            lat.append(time.perf_counter() - t0)
            attempts.append(int(getattr(res, "num_attempts", 1) or 1))
            # Every `every` s from one start to the next; an overrun is not made up with a burst.
            next_at = max(next_at + every, time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()))
        out.put((role, lat, attempts, None))
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        barrier.abort()
        out.put((role, [], [], traceback.format_exc()))


def main() -> int:
    import lancedb
    from lancedb.index import BTree

    from ray_migrate.follower import BACK_EVERY_S

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--write", action="store_true", help="replace the LanceDB concurrent "
                    "writers section of bench/results/conflicts.md with this run")
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    work = Path(tempfile.mkdtemp(prefix="rm-conf-"))
    cases: list[tuple[str, str | None, float]] = [("none", None, 0.0)]
    cases += [(f"same table, every {p:g} s", "src", p) for p in PERIODS]
    cases += [(f"another table, every {CONTROL_EVERY_S:g} s", "other", CONTROL_EVERY_S)]
    table_rows: list[tuple[str, ...]] = []
    found: dict[str, dict[str, Any]] = {}  # by case: client writes, retried, ms, fragments
    try:
        for i, (label, target, every) in enumerate(cases):
            uri = work / f"case{i}"
            for name in ("src", "other") if target == "other" else ("src",):
                lance_source(uri, a.points, DIM, table=name)
                lancedb.connect(str(uri)).open_table(name).create_index("id", config=BTree())
            out = ctx.Queue()
            barrier = ctx.Barrier(1 if target is None else 2)
            procs = [ctx.Process(target=writer, args=(
                "client", str(uri), "src", CLIENT_EVERY_S, CLIENT_EXISTING, CLIENT_NEW,
                a.points, a.seconds, 1, barrier, out))]
            if target is not None:
                procs.append(ctx.Process(target=writer, args=(
                    "second", str(uri), target, every, APPLIER_IDS, 0, a.points, a.seconds, 2,
                    barrier, out)))
            for p in procs:
                p.daemon = True  # ended with this script if it fails
                p.start()
            got = {}
            for _ in procs:
                role, lat, attempts, err = out.get(timeout=START_TIMEOUT_S + a.seconds + 120)
                if err:
                    raise RuntimeError(f"the {role} writer failed:\n{err}")
                got[role] = (lat, attempts)
            for p in procs:
                p.join()
            lat, attempts = got["client"]
            ms = np.array(lat) * 1000
            once = ms[np.array(attempts) == 1]
            r = {"n": len(ms), "retried": int(sum(n > 1 for n in attempts)),
                 "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                 "once99": float(np.percentile(once, 99)) if len(once) else float("nan"),
                 "frags": lancedb.connect(str(uri)).open_table("src")
                 .stats()["fragment_stats"]["num_fragments"]}
            found[label] = r
            table_rows.append((label, str(len(got["second"][0])) if "second" in got else "-",
                               str(r["n"]), str(r["retried"]), f"{r['p50']:.1f}",
                               f"{r['p99']:.1f}", f"{r['once99']:.1f}",
                               f"{r['p99'] / found['none']['p99']:.2f}", str(r["frags"])))
            print("  " + " | ".join(table_rows[-1]), flush=True)
            shutil.rmtree(uri, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = md_table(("Second writer", "Its writes", "Client writes", "Retried", "p50 ms",
                      "p99 ms", "p99 ms, not retried", "p99 ratio to none", "Fragments after"),
                     table_rows)
    base = found["none"]
    same = [found[c[0]] for c in cases if c[1] == "src"]
    ctrl = found[cases[-1][0]]
    paced = found[f"same table, every {CONTROL_EVERY_S:g} s"]
    at_back = found.get(f"same table, every {BACK_EVERY_S:g} s")

    def span(key: str, of: list[dict[str, Any]], fmt: str = ".1f", unit: str = "×") -> str:
        vals = [x[key] / base["p99"] if unit else x[key] for x in of]
        lo, hi = f"{min(vals):{fmt}}", f"{max(vals):{fmt}}"
        return (lo if lo == hi else f"{lo}-{hi}") + unit

    ratio_same, ratio_ctrl = paced["p99"] / base["p99"], ctrl["p99"] / base["p99"]
    if ratio_same <= 1.1:
        cause = "so at that pace sharing the table made little difference"
    elif (ratio_ctrl - 1) / (ratio_same - 1) < 0.5:
        cause = "so most of the difference comes from sharing the table, not from the load"
    else:
        cause = "so in this run the load alone accounts for much of the difference"
    retried, writes = sum(x["retried"] for x in same), sum(x["n"] for x in same)
    retries = (f"{retried} of the client's {writes} writes in the same-table cases were "
               f"retried after a commit conflict ({ctrl['retried']} in the control), and the "
               f"p99 of the others was {span('once99', same)} the baseline's" if retried else
               f"None of the client's {writes} writes in the same-table cases was retried "
               f"after a commit conflict ({ctrl['retried']} in the control)")
    back = (f": at that pace the client's p99 was {at_back['p99'] / base['p99']:.1f}× the "
            "baseline's" if at_back else "")
    cmd = ("python bench/conflicts.py " + " ".join(sys.argv[1:])).strip()
    text = (f"## LanceDB: concurrent writers\n\n`{cmd}` on {dt.date.today().isoformat()}; "
            f"{a.points:,} rows, dim {DIM}; the client upserts {CLIENT_EXISTING + CLIENT_NEW} "
            f"rows every {CLIENT_EVERY_S:g} s and the second writer {APPLIER_IDS} rows, for "
            f"{a.seconds:g} s each case.\n\nMachine: {machine()}.\n\n{table}\n\n"
            f"With a second process writing the same table, a client's merge_insert p99 was "
            f"{span('p99', same)} its p99 with no second writer ({base['p99']:.1f} ms); with it "
            f"writing another table in the same folder every {CONTROL_EVERY_S:g} s, "
            f"{ratio_ctrl:.1f}× (the same table at that pace: {ratio_same:.1f}×), {cause}. "
            f"{retries}; the client's table ended with {span('frags', same, 'd', '')} "
            f"fragments against {base['frags']} with no second writer. ray_migrate's back-sync "
            f"to the source, which clients keep writing during the rollback window, applies "
            f"only every {BACK_EVERY_S:g} s over all workers (`BACK_EVERY_S` in "
            f"ray_migrate/follower.py) to keep such writes rare"
            f"{back}.\n")
    publish("LanceDB: concurrent writers", text, a.write, "conflicts")
    return 0


if __name__ == "__main__":
    run_script(main)
