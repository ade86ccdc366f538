"""The guarantee the way users run it: every part its own process.

A Ray head from `ray start --head` (token auth, tests/raycluster.py); `ray-migrate run CONFIG
--address` as one subprocess; the application (tests/mp_workload.py) as another, writing one
point per call through ``RoutedCollection.connect`` from as soon as the router exists, through
copy, catch-up and every cutover wave, until 3 s after the run has ended; in one case an
operator's `ray-migrate rollback` of the canary inside its rollback window. Then source and
target are read with the engines' own clients and compared with the writer's acknowledged
operations replayed in order (one sequential writer: the final state of every id is known).

What is asserted, per case: no client error; no acknowledged write lost (missing, or another
value than its last acknowledged one: an older one is "stale"); no deleted point back; no id
stored twice in one store or visible on both sides (a copy left behind under another unit);
vectors bit for bit and payloads equal; every search hit alive and in the tenant searched; every
unit done on the target (but the one rolled back, shown rolled back).

Run it alone: ``pytest tests/test_multiprocess.py`` (``-k l2q`` for one case, ``-s`` for the
summaries). ``RM_MP_REPEAT=5`` runs every selected case five times in a row; ``RM_MP_RATE``
caps the writer's ops/s (default 40). A failed run's ops log and process outputs are kept under
``RM_MP_LOGS`` (default ``$TMPDIR/rm-mp-logs``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from raycluster import Head, ray_head, stop_group
from truth import Expected, Findings, compare, read_side, replay_ops

N_POINTS = 4000
DIM = 16
TENANTS = [f"tenant-{i}" for i in range(6)]
FIRST_NEW_ID = 1_000_000
WRITE_AFTER_RUN_S = 3.0
RUN_TIMEOUT_S = 300.0
WRITER_EXIT_TIMEOUT_S = 120.0
RELEASE_WAIT_S = 10.0  # a hosted target (LanceDB -> Qdrant) may rightly stay up
POLL_S = 0.2
RATE = float(os.environ.get("RM_MP_RATE", "40"))  # writer ops/s at most
REPEAT = int(os.environ.get("RM_MP_REPEAT", "1"))
HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).parent / "ray-migrate")
LOGS = Path(os.environ.get("RM_MP_LOGS", Path(tempfile.gettempdir()) / "rm-mp-logs"))


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # "qdrant" or "lancedb"; the target is the other engine
    tenant_moves: bool = False
    rollback: bool = False


CASES = [
    Case("q2l-rollback", "qdrant", rollback=True),
    Case("l2q", "lancedb"),
    Case("q2l-moves", "qdrant", tenant_moves=True),
]


# --- the source, seeded with the engine's own client --------------------------------------
def seed(kind: str, path: Path) -> dict[int, tuple[bytes, dict[str, Any]]]:
    """4,000 points over 6 tenants of uneven sizes; returns id -> (vector bytes, payload).
    Dot product: Qdrant stores cosine vectors normalized, so they would not read back bit for
    bit."""
    rng = np.random.default_rng(2024)
    vecs = rng.standard_normal((N_POINTS, DIM)).astype(np.float32)
    weights = 1.0 / np.arange(1, len(TENANTS) + 1)
    tenants = rng.choice(TENANTS, size=N_POINTS, p=weights / weights.sum())
    payloads = [{"tenant": str(tenants[i]), "title": f"seed {i}", "rank": i}
                for i in range(N_POINTS)]
    if kind == "qdrant":
        from qdrant_client import QdrantClient, models

        client = QdrantClient(path=str(path))
        client.create_collection("docs", vectors_config=models.VectorParams(
            size=DIM, distance=models.Distance.DOT))
        for start in range(0, N_POINTS, 500):
            end = min(start + 500, N_POINTS)
            client.upsert("docs", models.Batch(ids=list(range(start, end)),
                                               vectors=vecs[start:end].tolist(),
                                               payloads=payloads[start:end]))
        client.close()
    else:
        import lancedb

        lancedb.connect(str(path)).create_table("docs", pa.table({
            "id": pa.array(range(N_POINTS), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM),
            "tenant": [p["tenant"] for p in payloads],
            "title": [p["title"] for p in payloads],
            "rank": pa.array([p["rank"] for p in payloads], pa.int64())}))
    return {i: (vecs[i].tobytes(), payloads[i]) for i in range(N_POINTS)}


def endpoint(kind: str, path: Path) -> dict[str, Any]:
    if kind == "qdrant":
        return {"kind": "qdrant", "collection": "docs", "path": str(path)}
    return {"kind": "lancedb", "table": "docs", "uri": str(path), "distance": "dot"}


def write_config(tmp: Path, mid: str, case: Case) -> Path:
    target = "lancedb" if case.source == "qdrant" else "qdrant"
    cfg = {
        "migration_id": mid,
        "source": endpoint(case.source, tmp / "source"),
        "target": endpoint(target, tmp / "target"),
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 200, "workers": 2},
        "cutover": {"mode": "auto", "waves": [1, "50%", "100%"], "pause_s": 3},
        "rollback": {"window_s": 8 if case.rollback else 0},
        "state_uri": str(tmp / "state"),
    }
    path = tmp / "migration.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


# --- the processes --------------------------------------------------------------------------
@dataclass
class Outcome:
    """What the processes did: exit codes, the phase timeline, the rollback, timings."""

    run_rc: int | None = None
    run_s: float = 0.0
    writer_rc: int | None = None
    rollback_unit: str | None = None
    rollback_rc: int | None = None
    rollback_out: str = ""
    run_ended_at: float = 0.0  # time.time()
    timeline: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    released_s: dict[str, float | str] = field(default_factory=dict)


def routing(tmp: Path, mid: str) -> dict[str, Any] | None:
    """routing.json under state_uri (written whole and renamed: never half a document)."""
    try:
        return json.loads((tmp / "state" / mid / "routing.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def spawn(args: list[str], head: Head, tmp: Path, name: str, **kw: Any) -> subprocess.Popen:
    """A process of its own group joined to ``head``, its output in ``<tmp>/<name>.out``."""
    with open(tmp / f"{name}.out", "wb") as out:  # the child keeps its own copy of the fd
        return subprocess.Popen(args, env=head.env, cwd=tmp, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, **kw)


def tail(tmp: Path, name: str, chars: int = 3000) -> str:
    try:
        return (tmp / f"{name}.out").read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def drive(head: Head, tmp: Path, mid: str, case: Case, cfg: Path,
          initial: dict[int, tuple[bytes, dict]]) -> Outcome:
    """Start the run and the writer; roll one unit back once it is on the target (rollback
    case); when the run ends tell the writer to write 3 s more; wait for both."""
    out = Outcome()
    (tmp / "initial.json").write_text(json.dumps({
        "ids": {str(i): p["tenant"] for i, (_, p) in initial.items()},
        "tenants": TENANTS, "first_new_id": FIRST_NEW_ID}))
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["run"] = spawn([CLI, "run", str(cfg), "--address", head.address], head, tmp,
                             "run")
        procs["writer"] = spawn(
            [sys.executable, str(HERE / "mp_workload.py"), "--address", head.address,
             "--migration-id", mid, "--initial", str(tmp / "initial.json"),
             "--ops-log", str(tmp / "ops.jsonl"), "--dim", str(DIM), "--max-rate", str(RATE)]
            + (["--tenant-moves"] if case.tenant_moves else []),
            head, tmp, "writer", stdin=subprocess.PIPE)
        watch_run(head, tmp, mid, case, cfg, procs, out)
        writer = procs["writer"]
        assert writer.stdin is not None
        writer.stdin.write(f"stop-after {WRITE_AFTER_RUN_S}\n".encode())
        writer.stdin.flush()
        if "rollback" in procs:
            out.rollback_rc = procs["rollback"].wait(timeout=RUN_TIMEOUT_S)
            out.rollback_out = tail(tmp, "rollback")
        out.writer_rc = writer.wait(timeout=WRITER_EXIT_TIMEOUT_S)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop_group(proc, term_wait_s=5)
    return out


def watch_run(head: Head, tmp: Path, mid: str, case: Case, cfg: Path,
              procs: dict[str, subprocess.Popen], out: Outcome) -> None:
    """Until `ray-migrate run` ends: follow the phases in routing.json, and in the rollback
    case start `ray-migrate rollback` of the first unit on the target (the canary), whose
    rollback window is open from its cutover on."""
    run, t0 = procs["run"], time.monotonic()
    while run.poll() is None:
        if time.monotonic() - t0 > RUN_TIMEOUT_S:
            pytest.fail(f"`ray-migrate run` did not end within {RUN_TIMEOUT_S:.0f}s; its "
                        f"output ({tmp / 'run.out'}):\n{tail(tmp, 'run')}")
        table = routing(tmp, mid)
        if table is not None:
            phases = {u: r["phase"] for u, r in table["units"].items()}
            if not out.timeline or out.timeline[-1][1] != phases:
                out.timeline.append((time.time(), phases))
            on_target = sorted(u for u, p in phases.items() if p == "target")
            if case.rollback and "rollback" not in procs and on_target:
                out.rollback_unit = on_target[0]
                procs["rollback"] = spawn([CLI, "rollback", str(cfg), "--units", on_target[0],
                                           "--address", head.address], head, tmp, "rollback")
        time.sleep(POLL_S)  # polling the state files for a phase, not a wait for time
    out.run_rc, out.run_s, out.run_ended_at = run.returncode, time.monotonic() - t0, time.time()


def wait_released(path: Path, bound_s: float) -> float | None:
    """Seconds until a Qdrant client can open ``path`` (local mode admits one process), or
    None if it cannot within ``bound_s``."""
    from qdrant_client import QdrantClient

    t0 = time.monotonic()
    while True:
        try:
            QdrantClient(path=str(path)).close()
            return time.monotonic() - t0
        except RuntimeError:  # "already accessed by another instance"
            if time.monotonic() - t0 > bound_s:
                return None
            time.sleep(POLL_S)


def status(cfg: Path, head: Head) -> dict[str, dict[str, Any]]:
    """`ray-migrate status --json`: unit -> its row (phase, owner, ...)."""
    res = subprocess.run([CLI, "status", str(cfg), "--json"], env=head.env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, f"status failed: {res.stdout}\n{res.stderr}"
    return {row["unit"]: row for row in json.loads(res.stdout)["units"]}


# --- the test --------------------------------------------------------------------------------
@pytest.mark.parametrize("run_no", range(REPEAT), ids=lambda n: f"run{n}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_multiprocess_migration(case: Case, run_no: int, tmp_path: Path) -> None:
    mid = f"mp-{case.name}-{run_no}"
    # pytest keeps only its last few temp dirs: a failure's files go where they stay.
    logs = LOGS / f"{mid}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    passed = False
    try:
        report, bad = run_case(case, mid, tmp_path, logs)
        print(report)
        passed = not bad
        if bad:
            pytest.fail("; ".join(bad) + "\n" + report, pytrace=False)
    finally:
        if not passed:
            keep_logs(tmp_path, logs)


def run_case(case: Case, mid: str, tmp: Path, logs: Path) -> tuple[str, list[str]]:
    """Seed, run every process, read both stores back: (the summary, what went wrong)."""
    initial = seed(case.source, tmp / "source")
    cfg = write_config(tmp, mid, case)
    kinds = {"source": case.source, "target": "lancedb" if case.source == "qdrant" else "qdrant"}
    with ray_head(tmp, num_cpus=4) as head:
        out = drive(head, tmp, mid, case, cfg, initial)
        release(head, tmp, kinds, out)
        units = status(cfg, head)
    owners = {u: row["owner"] for u, row in units.items()}
    exp = replay_ops(tmp / "ops.jsonl", initial, out.run_ended_at)
    sides = {side: read_side(kind, tmp / side) for side, kind in kinds.items()}
    findings = compare(exp, sides, owners)
    report = summarize(case, mid, logs, out, exp, findings, units)
    (tmp / "summary.txt").write_text(report + "\n")
    return report, problems(case, out, exp, findings, units)


def keep_logs(tmp: Path, logs: Path) -> None:
    """Copy the small files of a failed run (ops log, process outputs, config, summary)."""
    import shutil

    logs.mkdir(parents=True, exist_ok=True)
    for name in ("ops.jsonl", "run.out", "writer.out", "rollback.out", "migration.yaml",
                 "summary.txt", "initial.json", "ray-start.log"):
        if (tmp / name).exists():
            shutil.copy(tmp / name, logs / name)


def release(head: Head, tmp: Path, kinds: dict[str, str], out: Outcome) -> None:
    """Wait (bounded) until every Qdrant folder can be opened, as after any run; if a hosted
    store still holds one, stop the cluster, which lets it go."""
    folders = [side for side, kind in kinds.items() if kind == "qdrant"]
    for side in folders:
        took = wait_released(tmp / side, RELEASE_WAIT_S)
        out.released_s[side] = f"not within {RELEASE_WAIT_S:.0f}" if took is None \
            else round(took, 1)
    if all(isinstance(v, float) for v in out.released_s.values()):
        return
    head.stop()
    for side in folders:
        took = wait_released(tmp / side, RELEASE_WAIT_S)
        assert took is not None, f"{tmp / side} is still locked after the cluster stopped"
        out.released_s[f"{side} after the cluster stopped"] = round(took, 1)


def summarize(case: Case, mid: str, logs: Path, out: Outcome, exp: Expected,
              f: Findings, units: dict[str, dict]) -> str:
    during_copy = _ops_while(exp, out, "copying")
    lines = [
        f"== {mid}: run exit {out.run_rc} after {out.run_s:.0f}s, writer exit "
        f"{out.writer_rc}; on failure the ops log and outputs are kept in {logs}",
        f"writer: connected after {exp.connected.get('after_s')}s, {exp.ops} writes "
        f"({exp.acked} acknowledged, {exp.refused} refused, {during_copy} while a unit copied, "
        f"{exp.after_run_ops} after the run ended), {exp.searches} searches; "
        f"client errors {len(exp.errors)}, bad search hits {len(exp.bad_hits)}",
        f"hosted Qdrant released after the writer ended, in s: {out.released_s or 'n/a'}",
        "units: " + ", ".join(f"{u} {r['phase']}/{r['owner']}" for u, r in sorted(units.items())),
        "findings: " + (", ".join(f"{k} {v}" for k, v in sorted(f.counts.items())) or "none")
        + f" ({f.unknown} ids unknown after a failed op, not compared)",
    ]
    if case.rollback:
        last = (out.rollback_out.strip().splitlines() or [""])[-1]
        lines.append(f"rollback of {out.rollback_unit}: exit {out.rollback_rc}: {last}")
    for kind, examples in sorted(f.examples.items()):
        lines += [f"  {kind}:"] + [f"    {e}" for e in examples]
    if exp.errors:
        lines += ["  client errors (first few):"] + [f"    {e}" for e in exp.errors[:5]]
    if exp.bad_hits:
        lines += ["  bad search hits:"] + [f"    {e}" for e in exp.bad_hits[:5]]
    return "\n".join(lines)


def _ops_while(exp: Expected, out: Outcome, phase: str) -> int:
    """Writes begun while some unit was in ``phase`` (as seen by polling routing.json)."""
    spans, start = [], None
    for t, phases in out.timeline:
        if phase in phases.values() and start is None:
            start = t
        elif phase not in phases.values() and start is not None:
            spans.append((start, t))
            start = None
    if start is not None:
        spans.append((start, out.run_ended_at))
    return sum(any(a <= t < b for a, b in spans) for t in exp.op_times)


def problems(case: Case, out: Outcome, exp: Expected, f: Findings, units: dict[str, dict]
             ) -> list[str]:
    """Every broken promise (the summary shows examples of each)."""
    bad = []
    if out.writer_rc != 0:
        bad.append(f"the writer exited {out.writer_rc}")
    if exp.acked == 0 or exp.after_run_ops == 0:
        bad.append("the writer wrote nothing (or nothing after the run)")
    if exp.errors:
        bad.append(f"{len(exp.errors)} client errors")
    if exp.bad_hits:
        bad.append(f"{len(exp.bad_hits)} search hits dead or in another tenant")
    if f.counts:
        bad.append("the stores differ from the acknowledged writes: " +
                   ", ".join(f"{k} {v}" for k, v in sorted(f.counts.items())))
    others = dict(units)
    if case.rollback:
        row = others.pop(out.rollback_unit, None) if out.rollback_unit else None
        if out.rollback_rc != 0:
            bad.append(f"`ray-migrate rollback` exited {out.rollback_rc}")
        if row is None or (row["phase"], row["owner"]) != ("rolled_back", "source"):
            bad.append(f"unit {out.rollback_unit} is not shown rolled back: {row}")
        if out.run_rc not in (0, 1):
            bad.append(f"`ray-migrate run` crashed: exit {out.run_rc}")
    elif out.run_rc != 0:
        bad.append(f"`ray-migrate run` exited {out.run_rc}")
    left = {u: (r["phase"], r["owner"]) for u, r in others.items()
            if (r["phase"], r["owner"]) != ("done", "target")}
    if left:
        bad.append(f"units not done on the target: {left}")
    return bad
