"""The application of the multi-process test: one process writing through ``RoutedCollection``.

    python tests/mp_workload.py --address ADDR --migration-id MID --initial initial.json \\
        --ops-log ops.jsonl [--seed 11] [--tenant-moves]

It connects as soon as the migration's router exists (retrying until then) and writes one point
per call: 40% updates of live ids, 20% inserts of new ids, 20% deletes of live ids, 20%
re-inserts of deleted ids (an insert while none is deleted), and a search filtered on the tenant
after every 25 writes. With ``--tenant-moves`` half the updates and every re-insert pick another
tenant than the point had. One seeded RNG: the same seed gives the same choices as long as the
same calls succeed.

Every operation goes to the ops log (JSON lines, flushed per line) twice: ``begin`` with what is
written (id, tenant, the vector as float32 bytes in hex, the payload) before the call, and
``end`` with the outcome (``ok``, or the error's class names and text) after it. An op with a
``begin`` and no ``end`` did not finish (the process died in it).

With ``--gateway URL`` it writes through the Qdrant-API gateway instead, with the real
qdrant-client over REST (tests/gateway_client.py), once the gateway answers.

When to stop comes on stdin: ``stop-after S`` makes it write S seconds more and exit 0; end of
stdin makes it stop at once (the test is gone). ``--max-s`` bounds the whole run.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import numpy as np

CONNECT_TIMEOUT_S = 180.0
SEARCH_EVERY = 25


class Log:
    """The ops log: one JSON document per line, flushed as soon as it is written."""

    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1)

    def write(self, **doc: Any) -> None:
        self.f.write(json.dumps(doc, separators=(",", ":")) + "\n")
        self.f.flush()


class Stop:
    """The deadline from stdin; ``None`` until the test says when."""

    def __init__(self, max_s: float):
        self.hard = time.monotonic() + max_s
        self.at: float | None = None
        self.reason = ""
        threading.Thread(target=self._read, daemon=True, name="stdin").start()

    def _read(self) -> None:
        for line in sys.stdin:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "stop-after":
                self.at, self.reason = time.monotonic() + float(parts[1]), line.strip()
                return
        self.at, self.reason = time.monotonic(), "stdin closed"

    def due(self) -> bool:
        now = time.monotonic()
        return now >= self.hard or (self.at is not None and now >= self.at)


def connect(address: str, migration_id: str, log: Log, storage_options: str | None = None
            ) -> Any:
    """``RoutedCollection.connect`` as soon as the router exists; how long that took is logged.
    ``storage_options``: a JSON file of LanceDB storage options (this client's credentials)."""
    import ray_migrate
    from ray_migrate import RoutedCollection
    from ray_migrate.errors import TerminalError

    creds = {"storage_options": json.loads(open(storage_options).read())} \
        if storage_options else {}
    t0 = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            coll = RoutedCollection.connect(migration_id, address=address, **creds)
            break
        except TerminalError as err:  # no router yet
            if time.monotonic() - t0 > CONNECT_TIMEOUT_S:
                raise SystemExit(f"no router for {migration_id} after "
                                 f"{CONNECT_TIMEOUT_S:.0f}s: {err}") from err
            time.sleep(0.1)  # polling for the router to exist
    log.write(kind="connected", after_s=round(time.monotonic() - t0, 3), tries=tries,
              ray_migrate=ray_migrate.__file__, t=time.time())
    return coll


class Workload:
    """The writer's own model of the collection, to choose ops (the test replays the log)."""

    # Cumulative shares of update, insert and delete (the rest re-inserts a deleted id), and
    # the share of updates that move their point, by mix.
    MIXES = {"even": ((0.4, 0.6, 0.8), 0.5), "updates": ((0.7, 0.8, 0.9), 1 / 7)}

    def __init__(self, initial: dict[str, Any], seed: int, tenant_moves: bool, dim: int,
                 mix: str = "even"):
        self.live: dict[int, str] = {int(k): v for k, v in initial["ids"].items()}
        self.deleted: dict[int, str] = {}
        self.tenants: list[str] = list(initial["tenants"])
        self.next_id = int(initial["first_new_id"])
        self.rng = np.random.default_rng(seed)
        self.moves = tenant_moves
        self.dim = dim
        self.shares, self.move_share = self.MIXES[mix]

    def _choose(self, pool: dict[int, str]) -> int:
        """A random id of ``pool``, the same for the same history (sorted: dict order is not)."""
        return int(sorted(pool)[int(self.rng.integers(len(pool)))])

    def _other_tenant(self, tenant: str) -> str:
        others = [t for t in self.tenants if t != tenant]
        return others[int(self.rng.integers(len(others)))]

    def next_op(self, i: int) -> dict[str, Any]:
        r = self.rng.random()
        up, ins, dele = self.shares
        kind = "update" if r < up else "insert" if r < ins else "delete" if r < dele \
            else "reinsert"
        if (kind in ("update", "delete") and not self.live) or \
                (kind == "reinsert" and not self.deleted):
            kind = "insert"
        if kind == "insert":
            pid, self.next_id = self.next_id, self.next_id + 1
            tenant = self.tenants[int(self.rng.integers(len(self.tenants)))]
            return self._upsert(i, kind, pid, tenant, None)
        if kind == "delete":
            pid = self._choose(self.live)
            return {"i": i, "kind": "delete", "why": kind, "id": pid, "tenant": self.live[pid]}
        pool = self.live if kind == "update" else self.deleted
        pid = self._choose(pool)
        tenant = pool[pid]
        if self.moves and (kind == "reinsert" or self.rng.random() < self.move_share):
            tenant = self._other_tenant(tenant)
        return self._upsert(i, kind, pid, tenant, pool[pid])

    def _upsert(self, i: int, why: str, pid: int, tenant: str, was: str | None
                ) -> dict[str, Any]:
        vec = self.rng.standard_normal(self.dim).astype(np.float32)
        return {"i": i, "kind": "upsert", "why": why, "id": pid, "tenant": tenant,
                "from_tenant": was, "vec": vec.tobytes().hex(),
                "payload": {"tenant": tenant, "title": f"{why} {pid} at op {i}", "rank": i}}

    def applied(self, op: dict[str, Any], outcome: dict[str, Any]) -> None:
        """Follow the op in the model: as done when acknowledged, and also when it failed (the
        id may hold either state then; a later acknowledged op makes it known again); not at
        all when it was refused as bad input (nothing was written)."""
        if _refused(outcome):
            return
        pid = op["id"]
        if op["kind"] == "upsert":
            self.deleted.pop(pid, None)
            self.live[pid] = op["tenant"]
        else:
            self.live.pop(pid, None)
            self.deleted[pid] = op["tenant"]

    def search_args(self) -> tuple[list[float], str]:
        tenant = self.tenants[int(self.rng.integers(len(self.tenants)))]
        return self.rng.standard_normal(self.dim).astype(np.float32).tolist(), tenant


def _error(err: BaseException) -> dict[str, Any]:
    return {"ok": False, "etypes": [c.__name__ for c in type(err).__mro__],
            "error": f"{type(err).__name__}: {err}"[:2000]}


def run(args: argparse.Namespace) -> int:
    log = Log(args.ops_log)
    with open(args.initial) as f:
        initial = json.load(f)
    stop = Stop(args.max_s)
    if args.gateway:
        from gateway_client import GatewayCollection

        t0 = time.monotonic()
        coll = GatewayCollection.when_up(args.gateway, args.gateway_key, CONNECT_TIMEOUT_S,
                                         args.gateway_grpc_port)
        log.write(kind="connected", after_s=round(time.monotonic() - t0, 3), tries=1,
                  gateway=args.gateway, t=time.time())
    else:
        coll = connect(args.address, args.migration_id, log, args.storage_options)
    work = Workload(initial, args.seed, args.tenant_moves, args.dim, args.mix)
    period = 1.0 / args.max_rate if args.max_rate > 0 else 0.0
    i, next_at = 0, time.monotonic()
    while not stop.due():
        op = work.next_op(i)
        log.write(phase="begin", t=time.time(), **op)
        t0 = time.perf_counter()
        try:
            if op["kind"] == "upsert":
                vec = np.frombuffer(bytes.fromhex(op["vec"]), np.float32)
                coll.upsert([{"id": op["id"], "vector": vec.tolist(), "payload": op["payload"]}])
            else:
                coll.delete([op["id"]])
            outcome: dict[str, Any] = {"ok": True}
        except Exception as err:  # noqa: BLE001 - a client error is the finding
            outcome = _error(err)
        log.write(phase="end", i=i, ms=round((time.perf_counter() - t0) * 1000, 2), **outcome)
        work.applied(op, outcome)
        i += 1
        if i % SEARCH_EVERY == 0:
            search(coll, work, log, i)
        if period:
            next_at = max(next_at + period, time.monotonic() - 1.0)
            time.sleep(max(0.0, next_at - time.monotonic()))  # a rate cap, not a wait for
    odds = getattr(coll, "_odds", None)  # a RoutedCollection's updates in place (P2b)
    log.write(kind="stopped", ops=i, reason=stop.reason or "max-s", t=time.time(),
              in_place=dict(odds.counts) if odds is not None else None)
    coll.close()
    return 0


def _refused(outcome: dict[str, Any]) -> bool:
    """A write refused as bad input (a tenant move, if the product refuses those): nothing was
    written, so the model keeps what it had."""
    return not outcome["ok"] and "InvalidDataError" in outcome["etypes"]


def search(coll: Any, work: Workload, log: Log, i: int) -> None:
    """A filtered search; its hits are logged so the test can check each against the truth."""
    vec, tenant = work.search_args()
    log.write(phase="begin", kind="search", i=f"s{i}", tenant=tenant, t=time.time())
    t0 = time.perf_counter()
    try:
        hits = coll.search(vec, k=10, filter={"tenant": tenant})
        outcome: dict[str, Any] = {
            "ok": True, "hits": [[h["id"], (h["payload"] or {}).get("tenant")] for h in hits]}
    except Exception as err:  # noqa: BLE001
        outcome = _error(err)
    log.write(phase="end", i=f"s{i}", ms=round((time.perf_counter() - t0) * 1000, 2), **outcome)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", required=True)
    ap.add_argument("--migration-id", required=True)
    ap.add_argument("--initial", required=True,
                    help='JSON: {"ids": {id: tenant}, "tenants": [...], "first_new_id": N}')
    ap.add_argument("--ops-log", required=True)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--tenant-moves", action="store_true")
    ap.add_argument("--mix", choices=sorted(Workload.MIXES), default="even",
                    help="the ops' shares: even, or mostly updates in their tenant")
    ap.add_argument("--max-rate", type=float, default=0.0, help="ops/s at most; 0: no cap")
    ap.add_argument("--max-s", type=float, default=600.0)
    ap.add_argument("--storage-options", default=None,
                    help="a JSON file of LanceDB storage_options for RoutedCollection.connect")
    ap.add_argument("--gateway", default=None, help="write through the gateway at this URL")
    ap.add_argument("--gateway-key", default=None, help="the gateway's api key")
    ap.add_argument("--gateway-grpc-port", type=int, default=None,
                    help="also the gateway's gRPC port: REST and gRPC calls in turn")
    return ap.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
