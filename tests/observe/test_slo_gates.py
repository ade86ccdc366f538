"""SLO-gated waves (``ray_migrate.slo``, ``waves.gate_wave``): the gate arithmetic without Ray,
then a live run whose target is slowed so the canary's p95 breaches ``max_p95_ratio``.

Live: Qdrant -> LanceDB the way users run it (tests/livecase.py), waves [1, "100%"], the
application writing and searching as its own process, and ``slow_target.py`` (installed through
``RAY_MIGRATE_BACKEND_WRAPPER`` in every process) making every search, upsert and delete of the
target sleep 600 ms from the start. After the first wave the canary's p95 on the target is many
times its p95 on the source before: the run rolls the canary back by itself, the second wave
never runs, `run` exits 1, `status` and the report say why, and nothing is lost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from livecase import DIM, TENANTS, Case, Judged, LiveRun, judged_or_fail, seeded_head, write_config
from slow_target import env

from ray_migrate import failpoints
from ray_migrate.client_stats import ClientStats
from ray_migrate.config import GatesConfig, MigrationConfig
from ray_migrate.routing.client_stats import StatsSeries
from ray_migrate.slo import MIN_REQUESTS, P95_FLOOR_MS, WaveSpan, judge, wait_for_buckets

T0 = 1_000_000.0  # wall time of the tests' statistics


# --- the arithmetic, without Ray ---------------------------------------------------------
def series(calls: list[tuple[float, str, str, float, bool]]) -> StatsSeries:
    """A router's series holding these calls: (began, unit, side, ms, error)."""
    stats, s = ClientStats(), StatsSeries(clock=lambda: T0 + 100)
    for began, unit, side, ms, error in calls:
        stats.record("upsert", began, ms, error, side, unit)
    s.add_client("c1", stats.take())
    return s


def window(s: StatsSeries):
    return lambda since, until, units, side: s.window(since, until, units, side)


def steady(unit: str, side: str, start: float, n: int, ms: float, error: bool = False,
           step: float = 0.1):
    """``n`` calls of ``unit`` on ``side``, one every ``step`` s from ``start``."""
    return [(start + i * step, unit, side, ms, error) for i in range(n)]


# The canary ``a`` moved at T0+10..T0+11; the pause (the window judged) is T0+11..T0+14; the
# window before is T0+7..T0+10 (same length).
SPAN = WaveSpan(1, ["a"], T0 + 10, T0 + 11)
UNTIL = T0 + 14


def test_a_moved_unit_slower_than_before_breaches_the_p95_ratio() -> None:
    s = series(steady("a", "source", T0 + 7, 30, 10.0) + steady("a", "target", T0 + 11, 30, 50.0)
               + steady("b", "source", T0 + 7, 70, 10.0))
    v = judge(GatesConfig(max_p95_ratio=2.0), window(s), SPAN, UNTIL)
    assert not v.ok and "max_p95_ratio 2.0" in v.reason and "wave 1" in v.reason
    assert v.measured["p95_before_of"] == "the wave's units"
    assert 4.0 <= v.measured["p95_ratio"] <= 6.0  # 50 ms against 10 ms, within a bin
    ok = judge(GatesConfig(max_p95_ratio=8.0), window(s), SPAN, UNTIL)
    assert ok.ok and not ok.notes


def test_too_few_requests_of_the_moved_units_before_fall_back_to_every_unit() -> None:
    few = steady("a", "source", T0 + 7, MIN_REQUESTS - 1, 1.0)  # fast, but too few to count
    s = series(few + steady("b", "source", T0 + 7, 30, 40.0)
               + steady("a", "target", T0 + 11, 30, 50.0))
    v = judge(GatesConfig(max_p95_ratio=2.0), window(s), SPAN, UNTIL)
    assert v.ok and v.measured["p95_before_of"] == "every unit"
    assert v.measured["requests_before"] == 30 + MIN_REQUESTS - 1


def test_no_traffic_or_too_little_skips_the_checks_with_a_note() -> None:
    v = judge(GatesConfig(max_p95_ratio=2.0, max_error_rate=0.0), window(series([])), SPAN,
              UNTIL)
    assert v.ok and "no client traffic" in v.notes[0]
    s = series(steady("a", "target", T0 + 11, MIN_REQUESTS - 1, 500.0)
               + steady("b", "source", T0 + 11, 20, 1.0))
    v = judge(GatesConfig(max_p95_ratio=2.0), window(s), SPAN, UNTIL)
    assert v.ok and "p95 not checked" in v.notes[0]
    s = series(steady("a", "target", T0 + 11, 20, 500.0))  # nothing at all before the wave
    v = judge(GatesConfig(max_p95_ratio=2.0), window(s), SPAN, UNTIL)
    assert v.ok and "requests on the source" in v.notes[0]


def test_tiny_latencies_count_as_the_floor() -> None:
    s = series(steady("a", "source", T0 + 7, 30, 0.1)
               + steady("a", "target", T0 + 11, 30, P95_FLOOR_MS * 0.9))
    v = judge(GatesConfig(max_p95_ratio=1.5), window(s), SPAN, UNTIL)
    assert v.ok and v.measured["p95_ratio"] == 1.0


