"""A live migration the way users run it, every part its own process, and its outcome judged.

A Ray head from `ray start --head` (tests/raycluster.py); `ray-migrate run CONFIG --address` as
one subprocess; the application (tests/mp_workload.py) as another, writing one point per call
through ``RoutedCollection.connect`` from as soon as the router exists, through copy, catch-up
and every cutover wave, until a few seconds after the run has ended. Then source and target are
read with the engines' own clients and compared with the writer's acknowledged operations
replayed in order (tests/truth.py).

``LiveRun`` drives one migration; ``on_poll`` (called with the run and routing.json at every
poll) lets a test act at a phase: roll a unit back, kill a worker, kill the driver and run the
same command again. ``check`` lists every broken promise. tests/test_multiprocess.py and
tests/reliability/ build on it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
WRITE_AFTER_RUN_S = 2.0  # the writer writes this long after the run has ended (~80 ops)
RUN_TIMEOUT_S = 300.0
WRITER_EXIT_TIMEOUT_S = 120.0
RELEASE_WAIT_S = 10.0  # a hosted target (LanceDB -> Qdrant) may rightly stay up
POLL_S = 0.2
ROLLBACK_WINDOW_S = 2.0  # after the operator's rollback has ended (``HELD_RUN``)
RATE = float(os.environ.get("RM_MP_RATE", "40"))  # writer ops/s at most
HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).parent / "ray-migrate")
LOGS = Path(os.environ.get("RM_MP_LOGS", Path(tempfile.gettempdir()) / "rm-mp-logs"))
KEPT = ("ops.jsonl", "migration.yaml", "summary.txt", "initial.json", "ray-start.log")


@dataclass(frozen=True)
class Case:
    """One live migration: the source engine (the target is the other one unless ``config``
    says otherwise), what the writer does, and changes to the default config."""

    name: str
    source: str  # "qdrant" or "lancedb"
    tenant_moves: bool = False
    rollback: bool = False
    config: dict[str, Any] = field(default_factory=dict, hash=False)  # merged over defaults
    n_points: int = N_POINTS
    target_kind: str = ""  # the target engine, if not the other one
    writer: tuple[str, ...] = ()  # more arguments of the writer (tests/mp_workload.py)

    @property
    def target(self) -> str:
        return self.target_kind or ("lancedb" if self.source == "qdrant" else "qdrant")


# An operator rolls the canary back inside its rollback window: run once per session (the
# fixture ``q2l_rollback_run``) for the guarantee and for the run's report folder.
ROLLBACK_CASE = Case("q2l-rollback", "qdrant", rollback=True)


# --- the source, seeded with the engine's own client --------------------------------------
def seed(kind: str, path: Path | str, n: int = N_POINTS, tenant_names: list[str] = TENANTS,
         storage_options: dict[str, str] | None = None
         ) -> dict[int, tuple[bytes, dict[str, Any]]]:
    """``n`` points over the tenants, of uneven sizes; returns id -> (vector bytes, payload).
    Dot product: Qdrant stores cosine vectors normalized, so they would not read back bit for
    bit. ``path`` of a LanceDB source may be an object-store URI (``storage_options``)."""
    rng = np.random.default_rng(2024)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    weights = 1.0 / np.arange(1, len(tenant_names) + 1)
    tenants = rng.choice(tenant_names, size=n, p=weights / weights.sum())
    payloads = [{"tenant": str(tenants[i]), "title": f"seed {i}", "rank": i} for i in range(n)]
    if kind == "qdrant":
        from qdrant_client import QdrantClient, models

        client = QdrantClient(path=str(path))
        client.create_collection("docs", vectors_config=models.VectorParams(
            size=DIM, distance=models.Distance.DOT))
        for start in range(0, n, 500):
            end = min(start + 500, n)
            client.upsert("docs", models.Batch(ids=list(range(start, end)),
                                               vectors=vecs[start:end].tolist(),
                                               payloads=payloads[start:end]))
        client.close()
    else:
        import lancedb

        db = lancedb.connect(str(path), storage_options=storage_options)
        db.create_table("docs", pa.table({
            "id": pa.array(range(n), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM),
            "tenant": [p["tenant"] for p in payloads],
            "title": [p["title"] for p in payloads],
            "rank": pa.array([p["rank"] for p in payloads], pa.int64())}))
    return {i: (vecs[i].tobytes(), payloads[i]) for i in range(n)}


@contextlib.contextmanager
def seeded_head(tmp: Path, kind: str, n: int = N_POINTS, **head_kw: Any
                ) -> Iterator[tuple[Head, dict[int, tuple[bytes, dict[str, Any]]]]]:
    """``ray_head(tmp, **head_kw)`` and ``seed(kind, tmp / "source", n)``, the source seeded
    in a thread while `ray start` (processes of its own) boots: (the head, what ``seed``
    returns). Seeding a Qdrant folder costs about 1 s per 1,100 points, a head 5-10 s."""
    with ThreadPoolExecutor(1, thread_name_prefix="seed") as pool:
        seeding = pool.submit(seed, kind, tmp / "source", n)
        with ray_head(tmp, **head_kw) as head:
            yield head, seeding.result()


def endpoint(kind: str, path: Path) -> dict[str, Any]:
    if kind == "qdrant":
        return {"kind": "qdrant", "collection": "docs", "path": str(path)}
    return {"kind": "lancedb", "table": "docs", "uri": str(path), "distance": "dot"}


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, mapping by mapping."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_config(tmp: Path, mid: str, case: Case) -> Path:
    cfg = merged({
        "migration_id": mid,
        "source": endpoint(case.source, tmp / "source"),
        "target": endpoint(case.target, tmp / "target"),
        "units": {"by": "tenant", "field": "tenant"},
        "copy": {"batch_size": 200, "workers": 2},
        "cutover": {"mode": "auto", "waves": [1, "50%", "100%"], "pause_s": 1},
        # The window is held open until the operator's `ray-migrate rollback` has ended
        # (``HELD_RUN``): a fixed one had to outlast it on a loaded machine (14 s once), and
        # was waited out whole.
        "rollback": {"window_s": ROLLBACK_WINDOW_S if case.rollback else 0},
        "state_uri": str(tmp / "state"),
    }, case.config)
    path = tmp / "migration.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


# --- the processes --------------------------------------------------------------------------
# `ray-migrate run` (``cli.main``) whose rollback window begins only once the file argv[1] is
# gone: until then its units stay on the target, synced back to the source, as in a longer
# window (the pattern of tests/test_drivers.py). A run of a rollback case is started so.
HELD_RUN = """
import sys, time
from pathlib import Path
from ray_migrate import cli, driver

