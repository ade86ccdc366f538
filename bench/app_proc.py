"""The application of bench/app_latency.py: a process of its own writing and searching.

    python bench/app_proc.py --mode own|split|routed --workdir DIR [--uri URI --table T]
                             [--address ADDR --migration-id MID] [--points N] ...

``own``: the application's own LanceDB client (what it had before it adopted
``RoutedCollection``): ``merge_insert`` by id and exact searches filtered on the tenant.
``split``: the same own client on two tables (``--uri`` and ``--uri2``, copies of one
source), each upsert split by tenant (even tenants to the first, odd to the second) and written
to both at once from two threads: the floor of any write that must commit to two owners, with
no router and no migration.
``routed``: the same workload through ``RoutedCollection.connect`` (retried until the router
exists). Every ``1 / (rate / batch)`` s an upsert of ``batch`` ids drawn from the seeded ids
(updates: the table keeps its size), and from a second thread ``reads`` searches per second.
One JSON line per call in ``DIR/calls.jsonl``: wall start, op, ms, and for a routed write the
ms in its router calls (lease begin and end) and in each owner's engine call. Stops when the
file ``DIR/stop`` appears (or after ``--max-s``).
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # last on sys.path: bench/copy.py != copy
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 64
TENANTS = 8
CONNECT_TIMEOUT_S = 180.0


class Calls:
    """The calls log: one JSON line per call, flushed (the driver reads it after the stop)."""

    def __init__(self, path: Path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def add(self, **doc: Any) -> None:
        with self.lock:
            self.f.write(json.dumps(doc, separators=(",", ":")) + "\n")


class Split:
    """Per write, the ms spent in lease calls to the router ("frozen": the begin calls that
    met a freeze, waiting in the router) and in each owner's engine call, also from the
    client's pool threads (one writer thread: the write under way is the only one): the
    client's methods wrapped in place (measurement only; the product is unchanged)."""

    def __init__(self, coll: Any):
        self.acc: dict[str, float] | None = None
        self.lock = threading.Lock()
        call = coll.router.call

        def router_call(name: str, *args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = None
            try:
                out = call(name, *args, **kw)
                return out
            finally:
                if name == "begin_writes" and out and any(
                        le["status"] != "ok" for le in out):
                    self.add("frozen", t0)
                elif name in ("begin_writes", "end_writes"):
                    self.add("router", t0)
        coll.router.call = router_call
        for side in ("source", "target"):
            backend = coll.backends[side]  # opened now, to be timed
            for name in ("upsert", "update_in_place", "delete_many"):
                setattr(backend, name, self.timed(side, getattr(backend, name)))
            # where each id lives (tenant moves), while units capture
            backend.fetch_values = self.timed("lookup", backend.fetch_values)

    def timed(self, key: str, fn: Any) -> Any:
        def run(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.add(key, t0)
        return run

    def add(self, key: str, t0: float) -> None:
        with self.lock:
            acc = self.acc
            if acc is not None:
                acc[key] = acc.get(key, 0.0) + (time.perf_counter() - t0) * 1000

    def start(self) -> dict[str, float]:
        with self.lock:
            self.acc = {}
            return self.acc


def rows(ids: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    vec = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    return {"ids": ids, "vec": vec}


def own_client(a: argparse.Namespace) -> tuple[Any, Any]:
    """The application's own LanceDB calls: upsert by id and a tenant-filtered search."""
    import datetime as dt

    import lancedb
    import pyarrow as pa

    tbl = lancedb.connect(a.uri, read_consistency_interval=dt.timedelta(0)).open_table(a.table)

    def upsert(r: dict[str, Any]) -> None:
        ids = r["ids"]
        data = pa.table({
            "id": pa.array(ids, pa.uint64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(r["vec"].reshape(-1)), DIM),
            "tenant": pa.array([f"t{x % TENANTS}" for x in ids]),
            "title": pa.array([f"doc {x} ✓" for x in ids]),
            "rank": pa.array(ids * 7919 % 1000, pa.int64()),
            "tags": pa.array([None] * len(ids), pa.list_(pa.string()))})
        tbl.merge_insert("id").when_matched_update_all().when_not_matched_insert_all() \
            .execute(data)

    def search(q: np.ndarray, tenant: str) -> None:
        tbl.search(q).where(f"tenant = '{tenant}'", prefilter=True).limit(10) \
            .bypass_vector_index().to_arrow()
    return upsert, search


def split_client(a: argparse.Namespace) -> tuple[Any, Any]:
    """Two own clients, one per table; an upsert writes both halves at once."""
    from concurrent.futures import ThreadPoolExecutor

    first = own_client(a)
    second = own_client(argparse.Namespace(**{**vars(a), "uri": a.uri2}))
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="split")

    def upsert(r: dict[str, Any]) -> None:
        odd = (r["ids"] % TENANTS) % 2 == 1
        halves = [(up, {"ids": r["ids"][m], "vec": r["vec"][m]})
                  for up, m in ((first[0], ~odd), (second[0], odd))]
        for f in [pool.submit(up, half) for up, half in halves if len(half["ids"])]:
            f.result()

    def search(q: np.ndarray, tenant: str) -> None:
        (second if int(tenant[1:]) % 2 else first)[1](q, tenant)
    return upsert, search


def routed_client(a: argparse.Namespace, calls: Calls) -> tuple[Any, Any, Any, Split]:
    from ray_migrate import RoutedCollection
    from ray_migrate.errors import TerminalError

    t0 = time.monotonic()
    while True:
        try:
            coll = RoutedCollection.connect(a.migration_id, address=a.address)
            break
        except TerminalError:  # no router yet
            if time.monotonic() - t0 > CONNECT_TIMEOUT_S:
                raise
            time.sleep(0.1)  # polling for the router to exist
    calls.add(op="connected", t=time.time())
    split = Split(coll)

    def upsert(r: dict[str, Any]) -> None:
        coll.upsert([{"id": int(x), "vector": v.tolist(), "payload": {
            "tenant": f"t{x % TENANTS}", "title": f"doc {x} ✓", "rank": int(x * 7919 % 1000),
            }} for x, v in zip(r["ids"], r["vec"], strict=True)])

    def search(q: np.ndarray, tenant: str) -> None:
        coll.search(q.tolist(), k=10, filter={"tenant": tenant})
    return upsert, search, coll, split


def loop(every_s: float, stop: threading.Event, step: Any) -> None:
    """Call ``step`` on a fixed schedule (open loop: a slow call delays the next one, and a
    schedule more than 1 s behind starts again from now rather than bursting)."""
    next_at = time.monotonic()
    while not stop.is_set():
        step()
        next_at = max(next_at + every_s, time.monotonic() - 1.0)
        stop.wait(max(0.0, next_at - time.monotonic()))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("own", "split", "routed"), required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--uri")
    ap.add_argument("--uri2", help="split: the second table's folder")
    ap.add_argument("--table", default="src")
    ap.add_argument("--address")
    ap.add_argument("--migration-id")
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=500.0, help="points written per second")
    ap.add_argument("--batch", type=int, default=100, help="points per upsert")
    ap.add_argument("--reads", type=float, default=2.0, help="searches per second")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--by-tenant", action="store_true",
                    help="each upsert's ids from one tenant, the tenants in turn (default: "
                         "from every tenant)")
    ap.add_argument("--max-s", type=float, default=900.0)
    a = ap.parse_args()
    work = Path(a.workdir)
    calls = Calls(work / "calls.jsonl")
    coll = split = None
    if a.mode == "own":
        upsert, search = own_client(a)
    elif a.mode == "split":
        upsert, search = split_client(a)
    else:
        upsert, search, coll, split = routed_client(a, calls)
    stop = threading.Event()
    wrng, rrng = np.random.default_rng(a.seed), np.random.default_rng(a.seed + 1)

    turn = itertools.count()

    def pick() -> np.ndarray:
        if not a.by_tenant:
            return wrng.choice(a.points, a.batch, replace=False)
        t = next(turn) % TENANTS  # ids x with x % TENANTS == t are tenant t's
        return wrng.choice(np.arange(t, a.points, TENANTS), a.batch, replace=False)

    def write() -> None:
        r = rows(pick(), wrng)
        acc = split.start() if split else {}
        t, t0 = time.time(), time.perf_counter()
        err = None
        try:
            upsert(r)
        except Exception as e:  # noqa: BLE001 - a client error is a finding
            err = f"{type(e).__name__}: {e}"[:300]
        calls.add(op="w", t=t, ms=(time.perf_counter() - t0) * 1000, err=err, **acc)

    def read() -> None:
        q = rrng.standard_normal(DIM).astype(np.float32)
        tenant = f"t{int(rrng.integers(TENANTS))}"
        t, t0 = time.time(), time.perf_counter()
        err = None
        try:
            search(q, tenant)
        except Exception as e:  # noqa: BLE001
            err = f"{type(e).__name__}: {e}"[:300]
        calls.add(op="s", t=t, ms=(time.perf_counter() - t0) * 1000, err=err)

    threads = [threading.Thread(target=loop, args=(a.batch / a.rate, stop, write), daemon=True)]
    if a.reads > 0:
        threads.append(threading.Thread(target=loop, args=(1 / a.reads, stop, read),
                                        daemon=True))
    for th in threads:
        th.start()
    end = time.monotonic() + a.max_s
    while not (work / "stop").exists() and time.monotonic() < end:
        time.sleep(0.05)  # polling for the driver's stop file
    stop.set()
    for th in threads:
        th.join(timeout=30)
    if coll is not None:
        coll.close()
    calls.add(op="stopped", t=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main())
