"""Live migration under client traffic: cutover freeze, catch-up lag, client write latency.

    python bench/live.py [--points 20000] [--tenants 8] [--writers 2] [--batch 100]
                         [--quick] [--qdrant] [--write]

Each run seeds a source, starts ``run_migration`` (tenant units, 2 workers, waves
[1, "25%", "100%"], pause_s 2, max_freeze_ms 500) and, once the router is up, client traffic
through ``RoutedCollection``: ``writers`` writer threads, each with its own client
(``Traffic``, ``batch`` points per upsert spread over every tenant, 10% single-id deletes),
plus one reader at 20 searches/s; "before" for a few seconds,
"during" the run, "after" for a few seconds once it returns. Runs: LanceDB -> LanceDB at 500
writes/s (freeze, latency ratio, errors), at 1,000 writes/s without the reader (catch-up lag)
and with it (information), and with
--qdrant Qdrant local -> LanceDB at 500 writes/s (informational). Exits 0 whatever the numbers
are.

Catch-up lag of a unit = the age of the oldest change waiting in its log. The router's ``lag``
(entries in the unit's log, sampled every 100 ms while the unit is catching_up or ready) is
mapped to a time with the client's own per-unit record of captured ids: the log is in write
order, so its oldest entry is the ``lag``-th newest id written to that unit.
"""

# ruff: noqa: E402 - the sys.path fix below must run before the other imports
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # last on sys.path: bench/copy.py != copy
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import bisect
import datetime as dt
import logging
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import ray  # noqa: F401 - imported first: ray puts its bundled psutil on sys.path
from _common import lance_source, machine, md_table, publish, run_script

DIM = 64
LAG_PHASES = ("catching_up", "ready")


COPY = {"batch_size": 1000, "workers": 2, "max_points_per_s": 0.0}  # --copy-rate sets the last


def make_cfg(mid: str, source: dict, work: Path) -> Any:
    from ray_migrate.config import parse_config

    return parse_config({
        "migration_id": mid, "source": source,
        "target": {"kind": "lancedb", "uri": str(work / "target"), "table": "docs"},
        "units": {"by": "tenant", "field": "tenant"},
        "copy": dict(COPY),
        "cutover": {"waves": [1, "25%", "100%"], "pause_s": 2, "max_freeze_ms": 500,
                    "max_attempts": 2},
        "state_uri": str(work / "state")})


