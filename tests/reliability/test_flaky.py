"""Transient errors and slow calls in both engines, and one unit that cannot be read.

The retry policy (``ray_migrate.retry``) is tested with an injected sleep and random source:
bounded attempts, waits jittered within their bounds, capped. ``RetryingBackend`` (what
``open_backend`` returns) retries a write whose reply was lost and resumes a broken scan from
its cursor. Then a live run the way users run it (tests/livecase.py): Qdrant -> LanceDB with
``tests/reliability/flaky_backend.py`` around both engines in every process (driver, workers,
the writer's client) through the product's hook ``RAY_MIGRATE_BACKEND_WRAPPER``: 5% of calls
fail (half of the failed writes after committing), 5% are slow, and every scan of one tenant
raises a TerminalError. The run exits 1 with that unit failed (reason in `status` and the
report), every other unit done, and nothing lost, stale, resurrected or duplicated; the
application sees no error.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest
from flaky_backend import FlakyBackend, counts, env
from livecase import Case, Judged, LiveRun, judged_or_fail, seeded_head, write_config

from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.backends.retrying import RetryingBackend
from ray_migrate.config import LanceEndpoint
from ray_migrate.errors import TerminalError, TransientError
from ray_migrate.retry import BACKEND, RetryPolicy, with_retries
from ray_migrate.units import UnitSpec


class Failing:
    """Raises ``errors`` in turn, then returns "ok"; counts its calls."""

    def __init__(self, *errors: Exception):
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


# --- the policy ---------------------------------------------------------------------------
def test_retries_are_bounded_and_the_last_error_is_raised() -> None:
    sleeps: list[float] = []
    fn = Failing(*[TransientError(f"blip {i}") for i in range(10)])
    with pytest.raises(TransientError, match="blip 3"):
        RetryPolicy(attempts=4, first_s=0.1, max_s=1.0).call(fn, "x", sleep=sleeps.append)
    assert fn.calls == 4 and len(sleeps) == 3


def test_a_transient_error_is_retried_and_a_terminal_one_is_not() -> None:
    sleeps: list[float] = []
    fn = Failing(TransientError("a"), TransientError("b"))
    assert BACKEND.call(fn, "x", sleep=sleeps.append) == "ok" and fn.calls == 3
    fn = Failing(TerminalError("disk full"))
    with pytest.raises(TerminalError):
        BACKEND.call(fn, "x", sleep=sleeps.append)
    assert fn.calls == 1 and len(sleeps) == 2


def test_waits_grow_exponentially_jittered_within_bounds_and_capped() -> None:
    policy = RetryPolicy(attempts=12, first_s=0.1, max_s=2.0)
    sleeps: list[float] = []
    with pytest.raises(TransientError):
        policy.call(Failing(*[TransientError("x")] * 12), "x", sleep=sleeps.append,
                    rng=random.Random(3))
    assert len(sleeps) == 11
    for n, wait in enumerate(sleeps, start=1):
        cap = min(2.0, 0.1 * 2 ** (n - 1))
        assert cap / 2 <= wait < cap, (n, wait, cap)
    assert max(sleeps) < 2.0 and len(set(sleeps)) == len(sleeps), "no jitter"
    assert sum(sleeps) <= policy.longest_wait_s()
    assert policy.delay(10_000) < 2.0  # no overflow far out


def test_with_retries_keeps_its_meaning_attempts_after_the_first_call() -> None:
    sleeps: list[float] = []
    fn = Failing(*[TransientError("x")] * 9)
    with pytest.raises(TransientError):
        with_retries(fn, attempts=3, backoff_s=0.5, what="x", sleep=sleeps.append)
    assert fn.calls == 4 and all(0.25 <= s < 2.0 for s in sleeps)


def test_the_backend_bound_is_short() -> None:
    """A client write that meets only errors fails after at most this much waiting."""
    assert BACKEND.attempts >= 4 and BACKEND.longest_wait_s() <= 2.0


# --- the backend wrapper ------------------------------------------------------------------
def _lance(tmp_path: Path, n: int = 50) -> LanceBackend:
    import lancedb
    import numpy as np

    vecs = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    lancedb.connect(str(tmp_path)).create_table("docs", pa.table({
        "id": pa.array(range(n), pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 4),
        "tenant": ["a"] * n}))
    return LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path), table="docs"))


class LosesReplies(FlakyBackend):
    """The test's wrapper with every fault switched off but the given calls' replies lost."""

    def __init__(self, real, lose: dict[str, int], tmp_path: Path, monkeypatch):
        monkeypatch.setenv("RM_FLAKY_DIR", str(tmp_path / "faults"))
        monkeypatch.setenv("RM_FLAKY_RATE", "0")
        super().__init__(real, "lance")
        self.lose = dict(lose)

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if name not in self.lose:
            return attr

        def call(*args, **kwargs):
            result = attr(*args, **kwargs)
            if self.lose[name] <= 0:
                return result
            self.lose[name] -= 1
            raise TransientError("reply lost")

        return call


def test_a_write_whose_reply_was_lost_is_retried_and_stored_once(tmp_path, monkeypatch):
    real = _lance(tmp_path)
    lossy = LosesReplies(real, {"upsert": 2}, tmp_path, monkeypatch)
    backend = RetryingBackend(lossy, sleep=lambda s: None)
    batch = real.fetch([1, 2])
    backend.upsert(batch)
    assert lossy.lose["upsert"] == 0
    ids = [i for b, _ in real.scan(UnitSpec("all", "all"), 100) for i in b["id"].to_pylist()]
    assert sorted(ids) == list(range(50))


def test_a_broken_scan_goes_on_from_its_last_cursor(tmp_path, monkeypatch):
    monkeypatch.setenv("RM_FLAKY_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv("RM_FLAKY_RATE", "0.3")
    flaky = FlakyBackend(_lance(tmp_path), "lance")
    # Dice of their own: the process's (seeded with its pid) gave no scan fault in 11 pages
    # now and then (0.7**11, 2%), and the test failed on its check that a fault fired.
    flaky.faults.rng = random.Random("a broken scan")
    backend = RetryingBackend(flaky, policy=RetryPolicy(50, 0.0, 0.0), sleep=lambda s: None)
    ids = [i for b, _ in backend.scan(UnitSpec("all", "all"), 5) for i in b["id"].to_pylist()]
    assert ids == list(range(50))  # each once, in order
    assert counts(tmp_path / "faults")[("transient", "scan")] > 0


def test_failing_writes_alternate_between_a_lost_reply_and_a_plain_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("RM_FLAKY_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv("RM_FLAKY_RATE", "1.0")
    real = _lance(tmp_path)
    flaky = FlakyBackend(real, "lance")
    batch = real.fetch([1, 2])
    for _ in range(3):
        with pytest.raises(TransientError):
            flaky.delete([1])
        assert real.fetch([1]).num_rows == 0  # the first and third committed
        real.upsert(batch)
        with pytest.raises(TransientError):
            flaky.delete([1])
        assert real.fetch([1]).num_rows == 1  # the second did not
    seen = counts(tmp_path / "faults")
    assert seen[("lost_reply", "delete")] == 3
    assert seen[("transient", "delete")] == 3


def test_the_hook_wraps_every_opened_backend_inside_the_retries(tmp_path, monkeypatch):
    from ray_migrate.backends import WRAPPER_ENV, open_backend
    from ray_migrate.errors import ConfigError

    _lance(tmp_path)
    ep = LanceEndpoint(kind="lancedb", uri=str(tmp_path), table="docs")
    monkeypatch.setenv("RM_FLAKY_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv(WRAPPER_ENV, "flaky_backend:wrap")
    backend = open_backend(ep)
    assert isinstance(backend, RetryingBackend) and isinstance(backend.inner, FlakyBackend)
    assert backend.count(UnitSpec("all", "all")) == 50
    monkeypatch.setenv(WRAPPER_ENV, "no_such_module_here:wrap")
    with pytest.raises(ConfigError, match=WRAPPER_ENV):
        open_backend(ep)


# --- live ---------------------------------------------------------------------------------
FAILING = "tenant-2"
CASE = Case("flaky-q2l", "qdrant", n_points=2000,
            config={"cutover": {"pause_s": 1}, "copy": {"batch_size": 100}})


def test_a_live_run_through_flaky_engines(tmp_path: Path) -> None:
    mid = "flaky-q2l"
    faults = tmp_path / "faults"
    cfg = write_config(tmp_path, mid, CASE)
    with seeded_head(tmp_path, CASE.source, CASE.n_points, num_cpus=4,
                     env=env(faults, terminal=FAILING)) as (head, initial):
        live = LiveRun(head, tmp_path, mid, CASE, cfg, initial)
        live.drive()
        judged_or_fail(live, run_rc=1, extra=lambda j: one_unit_failed(live, j, faults))


def one_unit_failed(live: LiveRun, j: Judged, faults: Path) -> list[str]:
    """The faults fired; the failing tenant's unit alone failed, with its reason in `status`
    and the report; every other unit is done."""
    bad = []
    seen = counts(faults)
    kinds = {kind for kind, _ in seen}
    for kind in ("transient", "lost_reply", "slow", "terminal"):
        if kind not in kinds:
            bad.append(f"no {kind} fault was injected: {dict(seen)}")
    print("injected:", dict(sorted(seen.items())))
    unit = f"tenant={FAILING}"
    row = j.units.get(unit, {})
    if row.get("phase") != "failed" or "injected" not in (row.get("last_error") or ""):
        bad.append(f"`status` does not show {unit} failed with its reason: {row}")
    others = {u: (r["phase"], r["owner"]) for u, r in j.units.items() if u != unit
              and (r["phase"], r["owner"]) != ("done", "target")}
    if others:
        bad.append(f"other units not done on the target: {others}")
    report = json.loads((live.tmp / "state" / live.mid / "report.json").read_text())
    rows = {r["unit_id"]: r for r in report["units"]}
    failed = {u for u, r in rows.items() if r["status"] == "failed"}
    if failed != {unit} or "injected" not in (rows[unit].get("error") or ""):
        bad.append(f"the report's failed units are {failed}, not only {unit} with its "
                   f"reason: {rows.get(unit)}")
    return bad
