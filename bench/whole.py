"""The whole `ray-migrate run` against a naive copy followed by the same index (issue 15).

    python bench/whole.py [--points 3000000] [--dim 128] [--baseline REV] [--quick] [--write]

On a `ray start` head (tests/raycluster.py, token auth), LanceDB -> LanceDB, id_range 8 units,
2 workers, auto mode, default waves, no client: (a) naive: one process scans the source in
batches, appends them to a new table and builds the vector index finalize builds (IVF_PQ,
same distance, Lance's default partitions); (b) `ray-migrate run CONFIG --address` as a
subprocess, the wall clock of the whole command. The ratio is a / b; the phases come from
the run's report (report/report.json: finalize and pause events, unit copy seconds).
``--baseline REV``: the same command run with the code of git revision REV too (its own head,
the same source), for what this code saves against it in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/copy.py would shadow the standard library's ``copy``: load that one first.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
import argparse  # noqa: E402
import copy  # noqa: E402,F401
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path += [str(_BENCH), str(_BENCH.parent / "tests")]

from _common import ROOT, lance_source, machine, md_table, publish, run_script  # noqa: E402

TARGET = 0.7
BATCH = 10_000


def naive(src: Path, dst: Path) -> float:
    """Seconds for a hand-written copy (scan batches, append) and the same index."""
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfPq

    t0 = time.perf_counter()
    table = None
    for batch in lancedb.connect(str(src)).open_table("src").to_lance().to_batches(
            batch_size=BATCH):
        if table is None:
            table = lancedb.connect(str(dst)).create_table("dst", data=pa.Table.from_batches([batch]))
        else:
            table.add(pa.Table.from_batches([batch]))
    assert table is not None
    table.create_index("vector", config=IvfPq(distance_type="l2"), replace=True)
    return time.perf_counter() - t0


def config(work: Path, src: Path, mid: str) -> Path:
    cfg = {"migration_id": mid,
           "source": {"kind": "lancedb", "uri": str(src), "table": "src"},
           "target": {"kind": "lancedb", "uri": str(work / "dst-rm"), "table": "dst"},
           "units": {"by": "id_range", "count": 8},
           "copy": {"batch_size": BATCH, "workers": 2},
           "cutover": {"mode": "auto"}, "state_uri": str(work / "state")}
    path = work / "migration.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(cfg))
    return path


def run_command(work: Path, src: Path, head) -> tuple[float, dict]:
    mid = f"whole-{int(time.time())}"
    shutil.rmtree(work / "dst-rm", ignore_errors=True)
    shutil.rmtree(work / "state", ignore_errors=True)
    cfg = config(work, src, mid)
    exe = str(Path(sys.executable).parent / "ray-migrate")
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "run", str(cfg), "--address", head.address], env=head.env,
                          capture_output=True, text=True)
    secs = time.perf_counter() - t0
    (work / "run.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"ray-migrate run exited {proc.returncode}: {proc.stderr[-2000:]}")
    doc = json.loads((work / "state" / mid / "report" / "report.json").read_text())
    return secs, doc


def phases(doc: dict) -> dict[str, float]:
    """Copy, verify (until the first wave), finalize and pauses from the run's report."""
    rep, events = doc["report"], doc["events"]
    t0 = rep["started_at"]
    waves = [e["t"] for e in events if e["kind"] == "wave"]
    fin = next((e for e in events if e["kind"] == "finalize"), None)
    pauses = [e for e in events if e["kind"] == "pause"]
    copy_s = sum(u.get("seconds") or 0 for u in rep["units"]) / 2  # 2 workers
    return {
        "copy (unit copy seconds / 2 workers)": copy_s,
        "start to finalize start (copy ended)": (fin["started"] - t0) if fin else float("nan"),
        "finalize": rep["finalize"].get("seconds", fin["seconds"] if fin else float("nan")),
        "finalize overlapped with verify": rep["finalize"].get("overlapped_s", 0.0),
        "start to first wave (copy, verify, finalize)": (waves[0] - t0) if waves else 0.0,
        "pauses waited": sum(p.get("waited_s", 0.0) for p in pauses),
        "pauses configured": sum(p.get("seconds", 0.0) for p in pauses),
        "pauses ended early": sum(1 for p in pauses if p.get("ended_early")),
    }


def baseline(work: Path, src: Path, rev: str) -> tuple[float, dict]:
    """The same command with the code of ``rev`` (exported from git), on its own head."""
    from raycluster import ray_head

    code = work / "base"
    code.mkdir()
    archive = subprocess.run(["git", "archive", rev, "ray_migrate"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    (work / "head-base").mkdir()
    env = {"PYTHONPATH": f"{code}:{ROOT / 'tests'}"}
    with ray_head(work / "head-base", num_cpus=2, env=env) as head:
        return run_command(work, src, head)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=3_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--baseline", help="a git revision to run the same command with too")
    ap.add_argument("--quick", action="store_true", help="200k x 64: a smoke run")
    ap.add_argument("--write", action="store_true", help="write bench/results/whole.md")
    a = ap.parse_args()
    n, dim = (200_000, 64) if a.quick else (a.points, a.dim)
    import ray  # noqa: F401 - first: ray puts its bundled psutil (machine()) on sys.path
    from raycluster import ray_head

    work = Path(tempfile.mkdtemp(prefix="rm-whole-"))
    try:
        src = work / "src"
        lance_source(src, n, dim)
        naive_s = naive(src, work / "dst-naive")
        (work / "head").mkdir()
        with ray_head(work / "head", num_cpus=2) as head:
            run_s, doc = run_command(work, src, head)
        ph = phases(doc)
        base = baseline(work, src, a.baseline) if a.baseline else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = naive_s / run_s
    rows = [("naive copy + same IVF_PQ index, seconds", f"{naive_s:.1f}", "", ""),
            ("`ray-migrate run --address`, seconds", f"{run_s:.1f}", "", ""),
            ("whole command vs naive (a/b)", f"{ratio:.2f}x", f">= {TARGET}x",
             "yes" if ratio >= TARGET else "no")]
    rows += [(f"phase: {k}", f"{v:.1f}" if isinstance(v, float) else str(v), "", "")
             for k, v in ph.items()]
    rows.append(("run report ok", str(doc["ok"]), "True", "yes" if doc["ok"] else "no"))
    if base is not None:
        base_s, base_doc = base
        rows += [(f"`ray-migrate run` at {a.baseline}, seconds", f"{base_s:.1f}", "", ""),
                 (f"this commit vs {a.baseline} (time ratio)", f"{run_s / base_s:.2f}", "< 1",
                  "yes" if run_s < base_s else "no")]
        rows += [(f"{a.baseline} phase: {k}", f"{v:.1f}" if isinstance(v, float) else str(v),
                  "", "") for k, v in phases(base_doc).items()]
    cmd = "python bench/whole.py " + " ".join(sys.argv[1:])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    text = (f"## Whole command ({n:,} x {dim}, L->L, id_range 8, 2 workers, auto, no client)\n\n"
            + md_table(("metric", "value", "target", "pass"), rows)
            + f"\n\nMachine: {machine()}  \nCommit: {commit}  \nCommand: `{cmd}`\n")
    publish("Whole command", text, a.write, "whole")
    return 0


if __name__ == "__main__":
    run_script(main)