hold, window = Path(sys.argv[1]), driver.hold_rollback_window

def held(m):
    while hold.exists():
        time.sleep(0.1)
    window(m)

driver.hold_rollback_window = held
sys.exit(cli.main(["run", *sys.argv[2:]]))
"""


@dataclass
class Outcome:
    """What the processes did: exit codes, the phase timeline, the rollback, timings."""

    run_rc: int | None = None
    run_rcs: list[int] = field(default_factory=list)  # every `run` started, in order
    run_s: float = 0.0
    writer_rc: int | None = None
    rollback_unit: str | None = None
    rollback_rc: int | None = None
    rollback_out: str = ""
    run_ended_at: float = 0.0  # time.time()
    timeline: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    released_s: dict[str, float | str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a test's on_poll did, for the summary


def routing(tmp: Path, mid: str) -> dict[str, Any] | None:
    """routing.json under state_uri (written whole and renamed: never half a document)."""
    try:
        return json.loads((tmp / "state" / mid / "routing.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def tail(tmp: Path, name: str, chars: int = 3000) -> str:
    try:
        return (tmp / f"{name}.out").read_text(errors="replace")[-chars:]
    except OSError:
        return ""


OnPoll = Callable[["LiveRun", dict[str, Any] | None], None]


class LiveRun:
    """One migration driven as users run it: ``ray-migrate run`` and the writer as processes
    joined to ``head``; every process's output in ``<tmp>/<name>.out``."""

    def __init__(self, head: Head, tmp: Path, mid: str, case: Case, cfg: Path,
                 initial: dict[int, tuple[bytes, dict]], writer_args: tuple[str, ...] = (),
                 run_args: tuple[str, ...] = ()):
        self.head, self.tmp, self.mid, self.case, self.cfg = head, tmp, mid, case, cfg
        self.initial, self.writer_args, self.run_args = initial, writer_args, run_args
        self.procs: dict[str, subprocess.Popen] = {}
        self.out = Outcome()
        self.outputs: list[str] = []
        # `ray-migrate run` killed by SIGKILL from inside (a fail point in the driver) is
        # started again this many times, as an operator would run the same command again.
        self.reruns_after_kill = 0

    def spawn(self, args: list[str], name: str, **kw: Any) -> subprocess.Popen:
        """A process of its own group joined to the head, its output in ``<name>.out``."""
        self.outputs.append(f"{name}.out")
        with open(self.tmp / f"{name}.out", "wb") as out:  # the child keeps its own fd
            proc = subprocess.Popen(args, env=self.head.env, cwd=self.tmp, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs[name] = proc
        return proc

    def cli(self, verb: str, *args: str, name: str | None = None) -> subprocess.Popen:
        """``ray-migrate VERB CONFIG ... --address`` as its own process."""
        return self.spawn([CLI, verb, str(self.cfg), *args, "--address", self.head.address],
                          name or verb)

    def start_run(self) -> None:
        """`ray-migrate run` (again, after a killed one: output ``run-2.out`` and so on); for
        a rollback case, its window held open until the rollback has ended (``HELD_RUN``)."""
        n = len(self.out.run_rcs) + ("run" in self.procs)
        name = "run" if n == 0 else f"run-{n + 1}"
        if not self.case.rollback:
            self.procs["run"] = self.cli("run", *self.run_args, name=name)
            return
        self.hold.touch()
        self.procs["run"] = self.spawn(
            [sys.executable, "-c", HELD_RUN, str(self.hold), str(self.cfg), *self.run_args,
             "--address", self.head.address], name)

    @property
    def hold(self) -> Path:
        return self.tmp / "hold-rollback-window"

    def kill_run(self) -> int:
        """SIGKILL the running `ray-migrate run` (its process group); its exit code."""
        proc = self.procs.pop("run")
        stop_group(proc, term_wait_s=0)
        self.out.run_rcs.append(proc.wait(timeout=30))
        return self.out.run_rcs[-1]

    def drive(self, on_poll: OnPoll | None = None) -> Outcome:
        """Start the run and the writer; at every poll call ``on_poll``; when the run ends tell
        the writer to write a few seconds more; wait for every process."""
        (self.tmp / "initial.json").write_text(json.dumps({
            "ids": {str(i): p["tenant"] for i, (_, p) in self.initial.items()},
            "tenants": TENANTS, "first_new_id": FIRST_NEW_ID}))
        try:
            self.start_run()
            writer = self.spawn(
                [sys.executable, str(HERE / "mp_workload.py"), "--address", self.head.address,
                 "--migration-id", self.mid, "--initial", str(self.tmp / "initial.json"),
                 "--ops-log", str(self.tmp / "ops.jsonl"), "--dim", str(DIM),
                 "--max-rate", str(RATE), *self.case.writer, *self.writer_args]
                + (["--tenant-moves"] if self.case.tenant_moves else []),
                "writer", stdin=subprocess.PIPE)
            self._watch(on_poll)
            assert writer.stdin is not None
            writer.stdin.write(f"stop-after {WRITE_AFTER_RUN_S}\n".encode())
            writer.stdin.flush()
            if "rollback" in self.procs:
                self.out.rollback_rc = self.procs["rollback"].wait(timeout=RUN_TIMEOUT_S)
                self.out.rollback_out = tail(self.tmp, "rollback")
            self.out.writer_rc = writer.wait(timeout=WRITER_EXIT_TIMEOUT_S)
        finally:
            for proc in self.procs.values():
                if proc.poll() is None:
                    stop_group(proc, term_wait_s=5)
        return self.out

    def _running(self) -> bool:
        """Whether `ray-migrate run` runs; one that died of SIGKILL is started again while
        ``reruns_after_kill`` allows (its exit code goes to ``run_rcs``)."""
        run = self.procs["run"]
        if run.poll() is None:
            return True
        if run.returncode != -signal.SIGKILL or self.reruns_after_kill <= 0:
            return False
        self.reruns_after_kill -= 1
        self.out.run_rcs.append(self.procs.pop("run").returncode)
        self.out.notes.append(f"`ray-migrate run` was killed (exit {run.returncode}); "
                              "the same command runs again")
        self.start_run()
        return True

    def _watch(self, on_poll: OnPoll | None) -> None:
        """Until `ray-migrate run` ends (the last one started): follow the phases in
        routing.json and let ``on_poll`` act."""
        t0 = time.monotonic()
        while self._running():
            if time.monotonic() - t0 > RUN_TIMEOUT_S:
                pytest.fail(f"`ray-migrate run` did not end within {RUN_TIMEOUT_S:.0f}s; its "
                            f"output ({self.tmp / 'run.out'}):\n{tail(self.tmp, 'run')}")
            table = routing(self.tmp, self.mid)
            if table is not None:
                phases = {u: r["phase"] for u, r in table["units"].items()}
                if not self.out.timeline or self.out.timeline[-1][1] != phases:
                    self.out.timeline.append((time.time(), phases))
            if on_poll is not None:
                on_poll(self, table)
            if "rollback" in self.procs and self.procs["rollback"].poll() is not None:
                self.hold.unlink(missing_ok=True)  # the rollback ended: the window runs out
            time.sleep(POLL_S)  # polling the state files for a phase, not a wait for time
        run = self.procs["run"]
        self.out.run_rcs.append(run.returncode)
        self.out.run_rc, self.out.run_s = run.returncode, time.monotonic() - t0
        self.out.run_ended_at = time.time()


def rollback_canary(live: LiveRun, table: dict[str, Any] | None) -> None:
    """on_poll: start `ray-migrate rollback` of the first unit on the target (the canary),
    whose rollback window is open from its cutover on."""
    if table is None or "rollback" in live.procs:
        return
    on_target = sorted(u for u, r in table["units"].items() if r["phase"] == "target")
    if on_target:
        live.out.rollback_unit = on_target[0]
        live.cli("rollback", "--units", on_target[0])


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


def release(head: Head, tmp: Path, case: Case, out: Outcome) -> None:
    """Wait (bounded) until every Qdrant folder can be opened, as after any run; if a hosted
    store still holds one, stop the cluster, which lets it go."""
    folders = [side for side, kind in (("source", case.source), ("target", case.target))
               if kind == "qdrant"]
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


@dataclass
class Judged:
    """A finished live run read back: the expected state, the findings, the units."""

    exp: Expected
    findings: Findings
    units: dict[str, dict[str, Any]]


def judge(live: LiveRun) -> Judged:
    """Release the stores, read `status`, replay the ops log, read both sides with the
    engines' own clients and compare."""
    release(live.head, live.tmp, live.case, live.out)
    units = status(live.cfg, live.head)
    owners = {u: row["owner"] for u, row in units.items()}
    exp = replay_ops(live.tmp / "ops.jsonl", live.initial, live.out.run_ended_at)
    sides = {side: read_side(kind, live.tmp / side)
             for side, kind in (("source", live.case.source), ("target", live.case.target))}
    return Judged(exp, compare(exp, sides, owners), units)


def summarize(live: LiveRun, j: Judged, logs: Path) -> str:
    out, exp, f = live.out, j.exp, j.findings
    lines = [
        f"== {live.mid}: run exits {out.run_rcs} after {out.run_s:.0f}s (last run), writer "
        f"exit {out.writer_rc}; on failure the ops log and outputs are kept in {logs}",
        f"writer: connected after {exp.connected.get('after_s')}s, {exp.ops} writes "
        f"({exp.acked} acknowledged, {exp.refused} refused, {_ops_while(exp, out, 'copying')} "
        f"while a unit copied, {exp.after_run_ops} after the run ended), {exp.searches} "
        f"searches; client errors {len(exp.errors)}, bad search hits {len(exp.bad_hits)}",
        f"hosted Qdrant released after the writer ended, in s: {out.released_s or 'n/a'}",
        "units: " + ", ".join(f"{u} {r['phase']}/{r['owner']}" for u, r in sorted(j.units.items())),
        "findings: " + (", ".join(f"{k} {v}" for k, v in sorted(f.counts.items())) or "none")
        + f" ({f.unknown} ids unknown after a failed op, not compared)",
    ] + [f"note: {n}" for n in out.notes]
    if live.case.rollback:
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


def check(live: LiveRun, j: Judged, run_rc: int = 0) -> list[str]:
    """Every broken promise (the summary shows examples of each). ``run_rc``: the exit code
    the last `ray-migrate run` must have."""
    out, exp, f = live.out, j.exp, j.findings
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
    others = dict(j.units)
    if live.case.rollback:
        row = others.pop(out.rollback_unit, None) if out.rollback_unit else None
        if out.rollback_rc != 0:
            bad.append(f"`ray-migrate rollback` exited {out.rollback_rc}")
        if row is None or (row["phase"], row["owner"]) != ("rolled_back", "source"):
            bad.append(f"unit {out.rollback_unit} is not shown rolled back: {row}")
        if out.run_rc not in (0, 1):
            bad.append(f"`ray-migrate run` crashed: exit {out.run_rc}")
    elif out.run_rc != run_rc:
        bad.append(f"`ray-migrate run` exited {out.run_rc}, not {run_rc}")
    left = {u: (r["phase"], r["owner"]) for u, r in others.items()
            if (r["phase"], r["owner"]) != ("done", "target")}
    if left and run_rc == 0:
        bad.append(f"units not done on the target: {left}")
    return bad


def keep_logs(live: LiveRun, logs: Path) -> None:
    """Copy the small files of a failed run (ops log, process outputs, config, summary)."""
    logs.mkdir(parents=True, exist_ok=True)
    for name in (*KEPT, *live.outputs):
        if (live.tmp / name).exists():
            shutil.copy(live.tmp / name, logs / name)


def logs_dir(mid: str) -> Path:
    """Where a failed run's files go (pytest keeps only its last few temp dirs)."""
    return LOGS / f"{mid}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def judged_or_fail(live: LiveRun, run_rc: int = 0,
                   extra: Callable[[Judged], list[str]] | None = None) -> Judged:
    """Judge the run; print its summary; fail the test, keeping its files, on any problem."""
    logs = logs_dir(live.mid)
    passed = False
    try:
        j = judge(live)
        report = summarize(live, j, logs)
        (live.tmp / "summary.txt").write_text(report + "\n")
        print(report)
        bad = check(live, j, run_rc) + (extra(j) if extra else [])
        passed = not bad
        if bad:
            pytest.fail("; ".join(bad) + "\n" + report, pytrace=False)
        return j
    finally:
        if not passed:
            keep_logs(live, logs)


__all__ = ["CLI", "HELD_RUN", "Case", "DIM", "Judged", "LiveRun", "Outcome", "ROLLBACK_CASE",
           "TENANTS", "check", "judge", "judged_or_fail", "merged", "rollback_canary", "routing",
           "seed", "seeded_head", "status", "tail", "write_config"]
