"""The application's write latency while its collection moves, every part its own process.

    python bench/app_latency.py [--runs 3] [--points 100000] [--window 60] [--quick]
                                [--by-tenant] [--write]

A Ray head from `ray start --head` (tests/raycluster.py, token auth). The application
(bench/app_proc.py) is a process of its own writing 500 points/s (upserts of 100 ids drawn
from the seeded ones, over every tenant; with ``--by-tenant`` from one tenant per upsert, in
turn) and searching 2/s (exact, filtered on the tenant). Per run, four windows, each on a
fresh copy of the same pristine LanceDB source (100k x 64, 8 tenants, a BTree index
on id), so the table's drift under writes hits every window alike:

- before: the application's own LanceDB client (no RoutedCollection, no router);
- split floor: the same own client on two copies of the source, each upsert split by tenant
  and written to both at once (bench/app_proc.py ``--mode split``): what any write that
  commits to two owners costs on this machine, with no router and no migration (in the waves
  a routed write commits to both owners);
- control: RoutedCollection with its router up and no migration (``Migration.start(workers=
  False)`` in a process of its own);
- during: RoutedCollection while ``ray-migrate run --address`` (its own process, L->L, tenant
  units) runs; 'after': the same client for ``--after`` s once the run has exited.

Per window: write p50/p99 and count, search p99, errors; per run the ratios during / before
and during / control, split floor / before and during / split floor; per write (routed windows) the ms in the router's lease calls and in
each owner's engine call; CPU per process group (psutil, sampled every second: the app, the
`run` driver, the router, the unit workers, Ray's own) and the migration's stage then. Each
run holds a machine-wide lock file (``RAY_MIGRATE_BENCH_LOCK``, default
``<tmp>/ray_migrate-bench.lock``), so benchmarks that take it run one at a time. Exits 0
whatever the numbers are.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # last on sys.path: bench/copy.py != copy
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]
sys.path.append(os.path.join(os.path.dirname(_HERE), "tests"))

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray  # noqa: F401 - imported first: ray puts its bundled psutil on sys.path
from _common import ROOT, lance_source, machine, md_table, publish, run_script

DIM = 64
APP = str(Path(_HERE) / "app_proc.py")
CLI = str(Path(sys.executable).parent / "ray-migrate")
LOCK = os.environ.get("RAY_MIGRATE_BENCH_LOCK",
                      os.path.join(tempfile.gettempdir(), "ray_migrate-bench.lock"))
STAGES = ("copy", "catch-up", "waves", "source")
KEYS = ("router", "frozen", "lookup", "source", "target")  # ms per write, split (app_proc.Split)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@contextlib.contextmanager
def bench_lock(path: str | None) -> Iterator[None]:
    """The machine-wide benchmark lock for one run (None: none)."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def seed(path: Path, n: int) -> None:
    import lancedb
    from lancedb.index import BTree

    lance_source(path, n, DIM, tenants=8, table="src")
    lancedb.connect(str(path)).open_table("src").create_index("id", config=BTree())


def config(work: Path, mid: str, a: argparse.Namespace) -> Path:
    cfg = {"migration_id": mid,
           "source": {"kind": "lancedb", "uri": str(work / "src"), "table": "src"},
           "target": {"kind": "lancedb", "uri": str(work / "target"), "table": "docs"},
           "units": {"by": "tenant", "field": "tenant"},
           "copy": {"batch_size": 10000, "workers": 2, **json.loads(a.copy_json)},
           "cutover": {"waves": [1, "25%", "100%"], "pause_s": a.pause_s},
           "lance": json.loads(a.lance_json),
           "state_uri": str(work / "state")}
    path = work / "migration.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def spawn(args: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(out, "wb") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=str(ROOT))


def app(work: Path, mode: str, env: dict[str, str], a: argparse.Namespace, mid: str = "",
        address: str = "") -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, APP, "--mode", mode, "--workdir", str(work), "--uri",
            str(work.parent / "src"), "--points", str(a.points)]
    if mode == "routed":
        args += ["--migration-id", mid, "--address", address]
    if a.by_tenant:
        args.append("--by-tenant")
    if mode == "split":
        args += ["--uri2", str(work.parent / "src2")]
    return spawn(args, work / "app.out", env)


