"""Shared fixtures: one local Ray cluster for the whole session, temporary stores per test."""

from __future__ import annotations

import os

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
