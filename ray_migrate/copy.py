"""The copy phase: scan a unit from the source, transform, upsert to the target, checkpoint.

Order of effects per batch: upsert, then save the cursor that follows it. A crash between the
two replays one batch on resume, which the upsert-by-id makes harmless; a crash never skips one.
Reading runs one batch ahead in a thread, so the source scan and the target write overlap.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from ray_migrate import failpoints
from ray_migrate.backends.base import Backend, Cursor
from ray_migrate.config import CopyConfig
from ray_migrate.retry import with_retries
from ray_migrate.state import StateStore
from ray_migrate.throttle import AdaptiveGate
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

_END = object()


@dataclass
class CopyResult:
    unit_id: str
    status: str  # copied | skipped
    copied: int  # points written for this unit over every run
    copied_now: int  # points written by this call
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def points_per_s(self) -> float:
        return self.copied_now / self.seconds if self.seconds > 0 else 0.0


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead; errors re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put(err)

    thread = threading.Thread(target=run, daemon=True, name="rm-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class Throttle:
    """Holds a copy to ``rate`` points per second on average (0: no limit): each ``wait(n)``
    after n more points sleeps until the points so far fit the rate since the first call.
    A copy behind schedule is not made up for with a burst beyond one write."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.start: float | None = None
        self.points = 0

    def wait(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        if self.start is None:
            self.start = now
        self.points += n
        due = self.start + self.points / self.rate
        if due > now:
            self.sleep(due - now)
        else:  # behind: start counting again from now
            self.start, self.points = now, 0


def copy_unit(unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
              store: StateStore, cfg: CopyConfig,
              on_batch: Callable[[int], None] | None = None,
              fresh_target: bool = False, start_at: Cursor | None = None,
              gate: AdaptiveGate | None = None) -> CopyResult:
    """Copy one unit from its checkpoint on; return when the whole unit is on the target.

    Scan batches are gathered up to the target's preferred write size, then written and
    checkpointed. ``fresh_target``: the run created the target, so this unit's points can
    only be there if an earlier attempt wrote them; then every write but the first after a
    resume appends instead of merging by id (LanceDB appends in constant time, while its
    merge joins against the whole table). ``on_batch`` gets the copied count per write.
    ``start_at``: the cursor a scan with no checkpointed cursor starts from (the source's listing
    of the unit, ``Backend.list_units``), else the start.
    ``gate``: the adaptive throttle (``throttle``), asked after each write."""
    start = time.perf_counter()
    ckpt = store.load_checkpoint(unit.unit_id)
    if ckpt and ckpt.get("status") == "copied":
        return CopyResult(unit.unit_id, "skipped", ckpt.get("copied", 0), 0, 0.0)
    state: dict[str, Any] = {"copied": (ckpt or {}).get("copied", 0),
                             "cursor": (ckpt or {}).get("cursor") or start_at, "now": 0,
                             "may_exist": ckpt is not None or not fresh_target}
    if ckpt is None:  # marks that writes may begin: a later attempt merges its first write
        _save(store, unit, "copying", None, 0)
    elif ckpt.get("cursor") is not None:
        log.info("unit %s: resuming after %d points", unit.unit_id, state["copied"])
    write_rows = max(cfg.batch_size, target.capabilities.preferred_write_rows)
    throttle = Throttle(cfg.max_points_per_s / max(cfg.workers, 1))

    def write(parts: list[pa.Table], cursor: Cursor) -> None:
        table = transform.apply(pa.concat_tables(parts) if len(parts) > 1 else parts[0])
        tries = [0]

        def put() -> None:  # a failed append may have committed: retries merge by id
            tries[0] += 1
            append = not state["may_exist"] and tries[0] == 1
            (target.append if append else target.upsert)(table)

        with_retries(put, attempts=cfg.max_retries, backoff_s=cfg.retry_backoff_s,
                     what=f"unit {unit.unit_id}: write of {table.num_rows} points")
        failpoints.hit("copy.batch_written", unit=unit.unit_id)  # written, not checkpointed
        state["may_exist"] = not fresh_target
        state["copied"] += table.num_rows
        state["now"] += table.num_rows
        state["cursor"] = cursor
        _save(store, unit, "copying", cursor, state["copied"])
        if on_batch is not None:
            on_batch(state["copied"])
        throttle.wait(table.num_rows)
        if gate is not None:
            gate.wait()

    def run_from_checkpoint() -> None:
        parts: list[pa.Table] = []
        cursor: Cursor | None = None
        for batch, cursor in prefetch(source.scan(unit, cfg.batch_size, state["cursor"])):
            if batch.num_rows:
                parts.append(batch)
            if sum(p.num_rows for p in parts) >= write_rows:
                write(parts, cursor)
                parts = []
        if parts and cursor is not None:
            write(parts, cursor)

    # A transient error in the scan breaks its generator; start again from the checkpoint.
    def attempt() -> None:
        if state.setdefault("attempts", 0):  # a failed write may have committed anyway
            state["may_exist"] = True
        state["attempts"] += 1
        run_from_checkpoint()

    with_retries(attempt, attempts=cfg.max_retries, backoff_s=cfg.retry_backoff_s,
                 what=f"unit {unit.unit_id}: copy")
    _save(store, unit, "copied", state["cursor"], state["copied"])
    seconds = time.perf_counter() - start
    log.info("unit %s: copied %d points in %.1fs", unit.unit_id, state["now"], seconds)
    return CopyResult(unit.unit_id, "copied", state["copied"], state["now"], seconds)


def _save(store: StateStore, unit: UnitSpec, status: str, cursor: Cursor | None,
          copied: int) -> None:
    store.save_checkpoint(unit.unit_id, {"unit_id": unit.unit_id, "status": status,
                                         "cursor": cursor, "copied": copied,
                                         "updated_at": time.time()})
