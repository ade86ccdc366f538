"""Catch-up: bring the other side up to date with the ids the change log names.

The log holds ids, not values. Each id is re-read from the side that owns the unit and upserted
on the other side, or deleted there when the owner no longer has it. So applying a change twice,
out of order or after a later copy batch is harmless: the last application always writes the
owner's current value. The same code syncs a cut-over unit back to the source (rollback window)
and repairs ids that a diff found.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ray_migrate.backends.base import Backend
from ray_migrate.router import RouterHandle
from ray_migrate.schema import ID
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

BATCH_IDS = 2000


def apply_ids(ids: Sequence[Any], owner: Backend, other: Backend, transform: Transform,
              seen: list[tuple[list[Any], pa.Table]] | None = None) -> tuple[int, int]:
    """Make ``other`` hold what ``owner`` holds for these ids. Returns (upserted, deleted).
    ``seen`` collects each read of the owner, (ids asked, rows found): a cutover confirms
    against them."""
    upserted = deleted = 0
    for i in range(0, len(ids), BATCH_IDS):
        chunk = list(ids[i:i + BATCH_IDS])
        rows = owner.fetch(chunk)
        if seen is not None:
            seen.append((chunk, rows))
        present = set(rows.column(ID).to_pylist())
        if rows.num_rows:
            other.upsert(transform.apply(rows))
            upserted += rows.num_rows
        gone = [pid for pid in chunk if pid not in present]
        if gone:
            other.delete(gone)
            deleted += len(gone)
    return upserted, deleted


@dataclass
class UnitSync:
    """One direction of one unit: forward (source to target) or back (target to source)."""

    unit: UnitSpec
    router: RouterHandle
    owner: Backend
    other: Backend
    transform: Transform
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    seen: list[tuple[list[Any], pa.Table]] | None = None  # when a list: the owner reads

    def step(self, limit: int = 10_000) -> tuple[list[Any], int]:
        """Apply one slice of the log; returns the ids applied and the lag left."""
        uid = self.unit.unit_id
        ids, seq = self.router.call("take_changes", uid, limit, self.holder)
        if not ids:  # nothing settled to apply, or another applier holds the log
            return [], self.router.call("unit", uid)["lag"]
        try:
            apply_ids(ids, self.owner, self.other, self.transform, self.seen)
        except BaseException:
            self.router.call("ack_changes", uid, 0, self.holder)  # let go, acking nothing
            raise
        return ids, self.router.call("ack_changes", uid, seq, self.holder)

    def until(self, lag: int, timeout_s: float, limit: int = 10_000) -> tuple[int, set[Any]]:
        """Step until at most ``lag`` changes wait or time is up. While none is ready to apply
        (their writes are still under way, or another applier holds the log) it polls.
        Returns (lag, ids applied)."""
        deadline = time.monotonic() + timeout_s
        applied: set[Any] = set()
        while True:
            ids, left = self.step(limit)
            applied.update(ids)
            if left <= lag or time.monotonic() >= deadline:
                return left, applied
            if not ids:
                time.sleep(0.005)
                if time.monotonic() >= deadline:
                    return left, applied
