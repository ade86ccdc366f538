"""Injected faults, as wrappers around the real backends: transient errors are retried from the
checkpoint without duplicates; a terminal error stops the unit."""

from __future__ import annotations

import pytest
from truth import read_lance, seed_lance_native

from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.config import CopyConfig, LanceEndpoint, TransformConfig
from ray_migrate.copy import copy_unit
from ray_migrate.errors import TerminalError, TransientError
from ray_migrate.state import StateStore
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec


class Flaky:
    """Delegates to a real backend; raises the given errors on chosen calls of one method."""

    def __init__(self, real, method: str, fail_on: dict[int, Exception]):
        self.real, self.method, self.fail_on, self.calls = real, method, fail_on, 0

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if name != self.method:
            return attr

        def wrapped(*args, **kwargs):
            self.calls += 1
            err = self.fail_on.get(self.calls)
            if err is not None:
                if name in ("append", "upsert"):
                    attr(*args, **kwargs)  # the write commits, then the reply is lost
                raise err
            return attr(*args, **kwargs)

        return wrapped


class FlakyScan(Flaky):
    def __getattr__(self, name):
        if name != "scan":
            return getattr(self.real, name)

        def scan(unit, batch_size, cursor=None):
            for batch, cur in self.real.scan(unit, batch_size, cursor):
                self.calls += 1
                err = self.fail_on.get(self.calls)
                if err is not None:
                    raise err
                yield batch, cur

        return scan


def setup(tmp_path, n=95):
    seed_lance_native(str(tmp_path / "src"), "docs", list(range(n)))
    source = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "src"), table="docs"))
    target = LanceBackend(LanceEndpoint(kind="lancedb", uri=str(tmp_path / "dst"), table="docs"))
    target.create(source.describe())
    store = StateStore(str(tmp_path / "state"), "faults")
    cfg = CopyConfig(batch_size=10, workers=1, max_retries=3, retry_backoff_s=0.0)
    return source, target, store, cfg


def test_transient_write_errors_are_retried_without_duplicates(tmp_path):
    source, target, store, cfg = setup(tmp_path)
    flaky = Flaky(target, "append", {1: TransientError("commit conflict"),
                                     2: TransientError("timeout")})
    unit = UnitSpec("all", "all")
    flaky.capabilities = target.capabilities
    result = copy_unit(unit, source, flaky, Transform(TransformConfig()), store, cfg,
                       fresh_target=True)
    assert result.status == "copied" and result.copied == 95
    found = read_lance(str(tmp_path / "dst"), "docs")  # raises on a duplicate id
    assert sorted(found) == list(range(95))


def test_transient_scan_error_resumes_from_the_checkpoint(tmp_path):
    source, target, store, cfg = setup(tmp_path)
    flaky = FlakyScan(source, "scan", {4: TransientError("connection reset")})
    result = copy_unit(UnitSpec("all", "all"), flaky, target,
                       Transform(TransformConfig()), store, cfg, fresh_target=True)
    assert result.copied == 95
    assert sorted(read_lance(str(tmp_path / "dst"), "docs")) == list(range(95))
    assert flaky.calls > 10, "the scan was started again"


def test_terminal_error_stops_the_unit_and_is_not_retried(tmp_path):
    source, target, store, cfg = setup(tmp_path)
    flaky = Flaky(target, "upsert", {1: TerminalError("disk full")})
    flaky.capabilities = target.capabilities
    with pytest.raises(TerminalError, match="disk full"):
        copy_unit(UnitSpec("all", "all"), source, flaky, Transform(TransformConfig()), store,
                  cfg, fresh_target=False)
    assert flaky.calls == 1
