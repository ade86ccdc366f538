"""Copy throughput of ray_migrate against its read/write ceilings and a naive loop.

    python bench/copy.py [--points 100000] [--big 400000] [--dim 64] [--quick] [--write]

One run, same data, one Markdown table (points/s; MB for memory). ray_migrate rates are for the
copy phase only: from the first unit's start to the last unit's end (per-unit seconds from the
report, end times from the units' final checkpoints), so Ray startup, planning, worker start,
finalize and verify are excluded; the end-to-end run_migration rate is shown for reference.
The Qdrant local source is seeded once into bench/.cache/ (keyed by points/dim) by writing the
local-mode sqlite storage in one transaction with qdrant-client's own key encoding and pickles.
Exits 0 whatever the numbers are: it is a measurement.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

# This file is named copy.py: keep its folder off sys.path so `import copy` finds the stdlib.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]  # last

import argparse
import datetime as dt
import json
import pickle
import shutil
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray  # noqa: F401 - imported first: ray puts its bundled psutil on sys.path
from _common import copy_window, lance_source, machine, md_table, publish, run_script

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
TENANTS, BATCH, WORKERS, COLL = 8, 1000, 2, "docs"


# --- sources -------------------------------------------------------------------------------
def qdrant_source(n: int, dim: int) -> Path:
    """A cached Qdrant local folder holding ray_migrate.demo.synthetic_points(n, 8, dim)."""
    from qdrant_client import QdrantClient, models
    from qdrant_client._pydantic_compat import construct
    from qdrant_client.local.persistence import CollectionPersistence

    from ray_migrate.demo import synthetic_points

    path = CACHE / f"qdrant-n{n}-d{dim}"
    if (path / "complete").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    client = QdrantClient(path=str(path))
    client.create_collection(COLL, vectors_config=models.VectorParams(
        size=dim, distance=models.Distance.DOT))
    client.close()
    rows = ((CollectionPersistence.encode_key(pid), sqlite3.Binary(pickle.dumps(construct(
        models.PointStruct, id=pid, vector=vec.tolist(), payload=payload))))
        for pid, vec, payload in synthetic_points(n, TENANTS, dim))
    db = sqlite3.connect(path / "collection" / COLL / "storage.sqlite")
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS points (id TEXT PRIMARY KEY, point BLOB)")
        db.executemany("INSERT OR REPLACE INTO points VALUES (?, ?)", rows)
    db.close()
    client = QdrantClient(path=str(path))  # check that qdrant-client reads it back whole
    count = client.count(COLL, exact=True).count
    client.close()
    if count != n:
        raise RuntimeError(f"seeded {count} points into {path}, expected {n}")
    (path / "complete").write_text(str(n))
    print(f"seeded Qdrant local source of {n} points in {time.perf_counter() - t0:.1f}s")
    return path


# --- measurements --------------------------------------------------------------------------
def cfg_for(mid: str, src: dict, work: Path, by: str):
    from ray_migrate.config import parse_config

    units = {"by": "tenant", "field": "tenant"} if by == "tenant" else {"by": "id_range",
                                                                        "count": 8}
    return parse_config({
        "migration_id": mid, "source": src,
        "target": {"kind": "lancedb", "uri": str(work / "target"), "table": "docs"},
        "units": units, "copy": {"batch_size": BATCH, "workers": WORKERS},
        "lance": {"compact": False, "index_min_rows": 10**9}, "verify": {"enabled": False},
        "state_uri": str(work / "state")})


def run_ray(cfg, sample_rss: bool = False) -> dict:
    """run_migration; copy-phase window from the report and checkpoints; worker peak RSS."""
    import psutil

    from ray_migrate.driver import run_migration
    from ray_migrate.worker import NAMESPACE, worker_name

    out: dict = {}
    pids: dict[int, int] = {}
    peak: dict[int, int] = {}
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            for i, pid in list(pids.items()):
                try:
                    peak[i] = max(peak.get(i, 0), psutil.Process(pid).memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.05)

    def run() -> None:
        try:
            out["report"] = run_migration(cfg)
        except BaseException as err:  # noqa: BLE001 - shown by the caller
            out["error"] = err
        finally:
            done.set()

    threads = [threading.Thread(target=run)] + [threading.Thread(target=sampler)] * sample_rss
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    refs: dict[int, object] = {}
    while sample_rss and not done.is_set() and len(pids) < WORKERS:
        for i in range(WORKERS):
            if i not in refs:
                try:
                    refs[i] = ray.get_actor(worker_name(cfg.migration_id, i),
                                            namespace=NAMESPACE).ready.remote()
                except ValueError:
                    continue
            if i not in pids and ray.wait([refs[i]], timeout=0)[0]:
                try:
                    pids[i] = ray.get(refs[i])["pid"]
                except Exception:  # noqa: BLE001 - a restarting actor: ask again
                    refs.pop(i)
        time.sleep(0.01)
    for t in threads:
        t.join()
    total = time.perf_counter() - t0
    if "error" in out:
        raise out["error"]
    rep = out["report"]
    window, store = copy_window(cfg, rep)
    listing = _listing_s(store)  # a one-pass listing before the units start is copy time too
    return {"points": rep.total_copied_now, "copy_s": window + listing, "listing_s": listing,
            "total_s": total,
            "peak_mb": max(peak.values(), default=0) / 2**20, "pids": dict(pids)}


def _listing_s(store) -> float:
    """Seconds of the driver's one-pass listing of the source (its ``listing`` event in the
    run's report), 0 when the run made none."""
    doc = store.read("report/report.json") or {}
    return sum(e.get("seconds", 0.0) for e in doc.get("events", []) if e["kind"] == "listing")


