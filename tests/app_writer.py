"""An application in a process of its own, as users run one: it joins the Ray cluster at
``--address``, connects to a running migration with ``RoutedCollection.connect`` and writes
one point per call (40% updates, 20% inserts, 20% deletes, 20% re-inserts of deleted ids, a
filtered search every 25 operations and a retrieve every 10) until the file ``stop`` appears
in ``--workdir``. Then it closes the collection and writes ``result.json`` there: every
acknowledged operation's outcome per id, the client errors, and how many operations it made
after the file ``run_ended`` appeared. ``--crash`` instead kills itself after ``connected``
and one read, without a goodbye.

Not a test module: tests start it with ``python tests/app_writer.py ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import numpy as np

TENANTS = ["t0", "t1", "t2", "t3"]  # as test_live.seed: point i is in TENANTS[i % 4]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--migration", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seeded", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--watch-s", type=float, default=None)
    ap.add_argument("--crash", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir)

    import ray

    ray.init(address=args.address, namespace="ray_migrate", log_to_driver=False,
             configure_logging=False)
    if args.watch_s is not None:
        import ray_migrate.routing.watch as watch

        watch.WATCH_S = args.watch_s
    from ray_migrate import RoutedCollection

    coll = RoutedCollection.connect(args.migration)
    (work / "connected").write_text(str(os.getpid()))
    if args.crash:
        coll.retrieve([0, 1])
        (work / "read").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    result = write_until_stopped(coll, work, args.seeded, args.dim)
    began = time.monotonic()
    coll.close()
    result["close_s"] = time.monotonic() - began  # the goodbye waits for the releases
    (work / "result.json").write_text(json.dumps(result))


AFTER_RUN_OPS = 25  # operations after the run before the file ``after_run_done`` appears


def write_until_stopped(coll, work: Path, seeded: int, dim: int) -> dict:
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    live, dead = set(range(seeded)), []
    next_id = seeded + 10_000
    outcome: dict[int, list | None] = {}  # id -> [vector, payload] or None (deleted)
    errors: list[str] = []
    ops = after = 0
    while not (work / "stop").exists():
        ended = (work / "run_ended").exists()
        try:
            next_id = one(coll, rng, live, dead, outcome, next_id, ops, dim)
            if ops % 25 == 0:
                q = rng.standard_normal(dim).astype(np.float32).tolist()
                coll.search(q, k=5, filter={"tenant": TENANTS[ops % 4]})
            if ops % 10 == 0 and live:
                coll.retrieve([int(rng.choice(sorted(live)))])
        except Exception as err:  # noqa: BLE001 - every client error counts
            errors.append(f"{type(err).__name__}: {err}"[:300])
        ops += 1
        after += ended
        if after == AFTER_RUN_OPS:  # the test waits for this, not for a time
            (work / "after_run_done").touch()
        time.sleep(0.002)
    return {"ops": ops, "after_run": after, "errors": errors,
            "outcome": {str(k): v for k, v in outcome.items()}}


def one(coll, rng, live: set, dead: list, outcome: dict, next_id: int, ops: int,
        dim: int) -> int:
    r = rng.random()
    if r < 0.2 and live:
        pid = int(rng.choice(sorted(live)))
        coll.delete([pid])
        live.discard(pid)
        dead.append(pid)
        outcome[pid] = None
        return next_id
    if r < 0.4 and dead:
        pid = dead.pop(int(rng.integers(len(dead))))
    elif r < 0.6 or not live:
        pid, next_id = next_id, next_id + 1
    else:
        pid = int(rng.choice(sorted(live)))
    vec = rng.standard_normal(dim).astype(np.float32)
    payload = {"tenant": TENANTS[pid % 4], "v": ops}
    coll.upsert([{"id": pid, "vector": vec.tolist(), "payload": payload}])
    live.add(pid)
    outcome[pid] = [vec.tolist(), payload]
    return next_id


if __name__ == "__main__":
    main()
