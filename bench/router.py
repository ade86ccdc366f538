"""The router's saturation rate: client write calls per second, 1 to 16 client processes.

    python bench/router.py [--clients 1,2,4,8,16] [--seconds 8] [--quick] [--write]

A write is what ``RoutedCollection`` asks the router for each engine write: ``begin_writes``
for one unit, then ``end_writes`` of its lease (handing in the rows it wrote while the unit
captures), each through ``RouterHandle.call``. Each client is a Ray actor (its own process, at
the application's CPU priority, as ``RoutedCollection`` would be) that makes writes one after
another for ``--seconds``; all start at the same moment. Cases, on one local Ray cluster:

- ``noop``: the baseline, an async actor with the router's options and methods that answer at
  once: what Ray's actor calls alone sustain on this machine;
- ``source``: the router, units not moving (a lease, no log);
- ``catching_up``: the router, units capturing (each write logs its 100 ids and hands in its
  rows, Arrow IPC bytes as ``RoutedCollection`` makes them), with a follower taking and acking
  the logs every 50 ms as a worker does;
- ``catching_up_table``: the same with the rows handed in as a ``pyarrow.Table``, as clients
  did before ``routing.client_rows.encode_rows`` (Ray pickles a table column by column).

Reports writes/s (sum over clients), the ratio to ``noop`` at the same client count, p50/p99 of
one router call, the client count past which more clients add less than 10%, and whether the
router logged Ray's "blocking ray.get inside async actor" warning. Exits 0 whatever the
numbers are: it is a measurement.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

# bench/ holds copy.py: keep it off the front of sys.path so `import copy` finds the stdlib.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]  # last

import argparse
import glob
import shutil
import tempfile
import threading
import time
from typing import Any

import numpy as np
import ray
from _common import md_table, run_script, upsert_rows
from _scale import footer, pct, write_result

UNITS = [f"u{i}" for i in range(8)]
IDS_PER_WRITE, DIM = 100, 64
NOOP_NAME = "rm:bench-noop:router"
BLOCKING = "blocking ray.get inside async actor"


class NoopRouter:
    """The baseline: the router's call shapes, no work."""

    def __init__(self) -> None:
        self.token = 0

    async def begin_writes(self, requests: list[Any], whole: bool = False) -> list[dict]:
        self.token += 1
        return [{"status": "ok", "token": self.token, "owner": "source", "epoch": 1,
                 "phase": "source"} for _ in requests]

    async def end_writes(self, tokens: list[int], carried: Any = None) -> list[dict]:
        return [{"valid": True, "epoch": 1, "owner": "source"} for _ in tokens]

    async def describe(self) -> dict[str, Any]:
        return {"pid": os.getpid()}


@ray.remote(num_cpus=0)
class Client:
    """One application process: writes one after another, as ``RoutedCollection`` does."""

    def __init__(self, index: int) -> None:
        from ray_migrate.priority import process_at_normal_priority

        process_at_normal_priority()  # an application process, not a niced Ray worker
        self.index = index
        self.rows = upsert_rows(list(range(IDS_PER_WRITE)), np.random.default_rng(index), DIM)

    def ready(self) -> int:
        return os.getpid()

    def wire(self, table: bool) -> Any:
        """The rows as ``RoutedCollection`` hands them in (``client_rows.encode_rows``), or,
        with ``table``, as a ``pyarrow.Table`` (clients before that encoding)."""
        try:
            from ray_migrate.routing.client_rows import encode_rows
        except ImportError:  # a commit before the encoding
            return self.rows
        return self.rows if table else encode_rows(self.rows)

    def run(self, name: str, start_at: float, seconds: float, table: bool = False
            ) -> dict[str, Any]:
        from ray_migrate.routing.handle import RouterHandle
        from ray_migrate.routing.records import CAPTURING

        router = RouterHandle(ray.get_actor(name, namespace="ray_migrate"))
        rng = np.random.default_rng(self.index)
        base = self.index << 32
        begins: list[float] = []
        ends: list[float] = []
        while time.time() < start_at:
            time.sleep(0.001)
        stop, n = start_at + seconds, 0
        while time.time() < stop:
            ids = list(range(base + n * IDS_PER_WRITE, base + (n + 1) * IDS_PER_WRITE))
            unit = UNITS[int(rng.integers(len(UNITS)))]
            t0 = time.perf_counter()
            lease = router.call("begin_writes", [(unit, ids, None)], False)[0]
            t1 = time.perf_counter()
            carried = ({lease["token"]: (("upsert", self.wire(table)), self.rows.nbytes)}
                       if lease["phase"] in CAPTURING else {})
            router.call("end_writes", [lease["token"]], carried)
            begins.append((t1 - t0) * 1000)
            ends.append((time.perf_counter() - t1) * 1000)
            n += 1
        return {"writes": n, "begin_ms": begins, "end_ms": ends}


def follower(router: Any, stop: threading.Event) -> None:
    """Take and ack every unit's log every 50 ms, as a worker's follower does."""
    while not stop.wait(0.05):
        taken = router.call("take_many", UNITS, 10_000, "bench", owner="source")
        router.call("ack_many", {u: seq for u, (_ids, seq, _rows) in taken.items()}, "bench")


def measure(clients: list[Any], name: str, seconds: float, table: bool = False
            ) -> dict[str, Any]:
    start_at = time.time() + 0.5
    outs = ray.get([c.run.remote(name, start_at, seconds, table) for c in clients])
    calls = [x for o in outs for x in o["begin_ms"] + o["end_ms"]]
    writes = sum(o["writes"] for o in outs)
    return {"rate": writes / seconds, "p50": pct(calls, 50), "p99": pct(calls, 99),
            "writes": writes}