def record_writes(coll: Any, log: dict[str, list[tuple[float, int]]],
                  split: list[tuple[float, ...]]) -> None:
    """Wrap the client's leased write: note (time, ids) per unit just before its lease, and
    in ``split`` per write (time, ms in its lease calls to the router, ms writing to the
    owners (``_write_owners``), ms inside the engines' own upsert or delete calls (summed
    over both owners when they run at once), ms in all, and of the engines' ms those of the
    source and of the target). Also keep the last of repeated ids
    in one upsert: Traffic(batch>1) draws existing ids with replacement, and LanceDB's
    merge_insert rejects a batch that names an id twice."""
    leased, upsert, call, owners = coll._leased, coll.upsert, coll.router.call, \
        coll._write_owners
    acc: dict[str, Any] = {"on": False, "ms": {}}  # one writer thread per client
    lock = threading.Lock()

    def dedup(points: list) -> int:
        return upsert(list({p["id"]: p for p in points}.values()))

    def timed(names: tuple[str, ...], fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if acc["on"] and (names[0] != "router" or args[0] in ("begin_writes",
                                                                      "end_writes")):
                    with lock:
                        for name in names:
                            acc["ms"][name] += (time.perf_counter() - t0) * 1000
        return run

    def wrapped(parts: dict[str, tuple[list, Any]], write: Any) -> None:
        now = time.monotonic()
        for unit_id, (ids, _) in parts.items():
            log[unit_id].append((now, len(ids)))
        acc["on"], acc["ms"] = True, {"router": 0.0, "engine": 0.0, "db": 0.0,
                                      "db_source": 0.0, "db_target": 0.0}
        t0 = time.perf_counter()
        try:
            return leased(parts, write)
        finally:
            acc["on"] = False
            ms = acc["ms"]
            split.append((now, ms["router"], ms["engine"], ms["db"],
                          (time.perf_counter() - t0) * 1000, ms["db_source"], ms["db_target"]))

    coll._leased, coll.upsert = wrapped, dedup
    coll.router.call, coll._write_owners = timed(("router",), call), timed(("engine",), owners)
    for side in ("source", "target"):  # opened on first use: open both now, to time them
        backend = coll.backends[side]
        backend.upsert = timed(("db", f"db_{side}"), backend.upsert)
        backend.delete_many = timed(("db", f"db_{side}"), backend.delete_many)


def oldest_age(writes: list[tuple[float, int]], lag: int, now: float) -> float:
    """Age of the ``lag``-th newest id written to a unit (its oldest waiting change)."""
    if lag <= 0:
        return 0.0
    seen = 0
    for t, n in reversed(writes):
        seen += n
        if seen >= lag:
            return now - t
    return now - writes[0][0] if writes else 0.0


def summary(secs: float, ids: int, lat: list[float], rd: list[float]) -> dict[str, Any]:
    """One period of client traffic: rates, and write and read latencies (ms)."""
    return {"s": secs, "ids": ids, "ids_s": ids / secs, "calls_s": len(lat) / secs,
            "n": len(lat), "lat": lat, "rd": rd, "p50": pct(lat, 50), "p99": pct(lat, 99),
            "read_p99": pct(rd, 99)}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of the same case as one: samples pooled, so a p99 rests on more writes."""
    if len(runs) == 1:
        return runs[0]
    out: dict[str, Any] = {"periods": {}}
    for p in runs[0]["periods"]:
        ps = [r["periods"][p] for r in runs]
        out["periods"][p] = summary(sum(x["s"] for x in ps), sum(x["ids"] for x in ps),
                                    [v for x in ps for v in x["lat"]],
                                    [v for x in ps for v in x["rd"]])
    for k in ("freeze", "hows", "failed", "errors", "ages", "lags", "source_compactions"):
        out[k] = [v for r in runs for v in r[k]]
    for k in ("attempts", "moved", "units"):
        out[k] = sum(r[k] for r in runs)
    out["run_s"] = sum(r["run_s"] for r in runs) / len(runs)
    for k in ("ages_by_phase", "ages_by_stage", "by_stage", "split"):
        out[k] = {key: [v for r in runs for v in r[k].get(key, [])]
                  for key in {key for r in runs for key in r[k]}}
    return out


def stage(phases: set[str]) -> str:
    """The migration's stage, from its units' phases: copy while any unit is being copied,
    then catch-up, then the cutover waves."""
    if phases & {"capturing", "copying"}:
        return "copy"
    if phases & {"frozen", "target", "done", "rolled_back"}:
        return "waves"
    return "catch-up" if phases & {"catching_up", "ready"} else "source"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def source_upkeep(source: dict, every_s: float, stop: threading.Event) -> list[str]:
    """What the application does to its own LanceDB table: compact it every ``every_s``
    (a compaction that conflicts with a write is tried again next time)."""
    import lancedb

    outcomes: list[str] = []

    def loop() -> None:
        # Strong consistency, as the clients have: a handle opened with the default
        # (read_consistency_interval=None) stays at the version it opened, so its optimize()
        # compacted nothing that was written later (the source kept every fragment).
        tbl = lancedb.connect(source["uri"], read_consistency_interval=dt.timedelta(0)
                              ).open_table(source["table"])
        while not stop.wait(every_s):
            try:
                tbl.optimize()
                outcomes.append("ok")
            except Exception:  # noqa: BLE001 - a conflict with a write: next round
                outcomes.append("conflict")

    if every_s > 0 and source["kind"] == "lancedb":
        threading.Thread(target=loop, daemon=True, name="app-upkeep").start()
    return outcomes


def live_run(mid: str, source: dict, work: Path, tenants: int, writers: int, rate: float,
             batch: int, periods: tuple[float, float, float],
             control_s: float | None = None,
             source_compact_s: float = 0.0, read_rate: float = 20.0,
             id_space: int | None = None) -> dict[str, Any]:
    """One migration under traffic; with ``control_s``, the same traffic for that long with
    the router up but no migration (units stay on the source): the control run.
    ``periods``: seconds of warm-up (traffic, not measured), of 'before' and of 'after'."""
    from ray_migrate.client import RoutedCollection
    from ray_migrate.driver import Migration, release_local_stores, run_migration
    from ray_migrate.routing.actor import get_router
    from ray_migrate.traffic import Traffic

    cfg = make_cfg(mid, source, work)
    warmup_s, before_s, after_s = periods
    writes: dict[str, list[tuple[float, int]]] = defaultdict(list)
    # (unit, lag entries, age s, phase, the migration's stage)
    samples: list[tuple[str, int, float, str, str]] = []
    stages: list[tuple[float, str]] = []  # (when, the migration's stage then)
    marks: dict[str, float] = {}
    traffics: list[Traffic] = []
    upkeep_runs: list[list[str]] = []
    split: list[tuple[float, ...]] = []  # per write, see record_writes
    stop = threading.Event()
    ids_per_call = 0.9 * batch + 0.1

    def sampler(router: Any) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            units = router.call("status")["units"]
            stages.append((t0, stage({row["phase"] for row in units})))
            for row in units:
                if row["phase"] in LAG_PHASES:
                    samples.append((row["unit_id"], row["lag"],
                                    oldest_age(writes[row["unit_id"]], row["lag"], t0),
                                    row["phase"], stages[-1][1]))
            stop.wait(max(0.0, 0.1 - (time.monotonic() - t0)))

    def on_started(m: Any) -> None:
        upkeep_runs.append(source_upkeep(source, source_compact_s, stop))
        for k in range(writers):
            coll = RoutedCollection.connect(mid)
            record_writes(coll, writes, split)
            t = Traffic(coll, [f"t{j}" for j in range(tenants)],
                        rate / writers / ids_per_call, read_rate if k == 0 else 0.0,
                        first_new_id=10**9 + k * 10**8, seed=3 + k, batch=batch,
                        id_space=id_space)
            t.mark("warmup")
            traffics.append(t.start())
        threading.Thread(target=sampler, args=(m.router,), daemon=True).start()
        time.sleep(warmup_s)  # the source reaches its steady state: fragments, compactions
        marks["before"] = time.monotonic()
        for t in traffics:
            t.mark("before")
        time.sleep(before_s)
        marks["during"] = time.monotonic()
        for t in traffics:
            t.mark("during")

    try:
        if control_s is None:
            report = run_migration(cfg, release_stores=False, on_started=on_started)
        else:
            m = Migration(cfg)
            m.start(workers=False)
            on_started(m)
            time.sleep(control_s)
            report = m.close(release_stores=False)
        marks["after"] = time.monotonic()
        for t in traffics:
            t.mark("after")
        router = get_router(mid)
        status = {r["unit_id"]: r for r in router.call("status")["units"]}
        time.sleep(after_s)
        marks["end"] = time.monotonic()
    finally:
        stop.set()
        for t in traffics:
            t.stop()
        try:
            get_router(mid).kill()
        except Exception:  # noqa: BLE001 - the router may never have started
            pass
        release_local_stores(cfg)

    def period(name: str, nxt: str) -> dict[str, Any]:
        return summary(
            marks[nxt] - marks[name],
            sum(n for w in writes.values() for t, n in w if marks[name] <= t < marks[nxt]),
            [x * 1000 for t in traffics for x in t.latency[("write", name)]],
            [x * 1000 for t in traffics for x in t.latency[("read", name)]])

    by_stage: dict[str, list[float]] = defaultdict(list)  # write latencies (ms) 'during'
    times = [t for t, _ in stages]
    for t in traffics:
        for started, kind, took in t.calls:
            i = bisect.bisect_right(times, started) - 1
            if kind == "write" and marks["during"] <= started < marks["after"] and i >= 0:
                by_stage[stages[i][1]].append(took * 1000)
    # Per stage ('before' and each stage of 'during'): mean ms of a write in its router
    # calls, in its engine writes, and in all.
    parts: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for started, *ms in split:
        if marks["before"] <= started < marks["during"]:
            parts["before"].append(tuple(ms))
        elif marks["during"] <= started < marks["after"]:
            i = bisect.bisect_right(times, started) - 1
            if i >= 0:
                parts[stages[i][1]].append(tuple(ms))
    rows = report.units
    freeze = [max(r.freeze_ms or 0.0, status[r.unit_id]["longest_freeze_ms"]) for r in rows]
    return {
        "periods": {p: period(p, q) for p, q in
                    (("before", "during"), ("during", "after"), ("after", "end"))},
        "freeze": freeze, "attempts": sum(r.cutover_attempts for r in rows),
        "hows": [r.cutover_how.split(" ")[0].strip(",") + ("-forced" if "under way" in
                 r.cutover_how else "") for r in rows if r.cutover_how],
        "moved": sum(status[r.unit_id]["phase"] in ("target", "done") for r in rows),
        "units": len(rows),
        "failed": [f"{r.unit_id} {r.status} {r.phase} equal={r.equal}: {r.error}" for r in rows
                   if not r.ok],
        "errors": [e for t in traffics for e in t.errors],
        "ages": [s[2] for s in samples], "lags": [s[1] for s in samples],
        "ages_by_phase": {p: [s[2] for s in samples if s[3] == p] for p in LAG_PHASES},
        "ages_by_stage": {st: [s[2] for s in samples if s[4] == st]
                          for st in ("copy", "catch-up", "waves")},
        "run_s": marks["after"] - marks["during"], "by_stage": dict(by_stage),
        "split": dict(parts), "source_compactions": [o for run in upkeep_runs for o in run]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--writers", type=int, default=2, help="writer threads (one client each)")
    ap.add_argument("--batch", type=int, default=100, help="points per client upsert")
    ap.add_argument("--source-compact-s", type=float, default=10.0,
                    help="the application compacts its LanceDB source this often (0: never)")
    ap.add_argument("--no-source-index", action="store_true",
                    help="leave the LanceDB source without its BTree index on id")
    ap.add_argument("--steady", action="store_true", help="writes draw their ids from the "
                    "seeded ones (updates, deletes, re-inserts), so the collection keeps its "
                    "size; by default half of every upsert is new ids and it grows")
    ap.add_argument("--reads", type=float, default=20.0, help="client searches per second")
    ap.add_argument("--copy-rate", type=float, default=0.0, help="copy.max_points_per_s of "
                    "the migrations (0: no limit)")
    ap.add_argument("--rates", default="500,1000", help="client write rates to run")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds of traffic before "
                    "'before' starts, not measured: the source reaches its steady state")
    ap.add_argument("--before", type=float, default=20.0, help="seconds of 'before'")
    ap.add_argument("--after", type=float, default=5.0, help="seconds of 'after'")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the 500 writes/s case "
                    "(and of its control), their samples pooled")
    ap.add_argument("--quick", action="store_true", help="3k points, 2 s periods: a smoke check")
    ap.add_argument("--qdrant", action="store_true", help="also Qdrant local -> LanceDB (info)")
    ap.add_argument("--write", action="store_true", help="replace the Live section of "
                    "bench/results/live_inprocess.md with this run")
    a = ap.parse_args()
    if a.quick:
        a.points, a.warmup, a.before, a.after, a.repeat = 3_000, 2.0, 2.0, 2.0, 1
    periods = (a.warmup, a.before, a.after)
    COPY["max_points_per_s"] = a.copy_rate
    # The lag runs start the migration soon after the traffic: they measure catch-up at the
    # write rate, which the clients must reach first, and a LanceDB source that has grown for
    # a while under 1,000 writes/s no longer takes them from one client process (see below).
    lag_periods = (0.0, min(5.0, a.before), a.after)
    id_space = a.points if a.steady else None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ray_migrate.demo import seed_qdrant
    from ray_migrate.driver import connect

    connect()
    rows: list[tuple[str, ...]] = []

    def row(case: str, rate: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append((case, rate, value, target, "" if ok is None else ("PASS" if ok else "FAIL")))
        print("  " + " | ".join(rows[-1]), flush=True)

    def achieved(r: dict, want: float) -> str:
        d = r["periods"]["during"]
        return (f"{want:,.0f} wanted; {d['ids_s']:,.0f} ids/s in {d['calls_s']:,.0f} calls/s "
                f"({a.batch}/upsert, {a.writers} writers)")

    def common(tag: str, r: dict, rate: str, targets: bool) -> None:
        fz = r["freeze"]
        p99 = pct(fz, 99)
        hows = r.get("hows", [])
        row(f"{tag}: freeze per unit p50 / p99 / max (ms; {r['moved']}/{r['units']} units "
            f"moved, {r['attempts']} cutover attempts; switched at a quiet moment without a "
            f"freeze {hows.count('quiet')}, frozen at a quiet moment {hows.count('freeze')}, "
            f"frozen anyway, without a quiet moment {hows.count('freeze-forced')})", rate,
            f"{pct(fz, 50):.0f} / {p99:.0f} / {max(fz, default=0):.0f}",
            "p99 <= 100 ms" if targets else "(info)", p99 <= 100 if targets else None)
        b, d, f = (r["periods"][p] for p in ("before", "during", "after"))
        row(f"{tag}: client write p50 / p99 (ms) before · during · after ({b['n']} · "
            f"{d['n']} · {f['n']} writes)", rate,
            f"{b['p50']:.0f}/{b['p99']:.0f} · {d['p50']:.0f}/{d['p99']:.0f} · "
            f"{f['p50']:.0f}/{f['p99']:.0f}")
        ratio = d["p99"] / b["p99"]
        row(f"{tag}: client write p99 during / before", rate, f"{ratio:.2f}",
            "<= 1.5" if targets else "(info)", ratio <= 1.5 if targets else None)
        st = r["by_stage"]
        row(f"{tag}: client write p50 / p99 (ms) during, by the migration's stage then", rate,
            " · ".join(f"{k} {pct(st[k], 50):.0f}/{pct(st[k], 99):.0f} ({len(st[k])})"
                       for k in ("copy", "catch-up", "waves") if st.get(k)))
        sp = r["split"]
        row(f"{tag}: client write, mean ms in router calls + writing to the owners (of which "
            "in the engines' calls: source + target) of all, by stage", rate, " · ".join(
                f"{k} {np.mean([x[0] for x in sp[k]]):.0f}+{np.mean([x[1] for x in sp[k]]):.0f}"
                f" ({np.mean([x[4] for x in sp[k]]):.0f} + {np.mean([x[5] for x in sp[k]]):.0f})"
                f" of {np.mean([x[3] for x in sp[k]]):.0f}"
                for k in ("before", "copy", "catch-up", "waves") if sp.get(k)))
        row(f"{tag}: client search p99 (ms) before · during · after (20/s)", rate,
            f"{b['read_p99']:.0f} · {d['read_p99']:.0f} · {f['read_p99']:.0f}")
        row(f"{tag}: client errors (units failed: {len(r['failed'])})", rate,
            str(len(r["errors"])), "0" if targets else "(info)",
            not r["errors"] and not r["failed"] if targets else None)
        for e in r["errors"][:3]:
            print("    client error:", e[:300])
        for u in r["failed"]:
            print("    unit failed:", u[:300])

    work = Path(tempfile.mkdtemp(prefix="rm-live-"))
    stamp = dt.datetime.now().strftime("%H%M%S")
    try:
        lance_source(work / "pristine", a.points, DIM, a.tenants)
        if not a.no_source_index:  # what an application that upserts by id would have
            import lancedb
            from lancedb.index import BTree

            lancedb.connect(str(work / "pristine")).open_table("src").create_index(
                "id", config=BTree())
        lsrc = {"kind": "lancedb", "uri": str(work / "src"), "table": "src"}

        def once(mid: str, want: float, control_s: float | None = None,
                 reads: float | None = None,
                 times: tuple[float, float, float] = periods) -> dict[str, Any]:
            for d in ("src", "target", "state"):  # every run starts from the same source
                shutil.rmtree(work / d, ignore_errors=True)
            shutil.copytree(work / "pristine", work / "src")
            return live_run(mid, lsrc, work, a.tenants, a.writers, want, a.batch, times,
                            control_s, a.source_compact_s, a.reads if reads is None else reads,
                            id_space)

        def paired(mid: str, want: float) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
            """``repeat`` migration runs, each followed at once by its control run of the
            same length: the machine's drift over minutes then hits both alike, and each
            pair gives its own during / control ratio."""
            runs, controls, ratios = [], [], []
            for k in range(a.repeat):
                runs.append(once(f"{mid}-{k}", want))
                print(f"LanceDB, {want} writes/s, no migration (control {k + 1}/{a.repeat})",
                      flush=True)
                controls.append(once(f"{mid}-c{k}", want, control_s=runs[-1]["run_s"]))
                ratios.append(runs[-1]["periods"]["during"]["p99"]
                              / controls[-1]["periods"]["during"]["p99"])
            return pooled(runs), pooled(controls), ratios

        def lag_rows(tag: str, r: dict, rate: str, targets: bool) -> None:
            ages = r["ages"]
            row(f"{tag}: catch-up lag, age of oldest waiting change p50 / p99 / max (s; "
                f"{len(ages)} samples of catching_up/ready units)", rate,
                f"{pct(ages, 50):.2f} / {pct(ages, 99):.2f} / {max(ages, default=0):.2f}",
                "p99 <= 1 s" if targets else "(info)", pct(ages, 99) <= 1.0 if targets else None)
            for phase, pa_ in r["ages_by_phase"].items():
                row(f"{tag}: catch-up lag while {phase} p50 / p99 (s; {len(pa_)} samples)",
                    rate, f"{pct(pa_, 50):.2f} / {pct(pa_, 99):.2f}")
            row(f"{tag}: catch-up lag p50 / p99 (s) by the migration's stage then (samples)",
                rate, " · ".join(f"{k} {pct(v, 50):.2f}/{pct(v, 99):.2f} ({len(v)})"
                                 for k, v in r["ages_by_stage"].items() if v))
            row(f"{tag}: waiting changes per unit p50 / p99 / max (entries)", rate,
                f"{pct(r['lags'], 50):.0f} / {pct(r['lags'], 99):.0f} / "
                f"{max(r['lags'], default=0)}")

        for want in (int(x) for x in a.rates.split(",")):
            print(f"LanceDB -> LanceDB, {want} writes/s", flush=True)
            # The lag run has writers only: 20 exact searches/s over both unindexed tables take
            # most of a 2-core machine. The same run with them follows, for information.
            if want == 500:
                r, c, ratios = paired(f"live-l{want}-{stamp}", want)
            else:
                r = once(f"live-l{want}-{stamp}", want, reads=0.0, times=lag_periods)
            tag, rate = f"L→L @{want}/s", achieved(r, want)
            if want == 500:
                common(tag, r, rate, targets=True)
                during, ctl = r["periods"]["during"], c["periods"]["during"]
                row(f"{tag} control: same traffic and duration, no migration: client write "
                    "p50 / p99 (ms) in the 'during' window", achieved(c, want),
                    f"{ctl['p50']:.0f} / {ctl['p99']:.0f}")
                row(f"{tag}: client write p99 during / control (the migration's own cost; "
                    "per pair, in run order)", rate, f"{during['p99'] / ctl['p99']:.2f} ("
                    + ", ".join(f"{x:.2f}" for x in ratios) + ")", "(info)")
                row(f"{tag} control: client write p99 in the 'during' window / 'before' (no "
                    "migration: how far the workload alone drifts)", achieved(c, want),
                    f"{ctl['p99'] / c['periods']['before']['p99']:.2f}", "(info)")
            else:
                tag = f"L→L @{want}/s, writes only"
                lag_rows(tag, r, rate, targets=True)
                common(tag, r, rate, targets=False)
                if a.reads:
                    print(f"LanceDB -> LanceDB, {want} writes/s and {a.reads:.0f} searches/s",
                          flush=True)
                    r2 = once(f"live-r{want}-{stamp}", want, times=lag_periods)
                    tag2 = f"L→L @{want}/s with {a.reads:.0f} searches/s"
                    lag_rows(tag2, r2, achieved(r2, want), targets=False)
                    fz = r2["freeze"]
                    row(f"{tag2}: units moved, freeze p99 (ms)", achieved(r2, want),
                        f"{r2['moved']}/{r2['units']}, {pct(fz, 99):.0f}")
            row(f"{tag}: run_migration seconds (traffic 'during')", rate, f"{r['run_s']:.1f}")
            comp = r["source_compactions"]
            row(f"{tag}: the application's compactions of its source, done / conflicted", rate,
                f"{comp.count('ok')} / {comp.count('conflict')}")
        if a.qdrant:
            print("Qdrant local -> LanceDB, 500 writes/s (info)", flush=True)
            qpath = work / "qdrant"
            seed_qdrant(str(qpath), "docs", a.points, a.tenants, DIM)
            for d in ("target", "state"):
                shutil.rmtree(work / d, ignore_errors=True)
            qsrc = {"kind": "qdrant", "path": str(qpath), "collection": "docs"}
            r = live_run(f"live-q500-{stamp}", qsrc, work, a.tenants, a.writers, 500, a.batch,
                         periods, id_space=id_space)
            common("Q→L @500/s (info)", r, achieved(r, 500), targets=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = md_table(("Measurement", "Client write rate (achieved)", "Value", "Target",
                      "Result"), rows)
    cmd = ("python bench/live.py " + " ".join(sys.argv[1:])).strip()
    text = (f"## Live\n\n`{cmd}` on {dt.date.today().isoformat()}; {a.points:,} points, "
            f"{a.tenants} tenant units, dim {DIM}.\n\nMachine: {machine()}.\n\n{table}\n\n"
            f"The 500 writes/s case runs {a.repeat} times, each run followed at once by its "
            "control run of the same length (so the machine's drift over minutes hits both "
            "alike, and each pair gives its own during / control ratio), every run from a "
            "copy of the same pristine source; the samples of the runs are pooled (a p99 of "
            "one run rests on about 70 writes). Each run: run_migration (2 workers, copy "
            + (f"at most {a.copy_rate:,.0f} points/s" if a.copy_rate else "unthrottled")
            + ", waves [1, \"25%\", \"100%\"], pause_s 2, "
            "max_freeze_ms 500, max_attempts 2 to bound the run) with client traffic "
            f"through RoutedCollection from one process: {a.writers} writer threads, each with "
            "its own client ("
            + ("upserts of new and existing ids spread over every tenant, so the collection "
               "grows" if not a.steady else "upserts of ids drawn at random from the seeded ids, "
               "spread over every tenant: updates, and re-inserts of deleted ids, so the "
               "collection keeps its size and 'before' and 'during' see the same table")
            + "; a repeated id kept once per upsert, 10% single-id deletes) and one reader (exact "
            f"top-10 search, {a.reads:.0f}/s; the 1,000 writes/s lag run has no reader, and "
            "the same run with it follows for information). The LanceDB source "
            + ("has no index" if a.no_source_index else "has a BTree index on `id`, as a "
               "table that takes upserts by id would")
            + (f" and the application compacts it every {a.source_compact_s:.0f} s, as a "
               "LanceDB table under steady writes needs (in the control run too)"
               if a.source_compact_s > 0 else ", never compacted")
            + f". Client traffic starts once the router is up and the migration waits: "
            f"{a.warmup:.0f} s of warm-up, not measured (the source reaches its steady state of "
            f"fragments and compactions; a fresh table is faster than any later one), then "
            f"'before' for {a.before:.0f} s; 'during' lasts until run_migration returns, "
            f"'after' {a.after:.0f} s more. The 1,000 writes/s lag runs have no warm-up and "
            f"{lag_periods[1]:.0f} s of 'before': they measure catch-up at a write rate the "
            "clients must first reach (chosen while the bench's source compaction was "
            "broken: a source grown for 35 s was then too slow for one client process to "
            "keep that rate; not measured again since). Freeze per unit is "
            "the longest freeze of the unit (router) or of its successful cutover (report); "
            "with one value per unit, p99 is about the maximum. Catch-up lag is the age of the "
            "oldest change waiting in a unit's log: the router's entry count, sampled every "
            "100 ms while the unit is catching_up or ready, mapped to a time through the "
            "client's record of the ids it wrote to that unit (the log is in write order). "
            "L→L latencies compare the same engine before and during; Q→L rows (--qdrant) "
            "are informational (Qdrant local mode, one process behind its hosting actor).\n")
    publish("Live", text, a.write, "live_inprocess")
    return 0


if __name__ == "__main__":
    run_script(main)