def test_the_error_rate_counts_every_op_and_unit_in_the_window_only() -> None:
    calls = (steady("a", "target", T0 + 11, 10, 1.0) + steady("b", "source", T0 + 11, 89, 1.0, step=0.03)
             + [(T0 + 12.5, "b", "source", 1.0, True)]
             + steady("b", "source", T0 + 7, 20, 1.0, error=True))  # before: not counted
    assert max(t for t, *_ in calls) < UNTIL
    s = series(calls)
    v = judge(GatesConfig(max_error_rate=0.02), window(s), SPAN, UNTIL)
    assert v.ok and v.measured["error_rate"] == pytest.approx(0.01)
    v = judge(GatesConfig(max_error_rate=0.005), window(s), SPAN, UNTIL)
    assert not v.ok and "1 of 100 requests" in v.reason and "max_error_rate" in v.reason


def test_the_window_merges_units_and_sides_and_newest_is_the_last_second() -> None:
    s = series(steady("a", "target", T0, 10, 1.0) + steady("b", "target", T0, 10, 100.0)
               + steady("b", "source", T0, 10, 1000.0))
    both = s.window(T0, T0 + 2, ["a", "b"], "target")
    assert both["requests"] == 20 and 80 <= both["p95_ms"] <= 120
    assert s.window(T0, T0 + 2)["requests"] == 30
    assert s.window(T0 + 1, T0 + 2)["requests"] == 0  # one call per 0.1 s: all in T0's second
    assert s.newest() == int(T0) and StatsSeries().newest() is None


def test_shadow_overlap_of_the_moved_units_is_gated_and_shadows_are_no_requests() -> None:
    """Before, ``window`` counted shadow reads as client requests (a failed shadow was a
    client error for max_error_rate); and shadow overlap was not gated."""
    stats, s = ClientStats(), StatsSeries(clock=lambda: T0 + 100)
    for i in range(10):
        stats.record("search", T0 + 11 + i * 0.2, 2.0, False, "target", "a")
        stats.shadow(T0 + 11 + i * 0.2, "target", "a", 2.0, 3.0, 0.6 if i % 2 else None)
    stats.shadow(T0 + 11, "target", "b", 2.0, 3.0, 0.1)  # another unit: not the wave's
    s.add_client("c1", stats.take())
    v = judge(GatesConfig(max_error_rate=0.0, min_shadow_overlap=0.9), window(s), SPAN, UNTIL)
    assert v.measured["requests"] == 10 and v.measured["errors"] == 0
    assert not v.ok and "shadow overlap@k 0.600" in v.reason and "min_shadow_overlap" in v.reason
    assert v.measured["shadow_reads"] == 5
    assert judge(GatesConfig(min_shadow_overlap=0.5), window(s), SPAN, UNTIL).ok
    few = judge(GatesConfig(min_shadow_overlap=0.9), window(s), SPAN, T0 + 11.5)
    assert few.ok and "shadow overlap not checked" in few.notes[0]


def test_min_shadow_overlap_needs_shadow_reads(tmp_path: Path) -> None:
    from ray_migrate.config import parse_config
    from ray_migrate.errors import ConfigError

    raw = {"migration_id": "m", "state_uri": str(tmp_path / "s"),
           "source": {"kind": "lancedb", "uri": str(tmp_path / "a"), "table": "t"},
           "target": {"kind": "lancedb", "uri": str(tmp_path / "b"), "table": "t"},
           "cutover": {"gates": {"min_shadow_overlap": 0.9}}}
    with pytest.raises(ConfigError, match="add reads: {shadow_percent: 10}"):
        parse_config(raw)
    assert parse_config({**raw, "reads": {"shadow_percent": 10}}).cutover.gates \
        .min_shadow_overlap == 0.9


