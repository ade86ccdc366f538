"""The copy phase: scan a unit from the source, transform, upsert to the target, checkpoint.

Order of effects per batch: upsert, then save the cursor that follows it. A crash between the
two replays one batch on resume, which the upsert-by-id makes harmless; a crash never skips one.
Reading runs one batch ahead in a thread, so the source scan and the target write overlap.
A unit written as Lance fragments (``lance_direct``) checkpoints the fragments with its cursor
and makes its one commit at the end, once: a commit whose files the table lists is not made
again, so a crash anywhere neither loses nor doubles a point.
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


# Rows per fragment (one write_fragments call, one checkpoint): Lance's writer holds about a
# third of a fragment's bytes until it ends (128-d: +69 MB at 200k rows, +37 MB at 50k).
FILE_ROWS = 50_000
# Rows per scan batch of a unit written as fragments (the configured batch_size caps it): the
# scan, its read-ahead and the prefetch queue hold several batches while the writer holds a
# fragment, so a worker's peak grew with the batch once a unit was long enough to fill that
# pipeline (3M x 128, 375k-row units: 10k rows +90 MB, 2.5k +20 MB over 37.5k-row units), not
# with the collection; the writer takes any batch size, and the copy is as fast.
FILES_SCAN_ROWS = 2_500


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
    merge joins against the whole table), or, LanceDB to LanceDB, the unit is written as
    fragments that one commit adds (``lance_direct``). ``on_batch`` gets the copied count
    per write. ``start_at``: the cursor a scan with no checkpointed cursor starts from (the
    source's listing of the unit, ``Backend.list_units``), else the start. ``gate``: the
    adaptive throttle (``throttle``), asked after each write."""
    start = time.perf_counter()
    ckpt = store.load_checkpoint(unit.unit_id)
    if ckpt and ckpt.get("status") == "copied":
        return CopyResult(unit.unit_id, "skipped", ckpt.get("copied", 0), 0, 0.0)
    state: dict[str, Any] = {"copied": (ckpt or {}).get("copied", 0),
                             "cursor": (ckpt or {}).get("cursor") or start_at, "now": 0,
                             "fragments": (ckpt or {}).get("fragments"),
                             "may_exist": ckpt is not None or not fresh_target}
    direct = _direct(source, target, transform)
    if direct is not None and fresh_target and (ckpt is None or state["fragments"] is not None):
        state["fragments"] = state["fragments"] or []  # this unit goes as fragments
    if ckpt is None:  # marks that writes may begin: a later attempt merges its first write
        _save(store, unit, "copying", None, 0, state["fragments"])
    elif ckpt.get("cursor") is not None:
        log.info("unit %s: resuming after %d points", unit.unit_id, state["copied"])
    run = _Run(unit, source, target, transform, store, cfg, on_batch, fresh_target, state,
               direct, gate)

    # A transient error in the scan breaks its generator; start again from the checkpoint.
    def attempt() -> None:
        if state.setdefault("attempts", 0):  # a failed write may have committed anyway
            state["may_exist"] = True
        state["attempts"] += 1
        run.files() if state["fragments"] is not None else run.batches()

    with_retries(attempt, attempts=cfg.max_retries, backoff_s=cfg.retry_backoff_s,
                 what=f"unit {unit.unit_id}: copy")
    if state["fragments"] is not None:
        run.commit()
    _save(store, unit, "copied", state["cursor"], state["copied"])
    seconds = time.perf_counter() - start
    log.info("unit %s: copied %d points in %.1fs", unit.unit_id, state["now"], seconds)
    return CopyResult(unit.unit_id, "copied", state["copied"], state["now"], seconds)