def start_router(tmp: str) -> Any:
    from ray_migrate.routing.actor import start_router as start

    router = start("bench", os.path.join(tmp, "state"), UNITS, {"config": {}, "plan": {}})
    return router


def saturation(counts: list[int], rates: list[float]) -> tuple[int, float]:
    """(the fewest clients that reach 90% of the highest rate, the highest rate): one
    number per case that a noisy step between two counts does not move much."""
    top = max(rates)
    return next(k for k, r in zip(counts, rates, strict=True) if r >= 0.9 * top), top


def router_warned(session_dir: str, pid: int) -> bool:
    """Whether the router's process logged Ray's blocking-get warning."""
    for path in glob.glob(os.path.join(session_dir, "logs", f"*{pid}*")):
        with open(path, errors="replace") as f:
            if BLOCKING in f.read():
                return True
    return False


def run_cases(counts: list[int], seconds: float, tmp: str, cases: list[str]) -> dict[str, Any]:
    clients = [Client.remote(i) for i in range(max(counts))]
    ray.get([c.ready.remote() for c in clients])
    noop = ray.remote(NoopRouter).options(name=NOOP_NAME, namespace="ray_migrate",
                                          num_cpus=0, max_concurrency=1000).remote()
    router = start_router(tmp)
    pid = router.call("describe")["pid"]
    print(f"router pid {pid}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    for case in results:
        if case.startswith("catching_up") and router.call("unit", UNITS[0])["phase"] == "source":
            for phase in ("capturing", "copying", "catching_up"):
                router.call("set_phases", UNITS, phase)
        stop = threading.Event()
        follow = threading.Thread(target=follower, args=(router, stop), daemon=True)
        if case.startswith("catching_up"):
            follow.start()
        name = NOOP_NAME if case == "noop" else "rm:bench:router"
        for k in counts:
            table = case == "catching_up_table"
            measure(clients[:k], name, min(1.0, seconds), table)  # warm-up
            results[case].append(measure(clients[:k], name, seconds, table))
            r = results[case][-1]
            print(f"{case:12s} {k:2d} clients: {r['rate']:8.0f} writes/s  "
                  f"p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms", flush=True)
        stop.set()
        if follow.is_alive():
            follow.join()
    ray.kill(noop)  # held until here: an actor whose handles are gone is ended
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    return {"results": results, "warned": router_warned(session, pid)}


def summarize(counts: list[int], res: dict[str, list[dict[str, Any]]]
              ) -> list[tuple[str, str, str, str]]:
    """The headline rows: saturation per case, and ratios of the saturated rates."""
    sat = {case: saturation(counts, [r["rate"] for r in res[case]]) for case in res}
    rows = [(f"writes/s at saturation ({case})", f"{rate:,.0f}, 90% of it at {k} clients",
             "measured", "yes") for case, (k, rate) in sat.items()]
    if "catching_up" not in res:
        return rows
    top = sat["catching_up"][1]
    for base, what, goal in (("noop", "router (catching_up) / no-op actor", 0.5),
                             ("catching_up_table", "rows as IPC bytes / rows as a table", 1.0)):
        if base in res:
            ratio = top / sat[base][1]
            rows.append((f"{what}, at saturation", f"{ratio:.2f}", f">= {goal:g}",
                         "yes" if ratio >= goal else "no"))
    return rows


def report(counts: list[int], seconds: float, out: dict[str, Any]) -> str:
    res = out["results"]
    rows = []
    for i, k in enumerate(counts):
        base = res["noop"][i]["rate"] if "noop" in res else float("nan")
        for case in res:
            r = res[case][i]
            rows.append((case, str(k), f"{r['rate']:,.0f}", f"{r['rate'] / base:.2f}",
                         f"{r['p50']:.2f}", f"{r['p99']:.2f}", str(r["writes"])))
    summary = [*summarize(counts, res), (
        "router logged \"blocking ray.get inside async actor\"", "yes" if out["warned"]
        else "no", "no", "no" if out["warned"] else "yes")]
    return "\n".join([
        "## Router: client write calls at saturation", "",
        md_table(("metric", "value", "target", "pass"), summary), "",
        md_table(("case", "clients", "writes/s", "ratio to noop", "call p50 ms",
                  "call p99 ms", "writes"), rows), "",
        f"A write = `begin_writes` + `end_writes` of one lease ({IDS_PER_WRITE} ids; rows of "
        f"{DIM}-d vectors handed in while capturing), through `RouterHandle.call`. Clients "
        f"are Ray actors (own processes) writing back to back for {seconds:g} s each, all on "
        "one local Ray cluster on this machine: clients and router share its cores, so the "
        "rate at saturation is a floor for a router with cores of its own.", "",
        *footer()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,2,4,8,16")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--cases", default="noop,source,catching_up,catching_up_table",
                    help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="1,2 clients, 1 s each")
    ap.add_argument("--write", action="store_true", help="write bench/results/router.md")
    args = ap.parse_args()
    counts = [1, 2] if args.quick else [int(x) for x in args.clients.split(",")]
    seconds = 1.0 if args.quick else args.seconds
    tmp = tempfile.mkdtemp(prefix="rmbench-router-", dir="/tmp")
    try:
        ray.init(num_cpus=2, include_dashboard=False, namespace="ray_migrate",
                 _temp_dir=os.path.join(tmp, "ray"), log_to_driver=False,
                 configure_logging=False)
        out = run_cases(counts, seconds, tmp, args.cases.split(","))
        write_result("router", report(counts, seconds, out), args.write)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_script(main)
