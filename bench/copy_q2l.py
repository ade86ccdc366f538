"""Qdrant (local folder) -> LanceDB copy against the source's scan-only rate, in one run.

    python bench/copy_q2l.py [--points 100000] [--dim 64] [--quick] [--write]

The Q->L rows of bench/copy.py (its functions, the same cached source and config): scan-only
through the hosted proxy, the naive loop, and ray_migrate's copy phase (8 tenant units, 2
workers). Target (issue 15): copy phase >= 0.9x scan-only. ``--write`` puts the table into
bench/results/copy_q2l.md. Exits 0 whatever the numbers are: it is a measurement.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]  # last

import argparse
import datetime as dt
import importlib.util
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import ray  # noqa: F401 - imported first: ray puts its bundled psutil on sys.path
from _common import machine, md_table, run_script

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "copy_q2l.md"


def _bench_copy():
    """bench/copy.py as a module (its name would shadow the stdlib's ``copy``)."""
    spec = importlib.util.spec_from_file_location("bench_copy", Path(_HERE) / "copy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "ray_migrate"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return out.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="5k points: a smoke check")
    ap.add_argument("--write", action="store_true", help=f"write the table to {RESULT}")
    a = ap.parse_args()
    if a.quick:
        a.points = 5_000
    bc = _bench_copy()
    from ray_migrate.driver import connect

    rows: list[tuple[str, ...]] = []

    def row(metric: str, n: int, secs: float, rate: float, ratio: str = "",
            target: str = "", result: str = "") -> None:
        rows.append((metric, f"{n:,}", f"{secs:.2f}", f"{rate:,.0f}", ratio, target, result))
        print("  " + " | ".join(rows[-1]), flush=True)

    src_path = bc.qdrant_source(a.points, a.dim)
    connect()
    work = Path(tempfile.mkdtemp(prefix="rm-bench-q2l-"))
    stamp = dt.datetime.now().strftime("%H%M%S")
    try:
        n, s = bc.scan_only(src_path)
        scan_rate = n / s
        row("Q→L scan-only (hosted proxy, 1 reader, no writes)", n, s, scan_rate)
        n, s = bc.naive(src_path, work)
        naive_rate = n / s
        row("Q→L naive loop (scroll → table.add, 1 process, no Ray)", n, s, naive_rate)
        qsrc = {"kind": "qdrant", "path": str(src_path), "collection": bc.COLL}
        r = bc.run_ray(bc.cfg_for(f"bench-q2l-{stamp}", qsrc, work / "q", "tenant"))
        rm_rate = r["points"] / r["copy_s"]
        ratio = rm_rate / scan_rate
        row("Q→L ray_migrate copy phase (8 tenant units, 2 workers)", r["points"], r["copy_s"],
            rm_rate, f"{ratio:.2f}× scan-only", ">= 0.9×", "PASS" if ratio >= 0.9 else "FAIL")
        row("Q→L ray_migrate / naive loop (info)", r["points"], r["copy_s"], rm_rate,
            f"{rm_rate / naive_rate:.2f}× naive")
        row("Q→L run_migration end to end (info)", r["points"], r["total_s"],
            r["points"] / r["total_s"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = ("Metric", "Points", "Seconds", "Points/s", "Value", "Target", "Pass")
    cmd = "python bench/copy_q2l.py " + " ".join(sys.argv[1:])
    text = (f"## Copy: Qdrant local -> LanceDB\n\n`{cmd.strip()}` on "
            f"{time.strftime('%Y-%m-%d %H:%M')}, commit {_commit()}, {a.points:,} points x "
            f"{a.dim} dims, batch {bc.BATCH}.\n\nMachine: {machine()}.\n\n"
            f"{md_table(head, rows)}\n\n"
            "Scan-only reads every point once through the same hosted Qdrant proxy the workers "
            "use, without writing. The copy phase runs from the first unit's start to the last "
            "unit's end (the report and the units' final checkpoints), plus the driver's one-pass "
            f"listing of every unit's ids before them ({r['listing_s']:.2f} s here); the "
            "end-to-end row adds "
            "Ray actor start, planning, the capture start and the hosting actor's load of the "
            "folder (finalize and verify are off).\n")
    print("\n" + text)
    if a.write:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(text)
        print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    run_script(main)
