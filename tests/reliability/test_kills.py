"""Kills (issue 13's fault matrix), each in a live migration run as users run it.

A Ray head, `ray-migrate run` and the application (tests/mp_workload.py, writing through
``RoutedCollection`` the whole time) are separate processes (tests/livecase.py). The fault is
a fail point (ray_migrate/failpoints.py, docs/FAILPOINTS.md) given to every process of the
cluster through RAY_MIGRATE_FAILPOINTS: a SIGKILL of the process that reaches it, at the
moment named, once (a marker file), so the restarted process goes on. Each test asserts that
the fault happened (its marker, the line the fail point logs) and then what the run must keep:
the run ends 0 with every unit done on the target, no acknowledged write lost, no deleted
point back, no id twice, no client error (a client waits, bounded, while a process restarts).

- worker kills, one run: one unit's worker dies in its copy (a batch written, not
  checkpointed), another's in catch-up (a step applied, not acknowledged), another's in its
  verify (mid checksum) and another's inside its freeze (drained, before the flip);
- the router killed twice in one run: at a client's write (its ids logged, the log not yet
  written) and at the first cutover (the owner flipped in memory, routing.json not yet
  written);
- the actor hosting a Qdrant folder (the source, or the target) killed in a copy (its read,
  or its write) and at a client's upsert;
- the driver killed in the middle of a wave; the same command run again finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livecase import Case, LiveRun, judged_or_fail, logs_dir, seeded_head, write_config

from ray_migrate.failpoints import ENV

N = 1500
STALE_FREEZE_MS = 10_000  # the router lifts a freeze this old (freeze_timeout_s)
FAST = {"cutover": {"pause_s": 1}}


def faults(tmp: Path, points: dict[str, Any]) -> tuple[dict[str, str], dict[str, Path]]:
    """(the environment that arms ``points``, name -> marker of each). ``points``: point name ->
    {marker name: spec}; every spec fires once (its marker)."""
    doc: dict[str, list[dict[str, Any]]] = {}
    markers: dict[str, Path] = {}
    for point, specs in points.items():
        for name, spec in specs.items():
            markers.setdefault(name, tmp / f"fired-{name}")
            doc.setdefault(point, []).append({"once": str(markers[name]), **spec})
    return {ENV: json.dumps(doc)}, markers


def logged(live: LiveRun, text: str) -> bool:
    """Whether ``text`` is in a process output of the run or in a log of the cluster."""
    files = [live.tmp / name for name in live.outputs]
    files += Path(live.head.temp_dir, "session_latest", "logs").glob("*")
    return any(text in f.read_text(errors="replace") for f in files if f.is_file())


def assert_fired(live: LiveRun, markers: dict[str, Path], point_of: dict[str, str]) -> None:
    """Every fault happened: its marker exists, its process is gone, and its line is logged."""
    for name, marker in markers.items():
        assert marker.exists(), f"fault {name} never fired ({point_of[name]})"
        pid = json.loads(marker.read_text())["pid"]
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), \
            f"fault {name}: process {pid} still lives"
        assert logged(live, f"failpoint {point_of[name]} fired (kill)"), \
            f"fault {name}: no log line of {point_of[name]}"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def live_run(tmp: Path, mid: str, case: Case, env: dict[str, str],
             rerun: int = 0) -> Iterator[LiveRun]:
    """Seed, run with the faults armed and judge (failing on a broken promise); the run, while
    its cluster (and its logs) are still there."""
    cfg = write_config(tmp, mid, case)
    with seeded_head(tmp, case.source, case.n_points, num_cpus=4, env=env) as (head, initial):
        live = LiveRun(head, tmp, mid, case, cfg, initial)
        live.reruns_after_kill = rerun
        try:
            live.drive()
            judged_or_fail(live)
            yield live
        except BaseException:
            keep_ray_logs(live)
            raise


def keep_ray_logs(live: LiveRun) -> None:
    """The cluster's process logs of a failed run, next to its outputs (the head's temp dir
    goes with the head)."""
    logs = Path(live.head.temp_dir, "session_latest", "logs")
    kept = logs_dir(live.mid) / "ray-logs"
    kept.mkdir(parents=True, exist_ok=True)
    for f in logs.glob("*"):
        if f.is_file() and f.suffix in (".out", ".err", ".log") and f.stat().st_size:
            shutil.copy(f, kept / f.name)


def report_row(live: LiveRun, unit_id: str) -> dict[str, Any]:
    """The unit's row in the run's report (report.json under state_uri)."""
    report = json.loads((live.tmp / "state" / live.mid / "report.json").read_text())
    row = next(r for r in report["units"] if r["unit_id"] == unit_id)
    print(f"{unit_id}: {row}")
    return row


def unit(tenant: int) -> str:
    return f"tenant=tenant-{tenant}"


def test_worker_killed_in_copy_catch_up_verify_and_freeze(tmp_path: Path) -> None:
    """Four units, four phases, one worker SIGKILL each; the worker actors restart (Ray) and
    their tasks run again, each unit from what is durable: the copy from its checkpoint (the
    batch written before the kill is written again, by id), catch-up from the change log
    (entries applied but not acknowledged are applied again), verify from the start, and the
    frozen unit's freeze is lifted and its cutover tried again."""
    env, markers = faults(tmp_path, {
        "copy.batch_written": {"copy": {"action": "kill", "unit": unit(0)}},
        "catchup.applied": {"catchup": {"action": "kill", "unit": unit(1)}},
        "verify.checksum": {"verify": {"action": "kill", "unit": unit(2)}},
        "cutover.no_quiet_switch": {"freeze-forced": {"action": "return", "unit": unit(3)}},
        "cutover.frozen": {"freeze": {"action": "kill", "unit": unit(3)}},
    })
    case = Case("kill-workers", "qdrant", config=FAST, n_points=N)
    with live_run(tmp_path, "kill-workers", case, env) as live:
        frozen = report_row(live, unit(3))
        # The restarted worker lifts the dead switch's freeze and cuts the unit over in the
        # same attempt; before, the freeze lasted until the router's stale-freeze timeout
        # (10 s: every write of the unit waited that long) and the next attempts were refused
        # until the dead switch's reservation lapsed (write_lease_s, 30 s).
        assert frozen["freeze_ms"] < STALE_FREEZE_MS and frozen["cutover_attempts"] == 1, \
            frozen
        assert_fired(live, {k: v for k, v in markers.items() if k != "freeze-forced"}, {
            "copy": "copy.batch_written", "catchup": "catchup.applied",
            "verify": "verify.checksum", "freeze": "cutover.frozen"})


