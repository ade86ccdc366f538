"""Verify's rate against scanning both sides once, LanceDB to LanceDB.

    python bench/verify.py [--points 3000000] [--dim 128] [--units 8] [--rounds 3] [--quick]
        [--write] [--profile]

One run, same data: a LanceDB source (bench/_common.lance_source) and a target copied from it
with the product's backends (scan, append: what the run's copy writes), split into id_range
units by the product's plan. Then, per unit and summed over the units:
(a) scan both sides once in their own columns (Lance's scan, no conversion, no hashing): the
    baseline, since the verify of a LanceDB to LanceDB copy hashes the target's columns;
(a2) the same scans as canonical batches (the backends' ``scan``), for information;
(b) the product's verify of every unit, as the run does it (``UnitWorker.verify``);
(c) the previous per-row blake2b digest of both sides' scans, for information.
(a) and (b) alternate for ``--rounds`` rounds (the machine's drift hits both alike); the
figure is (b)'s rate over (a)'s in the median round (target >= 0.5), every round printed.
Exits 0 whatever the numbers are.
"""

# ruff: noqa: E402 - _common is imported from this folder
from __future__ import annotations

import os
import sys

# bench/copy.py would shadow the stdlib's copy: keep this folder last on sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import datetime as dt
import hashlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import ray  # noqa: F401 - imported first: ray puts its bundled psutil on sys.path
from _common import ROOT, lance_source, machine, md_table, publish, run_script

from ray_migrate.backends.base import Backend
from ray_migrate.units import UnitSpec

BATCH = 10_000
TARGET = 0.5


def old_digest(tables: Any) -> int:
    """The per-row blake2b digest ray_migrate used before (ids, vectors, payload JSON)."""
    from ray_migrate.schema import ID, PAYLOAD, vectors_to_numpy

    total = 0
    for t in tables:
        ids = t.column(ID).to_pylist()
        names = sorted(c for c in t.column_names if c not in (ID, PAYLOAD))
        vecs = [(n.encode() + b"\0", vectors_to_numpy(t.column(n))) for n in names]
        payloads = t.column(PAYLOAD).to_pylist()
        for i, pid in enumerate(ids):
            key = b"i" + pid.to_bytes(8, "little") if isinstance(pid, int) else \
                b"s" + str(pid).encode()
            h = hashlib.blake2b(key, digest_size=16)
            for name, arr in vecs:
                h.update(name)
                h.update(arr[i].tobytes())
            h.update(b"\1")
            h.update((payloads[i] or "{}").encode())
            total += int.from_bytes(h.digest(), "little")
    return total % 2**128


def setup(work: Path, n: int, dim: int, units: int) -> tuple[Any, list[UnitSpec]]:
    """Source, a target copied by the product's backends, the worker and the plan's units."""
    from ray_migrate.backends import open_backend
    from ray_migrate.config import parse_config
    from ray_migrate.plan import make_plan
    from ray_migrate.worker import UnitWorker

    t0 = time.perf_counter()
    lance_source(work / "source", n, dim)
    cfg = parse_config({
        "migration_id": "bench-verify",
        "source": {"kind": "lancedb", "uri": str(work / "source"), "table": "src"},
        "target": {"kind": "lancedb", "uri": str(work / "target"), "table": "docs"},
        "units": {"by": "id_range", "count": units}, "copy": {"batch_size": BATCH},
        "state_uri": str(work / "state")})
    source = open_backend(cfg.source)
    plan = make_plan(cfg, source)
    target = open_backend(cfg.target, payload_schema=plan.target_info.payload_schema)
    target.create(plan.target_info)
    for batch, _ in source.scan(UnitSpec("all", "all"), BATCH):
        target.append(batch)
    print(f"made {n} x {dim} source and target in {time.perf_counter() - t0:.1f}s",
          flush=True)
    return UnitWorker(cfg, plan.to_dict()), plan.units


def scan_both(worker: Any, units: list[UnitSpec], raw: bool = False) -> tuple[int, float]:
    """Both sides read once: in their own columns (``raw``) or as canonical batches."""
    t0, n = time.perf_counter(), 0
    for side in (worker.source, worker.target):
        scan = getattr(side, "inner", side).scan  # the LanceDB backend in its retries
        kw = {"raw": True} if raw else {}
        for unit in units:
            for batch, _ in scan(worker.forward.target_unit(unit)
                                 if side is worker.target else unit, BATCH, **kw):
                n += batch.num_rows
    return n, time.perf_counter() - t0


