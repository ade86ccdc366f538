"""The run's report folder after a live run, every part its own process (tests/livecase.py):
an application writing and searching through ``RoutedCollection`` in its own process, and an
operator's rollback of the canary inside its rollback window. The run is the session's
``q2l_rollback_run`` (tests/conftest.py), which tests/test_multiprocess.py judges too: one
live migration for both.

``report/report.png`` is a real PNG of the plot's size and not blank; ``report/report.json``'s
client series counts what the writer's ops log says it did (per op, between bucket edges the
client had handed in before the report was written), its copy series sums to the points
copied, and every cutover and the rollback appear as events; ``report.md`` names every unit
and embeds the plot; the old ``report.json`` stays where it was."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

COMPLETE_S = 5  # client buckets older than this at the report's end had surely been pushed
EDGE_OPS = 3  # an op logged just before a second's edge may be counted in the next second


def writer_ops(ops_log: Path) -> Counter[tuple[str, int]]:
    """(op, second it began) -> how many, from the writer's ops log."""
    out: Counter[tuple[str, int]] = Counter()
    for line in ops_log.read_text().splitlines():
        doc = json.loads(line)
        if doc.get("phase") == "begin":
            out[(doc["kind"], math.floor(doc["t"]))] += 1
    return out


def test_report_folder_after_a_live_run(q2l_rollback_run: Any) -> None:
    from PIL import Image

    live = q2l_rollback_run.passed_or_fail()
    state = live.tmp / "state" / live.mid
    folder = state / "report"
    assert (state / "report.json").exists(), "the report at the old key is gone"
    doc = json.loads((folder / "report.json").read_text())
    old = json.loads((state / "report.json").read_text())
    assert doc["report"]["units"] == old["units"]

    img = Image.open(io.BytesIO((folder / "report.png").read_bytes()))
    assert img.format == "PNG" and img.size == (1000, 800)
    assert np.asarray(img.convert("L"), dtype=float).std() > 5, "the plot is blank"

    # Client requests: per op, the writer's ops in whole seconds the client had handed in.
    series = doc["client"]["series"]
    assert series, "no client requests in the report"
    lo, hi = series[0]["t"], math.floor(doc["until"]) - COMPLETE_S
    logged = writer_ops(live.tmp / "ops.jsonl")
    for op in ("upsert", "delete", "search"):
        want = sum(n for (kind, t), n in logged.items() if kind == op and lo <= t < hi)
        got = sum(p["ops"].get(op, 0) for p in series if lo <= p["t"] < hi)
        assert want > 0 and abs(got - want) <= EDGE_OPS, (op, got, want)
    assert doc["client"]["totals"]["errors"] == 0
    assert all(p["p95_ms"] is not None and p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
               for p in series)

    # Copy throughput: the series sums to the points this run copied, unit by unit too.
    units = {u["unit_id"]: u for u in doc["report"]["units"]}
    assert sum(p["points"] for p in doc["copy"]) == sum(u["copied_now"] for u in units.values())
    assert doc["copied_by_unit"] == {u: r["copied_now"] for u, r in units.items()
                                     if r["copied_now"]}

    # Events: every unit cut over (with its freeze), the canary's rollback, the waves.
    events = doc["events"]
    cut = {e["unit"]: e for e in events if e["kind"] == "cutover" and e["ok"]}
    assert set(cut) == set(units), (sorted(cut), sorted(units))
    assert all(e["freeze_ms"] is not None for e in cut.values())
    back = [e for e in events if e["kind"] == "rollback" and e["ok"]]
    assert [e["unit"] for e in back] == [live.out.rollback_unit]
    assert back[0]["t"] > cut[live.out.rollback_unit]["t"]
    assert [e["wave"] for e in events if e["kind"] == "wave"] == [1, 2, 3]

    md = (folder / "report.md").read_text()
    assert "](report.png)" in md and all(f"| {u} |" in md for u in units)
    assert "rollback of " + live.out.rollback_unit in md