def scan_only(path: Path) -> tuple[int, float]:
    from ray_migrate.backends import open_backend
    from ray_migrate.backends.qdrant_host import release_hosted_qdrant
    from ray_migrate.config import QdrantEndpoint
    from ray_migrate.units import UnitSpec

    src = open_backend(QdrantEndpoint(kind="qdrant", path=str(path), collection=COLL))
    src.count(UnitSpec("all", "all"))  # the actor has loaded the folder: not timed
    t0, n = time.perf_counter(), 0
    for batch, _ in src.scan(UnitSpec("all", "all"), BATCH):
        n += batch.num_rows
    secs = time.perf_counter() - t0
    release_hosted_qdrant(str(path))
    return n, secs


def naive(path: Path, work: Path) -> tuple[int, float]:
    """What one would write by hand: scroll pages, make an Arrow table, table.add."""
    import lancedb
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(path))
    tbl, n, offset = None, 0, None
    db = lancedb.connect(str(work / "naive"))
    t0 = time.perf_counter()
    while True:
        recs, offset = client.scroll(COLL, limit=BATCH, offset=offset, with_payload=True,
                                     with_vectors=True)
        vec = np.asarray([r.vector for r in recs], dtype=np.float32)
        t = pa.table({"id": pa.array([r.id for r in recs], pa.uint64()),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)),
                                                                  vec.shape[1]),
                      "tenant": [r.payload.get("tenant") for r in recs],
                      "payload": [json.dumps(r.payload, sort_keys=True) for r in recs]})
        tbl = db.create_table("docs", data=t) if tbl is None else tbl
        if n:
            tbl.add(t)
        n += len(recs)
        if offset is None:
            break
    secs = time.perf_counter() - t0
    client.close()
    return n, secs


def _write_part(src_uri: str, dst_uri: str, part: int, parts: int) -> tuple[int, float, float]:
    """Upsert every parts-th canonical batch of the source through LanceBackend (timed)."""
    from ray_migrate.backends.lancedb import LanceBackend
    from ray_migrate.config import LanceEndpoint
    from ray_migrate.units import UnitSpec

    src = LanceBackend(LanceEndpoint(kind="lancedb", uri=src_uri, table="src"))
    batches = [b for k, (b, _) in enumerate(src.scan(UnitSpec("all", "all"), BATCH))
               if k % parts == part]
    dst = LanceBackend(LanceEndpoint(kind="lancedb", uri=dst_uri, table="docs"))
    dst._layout()  # open the table before the clock starts
    t0 = time.perf_counter()
    for b in batches:
        dst.upsert(b)
    return sum(b.num_rows for b in batches), t0, time.perf_counter()


def write_only(src_uri: Path, dst_uri: Path, parts: int) -> tuple[int, float]:
    from ray_migrate.backends.lancedb import LanceBackend
    from ray_migrate.config import LanceEndpoint

    info = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(src_uri), table="src")).describe()
    LanceBackend(LanceEndpoint(kind="lancedb", uri=str(dst_uri), table="docs")).create(info)
    if parts == 1:
        n, t0, t1 = _write_part(str(src_uri), str(dst_uri), 0, 1)
        return n, t1 - t0
    with ProcessPoolExecutor(parts, mp_context=get_context("spawn")) as ex:
        res = list(ex.map(_write_part, [str(src_uri)] * parts, [str(dst_uri)] * parts,
                          range(parts), [parts] * parts))
    return sum(r[0] for r in res), max(r[2] for r in res) - min(r[1] for r in res)