def verify_all(worker: Any, units: list[UnitSpec]) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for unit in units:
        v = worker.verify(unit.to_dict())
        if not v["equal"]:
            raise RuntimeError(f"unit {unit.unit_id} differs: {v}")
        n += v["source_count"] + v["target_count"]
    return n, time.perf_counter() - t0


def old_both(worker: Any, units: list[UnitSpec]) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for unit in units:
        src: Backend = worker.source
        tgt: Backend = worker.target
        a = old_digest(tgt.stored_form(b) for b, _ in src.scan(unit, BATCH))
        b = old_digest(b for b, _ in tgt.scan(unit, BATCH))
        if a != b:
            raise RuntimeError(f"unit {unit.unit_id}: the old digests differ")
        n += 2 * tgt.count(unit)
    return n, time.perf_counter() - t0


def _ratio(scan: tuple[int, float], verify: tuple[int, float]) -> float:
    return verify[0] / verify[1] / (scan[0] / scan[1])


def _median_round(rounds: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """The round whose verify / scan ratio is the median (the lower one of an even count)."""
    ordered = sorted(rounds, key=lambda r: _ratio(*r))
    return ordered[(len(ordered) - 1) // 2]


def report(a: argparse.Namespace, rows: dict[str, tuple[int, float]],
           rounds: list[tuple[Any, Any]], cmd: str) -> str:
    base = rows["scan"][0] / rows["scan"][1]
    ratio = _ratio(rows["scan"], rows["verify"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    names = {"scan": "(a) scan both sides once, own columns (baseline)",
             "canonical": "(a2) scan both sides once, canonical batches",
             "verify": "(b) ray_migrate verify, every unit", "old": "(c) old per-row blake2b"}
    table = [(names[k], f"{rows[k][0]:,}", f"{rows[k][1]:.2f}",
              f"{rows[k][0] / rows[k][1]:,.0f}", f"{rows[k][0] / rows[k][1] / base:.2f}")
             for k in names if k in rows]
    each = ", ".join(f"{_ratio(*r):.2f} ({r[1][1]:.2f} s / {r[0][1]:.2f} s)" for r in rounds)
    summary = [(f"verify rate / scan-both rate, median of {len(rounds)} rounds",
                f"{ratio:.2f}", f">= {TARGET}", "yes" if ratio >= TARGET else "NO"),
               ("each round: ratio (verify s / scan s)", each, "", "")]
    return "\n".join([
        "## Verify", "",
        f"LanceDB -> LanceDB, {a.points:,} x {a.dim}, {a.units} id_range units, batch {BATCH}, "
        "one process (the verify of a unit runs in one worker). Scan and verify alternate "
        f"for {len(rounds)} rounds; the table shows the median round's.", "",
        md_table(("metric", "value", "target", "pass"), summary), "",
        md_table(("case", "points read", "s", "points/s", "x baseline"), table), "",
        f"- machine: {machine()}",
        f"- commit: {commit}, {dt.date.today()}",
        f"- command: `{cmd}`", ""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=3_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--units", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="a smoke run: 20k x 32")
    p.add_argument("--no-old", action="store_true", help="skip (c), the old digest")
    p.add_argument("--rounds", type=int, default=3,
                   help="scan-then-verify rounds; the median round's ratio is the figure")
    p.add_argument("--profile", action="store_true", help="cProfile (b), print the top")
    p.add_argument("--write", action="store_true", help="write bench/results/verify.md")
    a = p.parse_args()
    if a.quick:
        a.points, a.dim = 20_000, 32
    cmd = "python bench/verify.py " + " ".join(sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="rm-bench-verify-"))
    try:
        worker, units = setup(work, a.points, a.dim, a.units)
        rows = {"canonical": scan_both(worker, units)}
        rounds = []  # (scan, verify), alternated: a drift of the machine hits both alike
        for _ in range(a.rounds - 1):
            rounds.append((scan_both(worker, units, raw=True), verify_all(worker, units)))
        rows["scan"] = scan_both(worker, units, raw=True)
        if a.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            rows["verify"] = prof.runcall(verify_all, worker, units)
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        else:
            rows["verify"] = verify_all(worker, units)
        rounds.append((rows["scan"], rows["verify"]))
        rows["scan"], rows["verify"] = _median_round(rounds)
        if not a.no_old:
            rows["old"] = old_both(worker, units)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(a, rows, rounds, cmd)
    publish("Verify", text, a.write, "verify")
    return 0


if __name__ == "__main__":
    run_script(main)