def calls(work: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(ln) for ln in (work / "calls.jsonl").read_text().splitlines()]
    except FileNotFoundError:
        return []


def wait_for(pred: Any, timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(poll_s)  # polling another process's files


def first_call(work: Path) -> float:
    wait_for(lambda: any(c["op"] == "w" for c in calls(work)), 180, f"{work.name}'s app")
    return next(c["t"] for c in calls(work) if c["op"] == "w")


def stop_app(work: Path, proc: subprocess.Popen) -> None:
    (work / "stop").touch()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def window(cs: list[dict[str, Any]], lo: float, hi: float) -> dict[str, Any]:
    """One window's writes and searches: latency percentiles, count, errors, and the mean
    ms per write in the router's lease calls and in each owner's engine call."""
    w = [c for c in cs if c["op"] == "w" and lo <= c["t"] < hi]
    s = [c for c in cs if c["op"] == "s" and lo <= c["t"] < hi]
    lat = [c["ms"] for c in w]
    return {"n": len(w), "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat, default=0),
            "s_n": len(s), "s_p99": pct([c["ms"] for c in s], 99),
            "errors": [c["err"] for c in w + s if c.get("err")], "secs": hi - lo,
            "split": {k: float(np.mean([c.get(k, 0.0) for c in w])) if w else 0.0
                      for k in KEYS},
            "slow": sorted(w, key=lambda c: -c["ms"])[:max(1, len(w) // 100)]}


def timed_window(work: Path, proc: subprocess.Popen, a: argparse.Namespace
                 ) -> dict[str, Any]:
    """Warm-up, then a window of ``a.window`` s, then stop the app."""
    t0 = first_call(work) + a.warmup
    time.sleep(max(0.0, t0 + a.window - time.time()))
    stop_app(work, proc)
    return window(calls(work), t0, t0 + a.window)


def before(run: Path, head: Any, a: argparse.Namespace) -> dict[str, Any]:
    work = run / "before"
    shutil.copytree(run.parent / "pristine", work / "src")
    return timed_window(work / "app", app(work / "app", "own", head.env, a), a)


def split(run: Path, head: Any, a: argparse.Namespace) -> dict[str, Any]:
    work = run / "split"
    for name in ("src", "src2"):
        shutil.copytree(run.parent / "pristine", work / name)
    return timed_window(work / "app", app(work / "app", "split", head.env, a), a)


def control(run: Path, head: Any, a: argparse.Namespace, k: int) -> dict[str, Any]:
    work = run / "control"
    shutil.copytree(run.parent / "pristine", work / "src")
    mid = f"ctl-{k}-{int(time.time())}"
    cfg = config(work, mid, a)
    router = spawn([sys.executable, __file__, "--router", str(cfg), "--address", head.address,
                    "--hold", str(work)], work / "router.out", head.env)
    try:
        wait_for(lambda: (work / "router_up").exists(), 180, "the control router")
        return timed_window(work / "app", app(work / "app", "routed", head.env, a, mid,
                                              head.address), a)
    finally:
        (work / "release").touch()
        try:
            router.wait(timeout=60)
        except subprocess.TimeoutExpired:
            router.kill()


def hold_router(cfg_path: str, address: str, hold: str) -> int:
    """The control's router: the migration planned and its router up, no worker, until the
    file ``release`` appears in ``hold``."""
    from ray_migrate.config import load_config
    from ray_migrate.migration import Migration

    m = Migration(load_config(cfg_path), address=address)
    m.start(workers=False)
    Path(hold, "router_up").touch()
    wait_for(lambda: Path(hold, "release").exists(), 3600, "release", poll_s=0.2)
    m.router.kill()
    return 0


def stage(units: dict[str, Any]) -> str:
    phases = {u.get("phase") for u in units.values()}
    if phases & {"capturing", "copying"}:
        return "copy"
    if phases & {"frozen", "target", "done", "rolled_back"}:
        return "waves"
    return "catch-up" if phases & {"catching_up", "ready"} else "source"


class CpuSampler:
    """CPU seconds per process group, per second, tagged with the migration's stage."""

    GROUPS = ("app", "run", "router", "worker", "ray")

    def __init__(self, head: Any, app_pid: int, run_pid: int):
        import psutil

        self.psutil, self.head_pid = psutil, head.proc.pid
        self.app_pid, self.run_pid = app_pid, run_pid
        self.last: dict[int, float] = {}
        self.by_stage: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.secs: dict[str, float] = defaultdict(float)

    def group(self, p: Any) -> str:
        if p.pid == self.app_pid:
            return "app"
        if p.pid == self.run_pid:
            return "run"
        cmd = " ".join(p.cmdline())
        if "ray::Router" in cmd or "ray::rm:" in cmd:
            return "router"
        return "worker" if "ray::UnitWorker" in cmd or "ray::" in cmd else "ray"

    def sample(self, stage_now: str, dt_s: float) -> None:
        procs = []
        for pid in (self.head_pid, self.app_pid, self.run_pid):
            with contextlib.suppress(self.psutil.Error):
                p = self.psutil.Process(pid)
                procs += [p, *p.children(recursive=True)]
        self.secs[stage_now] += dt_s
        for p in {p.pid: p for p in procs}.values():
            with contextlib.suppress(self.psutil.Error):
                t = p.cpu_times()
                used = t.user + t.system
                prev = self.last.get(p.pid)
                self.last[p.pid] = used
                if prev is not None:
                    self.by_stage[stage_now][self.group(p)] += used - prev


def routing_units(state: Path, mid: str) -> dict[str, Any]:
    try:
        return json.loads((state / mid / "routing.json").read_text()).get("units", {})
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return {}


def during(run: Path, head: Any, a: argparse.Namespace, k: int) -> dict[str, Any]:
    work = run / "during"
    shutil.copytree(run.parent / "pristine", work / "src")
    mid = f"run-{k}-{int(time.time())}"
    cfg = config(work, mid, a)
    t_run = time.time()
    proc = spawn([CLI, "run", str(cfg), "--address", head.address], work / "run.out", head.env)
    ap = app(work / "app", "routed", head.env, a, mid, head.address)
    cpu = CpuSampler(head, ap.pid, proc.pid)
    stages: list[tuple[float, str]] = []
    last = time.monotonic()
    while proc.poll() is None:
        time.sleep(1.0)  # sampling once a second
        now = time.monotonic()
        st = stage(routing_units(work / "state", mid))
        stages.append((time.time(), st))
        cpu.sample(st, now - last)
        last = now
    t_end = time.time()
    time.sleep(a.after)
    stop_app(work / "app", ap)
    cs = calls(work / "app")
    connected = next((c["t"] for c in cs if c["op"] == "connected"), t_end)
    out = window(cs, connected + 1.0, t_end)
    out["after"] = window(cs, t_end, t_end + a.after)
    out["run_rc"], out["run_s"], out["connect_s"] = proc.returncode, t_end - t_run, \
        connected - t_run
    out["cpu"] = {s: dict(g) for s, g in cpu.by_stage.items()}
    out["stage_s"] = dict(cpu.secs)
    out["by_stage"] = {}
    for st in STAGES:
        spans = [t for t, s in stages if s == st]
        w = [c for c in cs if c["op"] == "w" and connected + 1.0 <= c["t"] < t_end
             and any(t - 1.0 <= c["t"] < t for t in spans)]
        if w:
            out["by_stage"][st] = {"n": len(w), "p99": pct([c["ms"] for c in w], 99),
                                   **{key: float(np.mean([c.get(key, 0.0) for c in w]))
                                      for key in KEYS}}
    if proc.returncode:
        out["run_tail"] = (work / "run.out").read_text(errors="replace")[-1500:]
    return out


def one_run(root: Path, head: Any, a: argparse.Namespace, k: int) -> dict[str, Any]:
    run = root / f"run{k}"
    run.mkdir()
    out = {"before": before(run, head, a), "split": split(run, head, a),
           "control": control(run, head, a, k),
           "during": during(run, head, a, k)}
    shutil.rmtree(run, ignore_errors=True)
    return out


def fmt(x: float) -> str:
    return f"{x:.0f}" if x == x else "-"


def report(runs: list[dict[str, Any]], a: argparse.Namespace, cmd: str, secs: float) -> str:
    rows: list[tuple[str, ...]] = []
    ok_b = ok_c = 0
    for k, r in enumerate(runs):
        b, c, d = r["before"], r["control"], r["during"]
        rb, rc = d["p99"] / b["p99"], d["p99"] / c["p99"]
        enough = min(b["n"], c["n"], d["n"]) >= a.min_writes
        ok_b += rb <= 1.5 and enough
        ok_c += rc <= 1.3 and enough
        f = r["split"]
        for name, w in (("before (own client)", b),
                        ("split floor (own client, two tables at once)", f),
                        ("control (routed, no migration)", c),
                        ("during (routed, ray-migrate run)", d), ("after", d["after"])):
            rows.append((f"run {k + 1}: write p50 / p99 / max (ms), writes, {name}",
                         f"{fmt(w['p50'])} / {fmt(w['p99'])} / {fmt(w['max'])}, {w['n']}",
                         "", ""))
        rows.append((f"run {k + 1}: write p99 during / before", f"{rb:.2f}", "<= 1.5",
                     "pass" if rb <= 1.5 and enough else "FAIL"))
        rows.append((f"run {k + 1}: write p99 during / control", f"{rc:.2f}", "<= 1.3",
                     "pass" if rc <= 1.3 and enough else "FAIL"))
        rows.append((f"run {k + 1}: write p99 split floor / before; during / split floor",
                     f"{f['p99'] / b['p99']:.2f}; {d['p99'] / f['p99']:.2f}", "", ""))
        rows.append((f"run {k + 1}: search p99 before / control / during (ms)",
                     f"{fmt(b['s_p99'])} / {fmt(c['s_p99'])} / {fmt(d['s_p99'])}", "", ""))
        errs = len(b["errors"]) + len(c["errors"]) + len(d["errors"]) + len(d["after"]["errors"])
        rows.append((f"run {k + 1}: client errors; run exit code; run s", f"{errs}; "
                     f"{d['run_rc']}; {d['run_s']:.0f}", "0; 0", "pass" if not errs and
                     d["run_rc"] == 0 else "FAIL"))
    n = len(runs)
    rows.insert(0, (f"runs with write p99 during / control <= 1.3 (>= {a.min_writes} writes "
                    "per window)", f"{ok_c} of {n}", f"{n} of {n}",
                    "pass" if ok_c == n else "FAIL"))
    rows.insert(0, (f"runs with write p99 during / before <= 1.5 (>= {a.min_writes} writes "
                    "per window)", f"{ok_b} of {n}", f"{n} of {n}",
                    "pass" if ok_b == n else "FAIL"))
    errors = sorted({e for r in runs for w in (r["before"], r["control"], r["during"],
                                                r["during"]["after"]) for e in w["errors"]})
    return md_table(("Metric", "Value", "Target", "Pass"), rows) + "\n\n" + (
        "Client errors (distinct): " + "; ".join(errors[:5]) + "\n\n" if errors else "") \
        + where(runs)


def where(runs: list[dict[str, Any]]) -> str:
    """Where the time goes: per write, router and engine ms by window and stage; CPU seconds
    per process group per stage; the slowest writes."""
    lines = ["### Where the time goes", "", "Mean ms per write in the router's lease calls "
             "(begin + end; \"frozen\": begin calls that met a freeze and waited in the "
             "router), in the look-up of where written ids live (both sides' fetches, "
             "summed) and in each owner's engine call (pool threads included), by window "
             "and by the migration's stage (routing.json, sampled each second); then CPU "
             "seconds per second of each process group in each stage (2 cores = 2.0).", ""]
    rows = []
    for k, r in enumerate(runs):
        for name, w in (("control", r["control"]), ("during", r["during"])):
            s = w["split"]
            rows.append((f"run {k + 1} {name}", str(w["n"]), fmt(w["p99"]),
                         *(f"{s.get(key, 0.0):.1f}" for key in KEYS)))
        for st, v in r["during"]["by_stage"].items():
            rows.append((f"run {k + 1} during: {st}", str(v["n"]), fmt(v["p99"]),
                         *(f"{v.get(key, 0.0):.1f}" for key in KEYS)))
    lines.append(md_table(("window", "writes", "p99 ms", "router ms", "frozen ms",
                           "look-up ms", "source engine ms", "target engine ms"), rows))
    lines.append("")
    rows = []
    for k, r in enumerate(runs):
        d = r["during"]
        for st, groups in d["cpu"].items():
            secs = d["stage_s"].get(st, 0) or 1
            rows.append((f"run {k + 1}: {st}", f"{secs:.0f}",
                         *(f"{groups.get(g, 0) / secs:.2f}" for g in CpuSampler.GROUPS)))
    lines.append(md_table(("stage", "s", *CpuSampler.GROUPS), rows))
    lines.append("")
    for k, r in enumerate(runs):
        slow = r["during"]["slow"]
        lines.append(f"Run {k + 1}, slowest 1% of writes during: " + "; ".join(
            f"{c['ms']:.0f} ms (router {c.get('router', 0):.0f}, frozen "
            f"{c.get('frozen', 0):.0f}, look-up {c.get('lookup', 0):.0f}, source "
            f"{c.get('source', 0):.0f}, target {c.get('target', 0):.0f})" for c in slow))
    for k, r in enumerate(runs):  # a run that failed says why, or the figures mean little
        if r["during"].get("run_tail"):
            lines += ["", f"Run {k + 1}: `ray-migrate run` did not succeed; the end of its "
                      "output:", "", "```", r["during"]["run_tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--window", type=float, default=65.0, help="s of before and of control")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--after", type=float, default=8.0)
    ap.add_argument("--pause-s", type=float, default=25.0, help="cutover.pause_s")
    ap.add_argument("--copy-json", default="{}", help="more copy config, as JSON")
    ap.add_argument("--lance-json", default="{}", help="the lance config section, as JSON")
    ap.add_argument("--min-writes", type=int, default=300)
    ap.add_argument("--by-tenant", action="store_true",
                    help="each upsert's 100 ids from one tenant, in turn (an application "
                         "that batches by tenant): in the waves a write then has one owner")
    ap.add_argument("--no-lock", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 run, 20k points, short windows")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--router"), ap.add_argument("--address"), ap.add_argument("--hold")
    a = ap.parse_args()
    if a.router:
        return hold_router(a.router, a.address, a.hold)
    if a.quick:
        a.runs, a.points, a.window, a.pause_s, a.min_writes = 1, 20_000, 12.0, 3.0, 30
    from raycluster import ray_head

    root = Path(tempfile.mkdtemp(prefix="rm-applat-"))
    started = time.time()
    runs = []
    try:
        seed(root / "pristine", a.points)
        with ray_head(root, num_cpus=2) as head:
            for k in range(a.runs):
                with bench_lock(None if a.no_lock else LOCK):
                    runs.append(one_run(root, head, a, k))
                print(json.dumps({k: {w: {x: r[w][x] for x in ("n", "p50", "p99")}
                                      for w in ("before", "split", "control", "during")}
                                  for k, r in enumerate(runs)}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cmd = ("python bench/app_latency.py " + " ".join(sys.argv[1:])).strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    title = "Application latency while it moves" + (
        ", writes batched by tenant" if a.by_tenant else "")
    text = (f"## {title}\n\n`{cmd}` on "
            f"{dt.date.today().isoformat()}, commit {commit}; {a.points:,} points x {DIM}, "
            f"8 tenant units, L->L; {time.time() - started:.0f} s in all.\n\nMachine: "
            f"{machine()}.\n\n" + report(runs, a, cmd, time.time() - started))
    publish(title, text, a.write, "live_by_tenant" if a.by_tenant else "live")
    return 0


if __name__ == "__main__":
    run_script(main)