def test_waiting_for_the_push_is_bounded() -> None:
    now = [0.0]
    got: list[float | None] = [None, None, T0 + 3]
    assert wait_for_buckets(lambda: got.pop(0), T0 + 3, clock=lambda: now[0],
                            sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert now[0] == pytest.approx(0.4)
    now[0] = 0.0
    assert not wait_for_buckets(lambda: T0, T0 + 3, clock=lambda: now[0],
                                sleep=lambda s: now.__setitem__(0, now[0] + s), bound_s=2.0)
    assert 2.0 <= now[0] <= 2.3


def test_wave_gates_need_an_invertible_transform(tmp_path: Path) -> None:
    base = {"migration_id": "m", "state_uri": str(tmp_path),
            "source": {"kind": "qdrant", "collection": "c", "path": str(tmp_path / "s")},
            "target": {"kind": "lancedb", "table": "t", "uri": str(tmp_path / "t")},
            "transform": {"drop_fields": ["x"]}}
    MigrationConfig.model_validate(base)
    with pytest.raises(ValueError, match="cutover.gates.*inverse"):
        MigrationConfig.model_validate({**base, "cutover": {"gates": {"max_p95_ratio": 2}}})


# --- live ---------------------------------------------------------------------------------
HERE = Path(__file__).resolve().parent
# Searches of the source took up to 170 ms at p95 on a loaded 2-core machine right after the
# target's finalize: the target's must be well over twice that.
SLOW_MS = 600.0
CANARY = TENANTS[-1]  # the smallest tenant (livecase.seed): the canary
READY = "reader.ready"  # made by the canary's reader once a search has answered
CASE = Case("slo-q2l", "qdrant", n_points=1500, config={
    "cutover": {"waves": [1, "100%"], "pause_s": 5, "max_freeze_ms": 3000,
                "gates": {"max_p95_ratio": 2.0}},
    "copy": {"batch_size": 250}})


def test_a_slow_target_breaches_the_gate_and_the_wave_is_rolled_back(tmp_path: Path) -> None:
    mid = "slo-q2l"
    cfg = write_config(tmp_path, mid, CASE)
    # Wave 1 waits until the canary's reader has had a search answered: on a loaded machine
    # the reader once connected after the canary's pause had begun, and the gate saw 2
    # requests (fewer than it judges) where the test needs a breach.
    held = {"waves.wave": {"action": "wait", "wave": 1, "path": str(tmp_path / READY),
                           "seconds": 120}}
    with seeded_head(tmp_path, CASE.source, CASE.n_points, num_cpus=4,
                     env={**env("target", SLOW_MS), failpoints.ENV: json.dumps(held)}
                     ) as (head, initial):
        live = LiveRun(head, tmp_path, mid, CASE, cfg, initial)
        live.drive(on_poll=start_canary_reader)
        judged_or_fail(live, run_rc=1, extra=lambda j: canary_rolled_back(live, j))
    assert (tmp_path / READY).exists(), "the canary's reader never had a search answered"
    assert "failpoint waves.wave fired" in (tmp_path / "run.out").read_text(errors="replace")


def start_canary_reader(live: LiveRun, table: dict[str, Any] | None) -> None:
    """on_poll: start an application that searches the canary's tenant (the smallest unit,
    which the writer's few calls seldom touch), so its p95 has requests to judge; LiveRun
    stops it at the end."""
    if "reader" not in live.procs:
        live.spawn([sys.executable, str(HERE / "canary_reader.py"), "--address",
                    live.head.address, "--migration-id", live.mid, "--tenant", CANARY,
                    "--log", str(live.tmp / "reader.jsonl"), "--dim", str(DIM),
                    "--ready", str(live.tmp / READY)], "reader")


def canary_rolled_back(live: LiveRun, j: Judged) -> list[str]:
    """The canary alone moved and came back, with the gate's reason in `status` and the
    report; the second wave never ran."""
    bad: list[str] = []
    report = json.loads((live.tmp / "state" / live.mid / "report.json").read_text())
    gates = report.get("gates") or []
    breached = [g for g in gates if not g["ok"]]
    if len(breached) != 1 or breached[0]["wave"] != 1 or len(breached[0]["units"]) != 1:
        return [f"one breach after wave 1 expected, the report has {gates}"]
    canary = breached[0]["units"][0]
    if canary != f"tenant={CANARY}":
        bad.append(f"the canary is {canary}, not tenant={CANARY}: the reader searched another")
    errors = (live.tmp / "reader.jsonl").read_text().count('"kind":"error"')
    if errors:
        bad.append(f"the canary's reader saw {errors} failed searches")
    print("gate:", breached[0]["reason"], breached[0]["measured"])
    row = j.units.get(canary, {})
    why = row.get("last_error") or ""
    if (row.get("phase"), row.get("owner")) != ("rolled_back", "source") \
            or "max_p95_ratio" not in why:
        bad.append(f"`status` does not show {canary} rolled back with the reason: {row}")
    moved = {u: (r["phase"], r["owner"]) for u, r in j.units.items()
             if u != canary and r["owner"] != "source"}
    if moved:
        bad.append(f"units of the second wave moved: {moved}")
    bad += report_says_why(live, report, canary)
    return bad


def report_says_why(live: LiveRun, report: dict[str, Any], canary: str) -> list[str]:
    bad = []
    rows = {r["unit_id"]: r for r in report["units"]}
    if "max_p95_ratio" not in (rows[canary].get("error") or "") \
            or "max_p95_ratio" not in (report.get("stopped") or ""):
        bad.append(f"report.json does not say why: {rows[canary]}, stopped {report.get('stopped')}")
    run_out = (live.tmp / "run.out").read_text(errors="replace")
    if "later waves did not run" not in run_out:
        bad.append("the report table printed by `run` has no line for the breach")
    doc = json.loads((live.tmp / "state" / live.mid / "report" / "report.json").read_text())
    kinds = [(e["kind"], e.get("ok")) for e in doc["events"]]
    if ("gate", False) not in kinds or ("rollback", True) not in kinds:
        bad.append(f"the report's events lack the breach or the rollback: {kinds}")
    return bad