class _Run:
    """One unit's copy from its checkpoint on: the loops that scan, write and checkpoint."""

    def __init__(self, unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
                 store: StateStore, cfg: CopyConfig, on_batch: Callable[[int], None] | None,
                 fresh_target: bool, state: dict[str, Any], direct: Any,
                 gate: AdaptiveGate | None = None):
        self.unit, self.source, self.target, self.transform = unit, source, target, transform
        self.store, self.cfg, self.on_batch, self.fresh = store, cfg, on_batch, fresh_target
        self.state, self.direct, self.gate = state, direct, gate
        self.write_rows = max(cfg.batch_size, target.capabilities.preferred_write_rows)
        self.throttle = Throttle(cfg.max_points_per_s / max(cfg.workers, 1))
        self.scan = direct.scan if direct is not None else source.scan

    def _retried(self, fn: Callable[[], Any], what: str) -> Any:
        return with_retries(fn, attempts=self.cfg.max_retries,
                            backoff_s=self.cfg.retry_backoff_s,
                            what=f"unit {self.unit.unit_id}: {what}")

    def _done(self, rows: int, cursor: Cursor) -> None:
        """``rows`` more points are written up to ``cursor``: checkpoint, report, throttle."""
        state = self.state
        failpoints.hit("copy.batch_written", unit=self.unit.unit_id)  # not checkpointed
        state["may_exist"] = not self.fresh
        state["copied"] += rows
        state["now"] += rows
        state["cursor"] = cursor
        _save(self.store, self.unit, "copying", cursor, state["copied"], state["fragments"])
        if self.on_batch is not None:
            self.on_batch(state["copied"])
        self.throttle.wait(rows)
        if self.gate is not None:
            self.gate.wait()

    def _rows(self, parts: list[pa.Table]) -> pa.Table:
        if self.direct is not None:
            return self.direct.rows(parts)
        return self.transform.apply(pa.concat_tables(parts) if len(parts) > 1 else parts[0])

    def write(self, parts: list[pa.Table], cursor: Cursor) -> None:
        table = self._rows(parts)
        tries = [0]

        def put() -> None:  # a failed append may have committed: retries merge by id
            tries[0] += 1
            append = not self.state["may_exist"] and tries[0] == 1
            if self.direct is not None:
                self.direct.write(table, append)
            else:
                (self.target.append if append else self.target.upsert)(table)

        self._retried(put, f"write of {table.num_rows} points")
        self._done(table.num_rows, cursor)

    def batches(self) -> None:
        parts: list[pa.Table] = []
        cursor: Cursor | None = None
        for batch, cursor in prefetch(self.scan(self.unit, self.cfg.batch_size,
                                                self.state["cursor"])):
            if batch.num_rows:
                parts.append(batch)
            if sum(p.num_rows for p in parts) >= self.write_rows:
                self.write(parts, cursor)
                parts = []
        if parts and cursor is not None:
            self.write(parts, cursor)

    def files(self) -> None:
        """Fragments of about FILE_ROWS rows, streamed from the scan in batches of at most
        FILES_SCAN_ROWS (memory stays a few small batches deep), each group checkpointed with
        the fragments written so far."""
        rows = min(self.cfg.batch_size, FILES_SCAN_ROWS)
        it = prefetch(self.scan(self.unit, rows, self.state["cursor"]))
        while True:
            seen: dict[str, Any] = {"rows": 0}

            def group(seen: dict[str, Any] = seen) -> Iterator[pa.Table]:
                for batch, cursor in it:
                    seen["cursor"] = cursor
                    if batch.num_rows:
                        seen["rows"] += batch.num_rows
                        yield self.direct.rows([batch])
                    if seen["rows"] >= FILE_ROWS:
                        return

            frags = self.direct.write_files(group())
            if "cursor" not in seen:
                return
            self.state["fragments"] = self.state["fragments"] + frags
            self._done(seen["rows"], seen["cursor"])

    def commit(self) -> None:
        """The unit's one commit of its fragments; a resumed unit whose commit was made
        finds its files listed and does not commit again."""
        failpoints.hit("copy.files_written", unit=self.unit.unit_id)  # not committed
        made = self._retried(lambda: self.direct.commit_files(self.state["fragments"]),
                             "commit of its fragments")
        log.info("unit %s: %s %d fragments", self.unit.unit_id,
                 "committed" if made else "found committed", len(self.state["fragments"]))
        failpoints.hit("copy.committed", unit=self.unit.unit_id)  # not checkpointed


def _direct(source: Backend, target: Backend, transform: Transform) -> Any:
    """The target's direct way from the source, for an identity transform; none through a
    stand-in that is no Backend (a test's fault wrapper), whose faults it would bypass."""
    if not transform.is_identity or not isinstance(target, Backend) \
            or not isinstance(source, Backend):
        return None
    return target.direct_from(source)


def _save(store: StateStore, unit: UnitSpec, status: str, cursor: Cursor | None,
          copied: int, fragments: list[dict[str, Any]] | None = None) -> None:
    doc = {"unit_id": unit.unit_id, "status": status, "cursor": cursor, "copied": copied,
           "updated_at": time.time()}
    if fragments is not None:  # written, and committed only once the unit is copied
        doc["fragments"] = fragments
    store.save_checkpoint(unit.unit_id, doc)