def test_router_killed_before_it_persisted(tmp_path: Path) -> None:
    """The router dies right after a change in memory, before it wrote it: once at a client's
    write (its ids logged, changes.json not written), once at the first cutover of the waves
    (the owner flipped, routing.json not written). It restarts from what it had written: the
    lost log entries make its units diff-and-repair, the lost flip was never answered, so the
    cutover meets a restored router and goes on from there."""
    env, markers = faults(tmp_path, {
        "router.changed": {
            "write": {"action": "kill", "what": "begin_writes", "after": 30},
            "switch": {"action": "kill", "what": "settle", "phase": "switched"},
        },
    })
    # Also the flip after a freeze, whichever way the first cutover switches (one marker).
    doc = json.loads(env[ENV])
    doc["router.changed"].append({"action": "kill", "what": "flip",
                                  "once": str(markers["switch"])})
    env = {ENV: json.dumps(doc)}
    case = Case("kill-router", "qdrant", n_points=N,
                config={**FAST, "cutover": {"pause_s": 1, "write_lease_s": 5}})
    with live_run(tmp_path, "kill-router", case, env) as live:
        assert_fired(live, markers, {"write": "router.changed", "switch": "router.changed"})
        assert logged(live, "router kill-router recovered"), "no restored router logged"


# Where the hosting actor dies, per direction: the copy's read (Qdrant source) or write
# (Qdrant target), and then a client's write through it.
HOST_KILLS = {
    # The second page of the largest unit: its copy reads pages of 200 points, its verify
    # one of 1000.
    "qdrant": {"copy": {"action": "kill", "method": "scan_page", "unit": unit(0), "after": 1},
               "client": {"action": "kill", "method": "upsert", "after": 10}},
    # The copy writes in calls of 128 points (HOSTED_WRITE_ROWS); clients write to the target
    # once their units are on it.
    "lancedb": {"copy": {"action": "kill", "method": "upsert", "after": 2},
                "client": {"action": "kill", "method": "upsert", "after": 40}},
}


@pytest.mark.parametrize("source", ["qdrant", "lancedb"], ids=["q2l", "l2q"])
def test_qdrant_host_killed_mid_copy_and_mid_client_write(tmp_path: Path, source: str) -> None:
    """The actor that hosts the Qdrant folder (the source, or the target) dies twice: in a
    unit's copy, and at a client's upsert. Callers get it again (Ray restarts it; the proxy
    gets or makes it again) and call again: every hosted call is idempotent."""
    env, markers = faults(tmp_path, {"qdrant_host.call": HOST_KILLS[source]})
    case = Case(f"kill-host-{source}", source, config=FAST, n_points=N)
    with live_run(tmp_path, case.name, case, env) as live:
        assert_fired(live, markers, {"copy": "qdrant_host.call", "client": "qdrant_host.call"})
        at = json.loads(markers["copy"].read_text())["at"]
        before = [phases for t, phases in live.out.timeline if t <= at]
        copying = {u for u, p in (before or [{}])[-1].items() if p in ("capturing", "copying")}
        assert copying if source == "lancedb" else unit(0) in copying, \
            f"the copy's kill came when no unit copied: {before[-1:]}"


@pytest.mark.parametrize("source", ["lancedb", "qdrant"], ids=["l2q", "q2l"])
def test_driver_killed_mid_wave_and_run_again(tmp_path: Path, source: str) -> None:
    """`ray-migrate run` dies (SIGKILL) in its second wave, after one unit of the wave was cut
    over and before the next; the same command, run again, takes the dead driver's lease over
    and finishes from the durable state. Both directions: the hosted Qdrant store the dead
    driver held is the target in one, the source in the other."""
    env, markers = faults(tmp_path, {
        "driver.cut": {"driver": {"action": "kill", "after": 1}}})
    case = Case(f"kill-driver-{source}", source, n_points=N,
                config={"cutover": {"pause_s": 1, "waves": [1, "50%", "100%"]}})
    with live_run(tmp_path, case.name, case, env, rerun=1) as live:
        assert live.out.run_rcs == [-9, 0], live.out.run_rcs
        assert_fired(live, markers, {"driver": "driver.cut"})
        assert os.path.exists(live.tmp / "run-2.out")