# --- the table -----------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--big", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="5k/20k points: a smoke check")
    ap.add_argument("--write", action="store_true", help="replace the Copy section of "
                    "bench/results/copy_phase.md with this run")
    a = ap.parse_args()
    if a.quick:
        a.points, a.big = 5_000, 20_000
    from ray_migrate.driver import connect

    rows: list[tuple] = []

    def row(case: str, n: int | str, secs: float | None, val: str, ratio: str = "",
            target: str = "", result: str = "") -> None:
        rows.append((case, f"{n:,}" if isinstance(n, int) else n,
                     "" if secs is None else f"{secs:.2f}", val, ratio, target, result))
        print("  " + " | ".join(rows[-1]), flush=True)

    def check(case: str, r: float, op: str, goal: float) -> None:
        ok = r >= goal if op == ">=" else r <= goal
        row(case, "", None, "", f"{r:.2f}", f"{op} {goal}", "PASS" if ok else "FAIL")

    rate = lambda n, s: f"{n / s:,.0f}"  # noqa: E731
    src_path = qdrant_source(a.points, a.dim)
    connect()
    work = Path(tempfile.mkdtemp(prefix="rm-bench-"))
    stamp = dt.datetime.now().strftime("%H%M%S")
    try:
        print("Qdrant (local path) -> LanceDB", flush=True)
        n, s = scan_only(src_path)
        scan_rate = n / s
        row("Q→L scan-only (hosted proxy, 1 reader, no writes)", n, s, rate(n, s))
        n, s = naive(src_path, work)
        naive_rate = n / s
        row("Q→L naive loop (scroll → table.add, 1 process, no Ray)", n, s, rate(n, s))
        qsrc = {"kind": "qdrant", "path": str(src_path), "collection": COLL}
        r = run_ray(cfg_for(f"bench-q-{stamp}", qsrc, work / "q", "tenant"))
        rm_rate = r["points"] / r["copy_s"]
        row("Q→L ray_migrate copy phase (8 tenant units, 2 workers)", r["points"], r["copy_s"],
            rate(r["points"], r["copy_s"]))
        row("Q→L ray_migrate run_migration end to end (info)", r["points"], r["total_s"],
            rate(r["points"], r["total_s"]))
        check("Q→L ray_migrate / scan-only", rm_rate / scan_rate, ">=", 0.9)
        check("Q→L ray_migrate / naive", rm_rate / naive_rate, ">=", 1.1)

        print("LanceDB -> LanceDB", flush=True)
        small, big = work / "src-small", work / "src-big"
        lance_source(small, a.points, a.dim)
        lance_source(big, a.big, a.dim)
        n, s = write_only(small, work / "w1", 1)
        write_rate = n / s
        row("L→L write-only (LanceBackend.upsert, 1 process)", n, s, rate(n, s))
        n, s = write_only(small, work / "w2", 2)
        row("L→L write-only (LanceBackend.upsert, 2 processes, info)", n, s, rate(n, s))
        lsrc = {"kind": "lancedb", "uri": str(small), "table": "src"}
        r = run_ray(cfg_for(f"bench-l-{stamp}", lsrc, work / "l", "id_range"), sample_rss=True)
        row("L→L ray_migrate copy phase (8 id_range units, 2 workers)", r["points"], r["copy_s"],
            rate(r["points"], r["copy_s"]))
        row("L→L ray_migrate run_migration end to end (info)", r["points"], r["total_s"],
            rate(r["points"], r["total_s"]))
        check("L→L ray_migrate / write-only (1 process)",
              r["points"] / r["copy_s"] / write_rate, ">=", 0.8)
        small_mb = r["peak_mb"]
        row("Worker peak RSS, L→L copy (MB)", r["points"], None, f"{small_mb:,.0f} MB")
        bsrc = {"kind": "lancedb", "uri": str(big), "table": "src"}
        r = run_ray(cfg_for(f"bench-b-{stamp}", bsrc, work / "b", "id_range"), sample_rss=True)
        row("Worker peak RSS, L→L copy (MB)", r["points"], None, f"{r['peak_mb']:,.0f} MB")
        row("L→L ray_migrate copy phase, big (info)", r["points"], r["copy_s"],
            rate(r["points"], r["copy_s"]))
        check(f"Worker peak RSS {a.big:,} / {a.points:,}", r["peak_mb"] / small_mb, "<=", 1.2)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    head = ("Measurement", "Points", "Seconds", "Points/s", "Ratio", "Target", "Result")
    table = md_table(head, rows)
    cmd = "python bench/copy.py " + " ".join(sys.argv[1:])
    date = dt.date.today().isoformat()
    text = (f"## Copy\n\n`{cmd.strip()}` on {date}.\n\nMachine: {machine()}.\n\n{table}\n\n"
            "ray_migrate rows time the copy phase only (first unit start to last unit end, "
            "from the report and the units' final checkpoints); the end-to-end rows add Ray "
            "actor start, planning and the hosting actor's load of the Qdrant folder "
            "(finalize and verify are off). Ceilings: scan-only reads every point through the "
            "same hosted Qdrant proxy the workers use, without writing; write-only upserts the "
            "same canonical batches (batch size 1000) through LanceBackend.upsert.\n")
    publish("Copy", text, a.write, "copy_phase")
    return 0


if __name__ == "__main__":
    run_script(main)
