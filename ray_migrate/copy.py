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

from ray_migrate.backends.base import Backend
from ray_migrate.config import CopyConfig
from ray_migrate.retry import with_retries
from ray_migrate.state import StateStore
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


def copy_unit(unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
              store: StateStore, cfg: CopyConfig,
              on_batch: Callable[[int], None] | None = None) -> CopyResult:
    """Copy one unit from its checkpoint on; return when the whole unit is on the target.

    ``on_batch`` is told the unit's copied count after every committed batch."""
    start = time.perf_counter()
    ckpt = store.load_checkpoint(unit.unit_id) or {}
    if ckpt.get("status") == "copied":
        return CopyResult(unit.unit_id, "skipped", ckpt.get("copied", 0), 0, 0.0)
    state = {"copied": ckpt.get("copied", 0), "cursor": ckpt.get("cursor"), "now": 0}
    if state["cursor"] is not None:
        log.info("unit %s: resuming after %d points", unit.unit_id, state["copied"])

    def run_from_checkpoint() -> None:
        for batch, cursor in prefetch(source.scan(unit, cfg.batch_size, state["cursor"])):
            if batch.num_rows:
                with_retries(lambda b=batch: target.upsert(transform.apply(b)),
                             attempts=cfg.max_retries, backoff_s=cfg.retry_backoff_s,
                             what=f"unit {unit.unit_id}: write of {batch.num_rows} points")
            state["copied"] += batch.num_rows
            state["now"] += batch.num_rows
            state["cursor"] = cursor
            store.save_checkpoint(unit.unit_id, {
                "unit_id": unit.unit_id, "status": "copying", "cursor": cursor,
                "copied": state["copied"], "updated_at": time.time()})
            if on_batch is not None:
                on_batch(state["copied"])

    # A transient error in the scan breaks its generator; start again from the checkpoint.
    with_retries(run_from_checkpoint, attempts=cfg.max_retries, backoff_s=cfg.retry_backoff_s,
                 what=f"unit {unit.unit_id}: copy")
    store.save_checkpoint(unit.unit_id, {
        "unit_id": unit.unit_id, "status": "copied", "cursor": state["cursor"],
        "copied": state["copied"], "updated_at": time.time()})
    seconds = time.perf_counter() - start
    log.info("unit %s: copied %d points in %.1fs", unit.unit_id, state["now"], seconds)
    return CopyResult(unit.unit_id, "copied", state["copied"], state["now"], seconds)
