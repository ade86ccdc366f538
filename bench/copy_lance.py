"""LanceDB -> LanceDB copy phase against a naive single-process loop, and its worker memory.

    python bench/copy_lance.py [--points 3000000] [--small 300000] [--dim 128] [--quick] [--write]

One run, same data (bench/_common.lance_source, generated columnar once into a temp folder):
- naive: one process scans the source in batches of 10,000 and appends each to a new table;
- ray_migrate: run_migration, 8 id_range units, copy batch_size 10,000, 2 workers, compaction,
  index and verify off; the copy phase is timed from the units' report and final checkpoints
  (as bench/copy.py), so Ray start and planning are not in it; the target's versions and
  fragments after it; the workers' peak RSS at ``--small`` and at ``--points`` points;
- the write path on its own, in one process, same scan and conversion: today's appends of
  10,000 rows per write (one table version each) against Lance fragments with one commit per
  unit (lance_direct.LanceDirect.write_files / commit_files).
Exits 0 whatever the numbers are: it is a measurement.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # last on sys.path: bench/copy.py != copy
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import datetime as dt
import importlib.util
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import ray  # noqa: F401 - imported first: ray puts its bundled psutil on sys.path
from _common import ROOT, lance_source, machine, md_table, run_script

BATCH, WORKERS, UNITS = 10_000, 2, 8


def _bench_copy():
    """bench/copy.py's run_ray (copy window from the report, workers' peak RSS)."""
    spec = importlib.util.spec_from_file_location("bench_copy", Path(_HERE) / "copy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def naive(src: Path, dst: Path) -> tuple[int, float]:
    """Scan batches, append each: what one writes by hand."""
    import lancedb

    tbl = lancedb.connect(str(src)).open_table("src")
    db = lancedb.connect(str(dst))
    out, n = None, 0
    t0 = time.perf_counter()
    for rb in tbl.search().select(tbl.schema.names).to_batches(BATCH):
        if out is None:
            out = db.create_table("docs", data=rb)
        else:
            out.add(rb)
        n += rb.num_rows
    return n, time.perf_counter() - t0


def product(mod, src: Path, work: Path, mid: str) -> dict:
    """run_migration's copy phase; the target's versions and fragments after it."""
    import lancedb

    from ray_migrate.config import parse_config

    cfg = parse_config({
        "migration_id": mid, "source": {"kind": "lancedb", "uri": str(src), "table": "src"},
        "target": {"kind": "lancedb", "uri": str(work / "target"), "table": "docs"},
        "units": {"by": "id_range", "count": UNITS},
        "copy": {"batch_size": BATCH, "workers": WORKERS},
        "lance": {"compact": False, "index_min_rows": 10**9}, "verify": {"enabled": False},
        "state_uri": str(work / "state")})
    mod.WORKERS = WORKERS
    r = mod.run_ray(cfg, sample_rss=True)
    tbl = lancedb.connect(str(work / "target")).open_table("docs")
    r["versions"] = len(tbl.list_versions())
    r["fragments"] = tbl.stats()["fragment_stats"]["num_fragments"]
    r["rows"] = tbl.count_rows()
    return r


def write_paths(src: Path, work: Path) -> dict[str, tuple[float, int, int]]:
    """Same scan and conversion, two writes: 10k-row appends, or fragments + a commit per
    unit (the scan cut in UNITS parts). Seconds, versions, fragments of each."""
    from ray_migrate.backends.lance_direct import LanceDirect
    from ray_migrate.backends.lancedb import LanceBackend
    from ray_migrate.config import LanceEndpoint
    from ray_migrate.units import UnitSpec

    source = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(src), table="src"))
    per_unit = -(-source.count(UnitSpec("all", "all")) // UNITS)
    out = {}
    for how in ("appends", "fragments"):
        target = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(work / how), table="docs"))
        target.create(source.describe())
        d = LanceDirect(source, target)
        rows = (d.rows([b]) for b, _ in d.scan(UnitSpec("all", "all"), BATCH))
        t0 = time.perf_counter()
        if how == "appends":
            for t in rows:
                d.write(t, append=True)
        else:
            while True:
                unit = _take(rows, per_unit)
                frags = d.write_files(unit)
                if not frags:
                    break
                d.commit_files(frags)
        secs = time.perf_counter() - t0
        tbl = target.tbl
        out[how] = (secs, len(tbl.list_versions()),
                    tbl.stats()["fragment_stats"]["num_fragments"])
        shutil.rmtree(work / how, ignore_errors=True)
    return out


def _take(it, n: int):
    got = 0
    for t in it:
        yield t
        got += t.num_rows
        if got >= n:
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=3_000_000)
    ap.add_argument("--small", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="20k/80k points: a smoke check")
    ap.add_argument("--write", action="store_true",
                    help="write the table to bench/results/copy_lance.md")
    a = ap.parse_args()
    if a.quick:
        a.small, a.points = 20_000, 80_000
    rows: list[tuple[str, ...]] = []

    def row(metric: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append((metric, value, target, "" if ok is None else ("PASS" if ok else "FAIL")))
        print("  " + " | ".join(rows[-1]), flush=True)

    mod = _bench_copy()
    work = Path(tempfile.mkdtemp(prefix="rm-copy-lance-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rmcl-"))  # short: Ray's socket paths
    stamp = dt.datetime.now().strftime("%H%M%S")
    try:
        big, small = work / "src-big", work / "src-small"
        t0 = time.perf_counter()
        lance_source(big, a.points, a.dim)
        lance_source(small, a.small, a.dim)
        print(f"generated the sources in {time.perf_counter() - t0:.0f}s", flush=True)
        n, s = naive(big, work / "naive")
        shutil.rmtree(work / "naive", ignore_errors=True)
        naive_rate = n / s
        row(f"naive loop, {n:,} points (scan 10k batches, append; 1 process)",
            f"{naive_rate:,.0f} points/s ({s:.1f} s)")
        # A Ray of this script's own: connect() would join another's running on this machine.
        # Its workers at the naive loop's niceness (Ray's default is 15): on a shared machine
        # a niced copy gets the CPU last, and the ratio would measure the neighbours.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", namespace="ray_migrate", num_cpus=4, include_dashboard=False,
                 configure_logging=False, _temp_dir=str(ray_tmp))
        r = product(mod, big, work / "big", f"bench-cl-b-{stamp}")
        rate = r["points"] / r["copy_s"]
        row(f"ray_migrate copy phase, {r['points']:,} points ({UNITS} id_range units, "
            f"{WORKERS} workers)", f"{rate:,.0f} points/s ({r['copy_s']:.1f} s)")
        row("ray_migrate copy / naive", f"{rate / naive_rate:.2f}", ">= 0.8",
            rate / naive_rate >= 0.8)
        row("target after the copy: versions / fragments (before compaction)",
            f"{r['versions']} / {r['fragments']}")
        row("target rows = source points", f"{r['rows']:,} / {n:,}", "equal", r["rows"] == n)
        shutil.rmtree(work / "big", ignore_errors=True)
        s_r = product(mod, small, work / "small", f"bench-cl-s-{stamp}")
        shutil.rmtree(work / "small", ignore_errors=True)
        row(f"worker peak RSS, {a.small:,} points", f"{s_r['peak_mb']:,.0f} MB")
        row(f"worker peak RSS, {a.points:,} points", f"{r['peak_mb']:,.0f} MB")
        ratio = r["peak_mb"] / s_r["peak_mb"]
        row(f"worker peak RSS {a.points:,} / {a.small:,}", f"{ratio:.2f}", "<= 1.2",
            ratio <= 1.2)
        w = write_paths(big, work)
        for how, (secs, versions, frags) in w.items():
            row(f"write path, 1 process: {how} ({versions} versions, {frags} fragments)",
                f"{a.points / secs:,.0f} points/s ({secs:.1f} s)")
        row("write path: fragments + 1 commit per unit / 10k-row appends",
            f"{w['appends'][0] / w['fragments'][0]:.2f}x")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    _publish(rows, a.write)
    return 0


def _publish(rows: list[tuple[str, ...]], write: bool) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    cmd = ("python bench/copy_lance.py " + " ".join(sys.argv[1:])).strip()
    text = (f"## Copy, LanceDB -> LanceDB\n\n`{cmd}` at commit {commit} on "
            f"{dt.date.today().isoformat()}.\n\nMachine: {machine()}.\n\n"
            f"{md_table(('Metric', 'Value', 'Target', 'Pass'), rows)}\n\n"
            "The copy phase runs from the first unit's start to the last unit's end (report "
            "and final checkpoints): Ray start, planning and worker start are not in it. "
            "Peak RSS is the largest resident set of either worker process, sampled every "
            "50 ms. Ray's workers run at niceness 0 here, as the naive loop (Ray's default "
            "is 15). The write-path rows scan and convert the same batches in one process and "
            "differ only in how they write.\n")
    print("\n" + text)
    if write:
        out = ROOT / "bench" / "results" / "copy_lance.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main)
