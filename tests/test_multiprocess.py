"""The guarantee the way users run it: every part its own process.

A Ray head from `ray start --head` (token auth, tests/raycluster.py); `ray-migrate run CONFIG
--address` as one subprocess; the application (tests/mp_workload.py) as another, writing one
point per call through ``RoutedCollection.connect`` from as soon as the router exists, through
copy, catch-up and every cutover wave, until 2 s after the run has ended; in one case an
operator's `ray-migrate rollback` of the canary inside its rollback window. Then source and
target are read with the engines' own clients and compared with the writer's acknowledged
operations replayed in order (one sequential writer: the final state of every id is known).

What is asserted, per case: no client error; no acknowledged write lost (missing, or another
value than its last acknowledged one: an older one is "stale"); no deleted point back; no id
stored twice in one store or visible on both sides (a copy left behind under another unit);
vectors bit for bit and payloads equal; every search hit alive and in the tenant searched; every
unit done on the target (but the one rolled back, shown rolled back).

The harness (processes, replay, judgement) is tests/livecase.py. Run it alone: ``pytest
tests/test_multiprocess.py`` (``-k l2q`` for one case, ``-s`` for the summaries). ``RM_MP_REPEAT=5`` runs every selected case five times in a row; ``RM_MP_RATE``
caps the writer's ops/s (default 40). A failed run's ops log and process outputs are kept under
``RM_MP_LOGS`` (default ``$TMPDIR/rm-mp-logs``). The rollback case's first run is the
session's fixture ``q2l_rollback_run`` (tests/conftest.py), whose report folder
tests/observe/test_report.py reads too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from livecase import (
    ROLLBACK_CASE,
    Case,
    LiveRun,
    judged_or_fail,
    rollback_canary,
    seeded_head,
    write_config,
)

REPEAT = int(os.environ.get("RM_MP_REPEAT", "1"))
CASES = [
    ROLLBACK_CASE,
    # The copy's adaptive throttle on, with a ceiling every window is above: each copy batch
    # is followed by a pause while the writer writes, and nothing acknowledged may be lost.
    # 2000 points: ten batches of 200, each paused (4000 took ~16 s of copy, mostly pauses).
    Case("l2q", "lancedb", n_points=2000,
         config={"copy": {"throttle": {"max_client_p99_ms": 0.01, "max_pause_s": 0.5}}}),
    Case("q2l-moves", "qdrant", tenant_moves=True),
    # Both owners LanceDB, a writer of mostly updates in their tenant: its upserts update in
    # place without a look-up (P2b); those that move a point, insert or re-insert one find
    # it by an update that did not replace every row, and look up.
    Case("l2l-moves", "lancedb", tenant_moves=True, target_kind="lancedb",
         writer=("--mix", "updates")),
]


@pytest.mark.parametrize("run_no", range(REPEAT), ids=lambda n: f"run{n}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_multiprocess_migration(case: Case, run_no: int, tmp_path: Path,
                                request: pytest.FixtureRequest) -> None:
    if case is ROLLBACK_CASE and run_no == 0:
        request.getfixturevalue("q2l_rollback_run").passed_or_fail()
        return
    mid = f"mp-{case.name}-{run_no}"
    cfg = write_config(tmp_path, mid, case)
    with seeded_head(tmp_path, case.source, case.n_points, num_cpus=4) as (head, initial):
        live = LiveRun(head, tmp_path, mid, case, cfg, initial)
        live.drive(rollback_canary if case.rollback else None)
        judged_or_fail(live, extra=lambda _: in_place_used(tmp_path, case))


def in_place_used(tmp: Path, case: Case) -> list[str]:
    """With LanceDB on both sides, the writer's upserts took both paths of P2b: some updated
    in place with no look-up, some found a row unreplaced and looked up."""
    if (case.source, case.target) != ("lancedb", "lancedb"):
        return []
    with open(tmp / "ops.jsonl") as f:
        stopped = [d for d in map(json.loads, f) if d.get("kind") == "stopped"]
    counts = stopped[-1]["in_place"] if stopped else None
    if not counts or not counts["replaced"] or not counts["missed"]:
        return [f"updates in place: {counts} (expected some replaced and some missed)"]
    return []
