"""An application that only searches one tenant, as its own process: steady client traffic on
the canary for the SLO gate test (tests/observe/test_slo_gates.py), whose writer spreads its
few calls over every tenant. Runs until ``--max-s`` or until the test stops it; each failed
search is a line in ``--log`` (the log is written from several threads, a line at a time) (the test counts none)."""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
from mp_workload import Log, connect


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", required=True)
    ap.add_argument("--migration-id", required=True)
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--rate", type=float, default=5.0, help="searches/s per thread at most")
    ap.add_argument("--threads", type=int, default=3)
    ap.add_argument("--max-s", type=float, default=300.0)
    ap.add_argument("--ready", help="a file made once a first search has answered")
    args = ap.parse_args(argv)
    log = Log(args.log)
    coll = connect(args.address, args.migration_id, log)
    end = time.monotonic() + args.max_s

    def search_until_end(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                coll.search(rng.standard_normal(args.dim).tolist(), k=10,
                            filter={"tenant": args.tenant})
                if args.ready and not os.path.exists(args.ready):
                    Path(args.ready).touch()
            except Exception as err:  # noqa: BLE001 - the test counts them
                log.write(kind="error", error=f"{type(err).__name__}: {err}", t=time.time())
            time.sleep(max(0.0, 1 / args.rate - (time.monotonic() - t0)))  # a rate cap

    # Threads: a slowed search holds one, and the others keep requests coming.
    threads = [threading.Thread(target=search_until_end, args=(i,), daemon=True)
               for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    coll.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
