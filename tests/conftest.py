"""Shared fixtures: one local Ray cluster for the whole session, temporary stores per test."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray workers inherit the environment: let them import the test-only transform functions.
_TESTS = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_TESTS, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        # address="local": always a cluster of its own, never one that `ray start` left on
        # the machine (ray.init would join the newest otherwise).
        ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="ray_migrate",
                 log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@dataclass
class FinishedRun:
    """A live run driven and judged, its head stopped: what tests read afterwards."""

    live: Any  # livecase.LiveRun
    failure: str | None  # why it failed (the judgement's message, a traceback), or None

    def passed_or_fail(self) -> Any:
        """The run, or this test failed with the run's failure (each reader is told)."""
        if self.failure is not None:
            pytest.fail(self.failure, pytrace=False)
        return self.live


@pytest.fixture(scope="session")
def q2l_rollback_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """The live Qdrant -> LanceDB run with an operator's rollback of the canary (every part
    its own process, tests/livecase.py), driven and judged once for the session: one live
    migration costs about a minute. tests/test_multiprocess.py holds it to the guarantee,
    tests/observe/test_report.py reads its report folder. Its head is stopped before."""
    from livecase import ROLLBACK_CASE, LiveRun, judged_or_fail, rollback_canary, seeded_head
    from livecase import write_config as live_config

    tmp, mid = tmp_path_factory.mktemp("q2l-rollback"), "mp-q2l-rollback-0"
    cfg = live_config(tmp, mid, ROLLBACK_CASE)
    with seeded_head(tmp, ROLLBACK_CASE.source, num_cpus=4) as (head, initial):
        live = LiveRun(head, tmp, mid, ROLLBACK_CASE, cfg, initial)
        try:
            live.drive(rollback_canary)
            judged_or_fail(live)
        except pytest.fail.Exception as exc:
            return FinishedRun(live, str(exc))
        except Exception:  # noqa: BLE001 - every test reading the run fails with it
            return FinishedRun(live, traceback.format_exc())
    return FinishedRun(live, None)
