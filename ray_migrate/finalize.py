"""Finalize the target while the units still verify (issue 15).

Finalize (``Migration.finalize_target``: compaction and the vector index) used to start once
every unit was ready, and each worker verified a unit right after copying it, so the last
copy ended just before the last verify. Now the driver copies every unit first
(``UnitWorker.copy``), then verifies them (``Migration.prepare_units(on_copied=)``), and a
thread here starts finalize as soon as no unit waits for or runs its copy, beside the
verifies. Lance's commits keep that safe (its transaction rules): index creation is
compatible with concurrent appends, merge_insert (Update) and deletes (rows written after the
index was trained are searched flat); a compaction conflicts with an Update or Delete of the
same fragments, which is a retryable conflict on either side: a catch-up write is retried by
``RetryingBackend``, the compaction by ``finalize_target``. Readers (verify) read a pinned
version (MVCC). The early finalize is tried once: if it fails (a catch-up write of live
clients' changes conflicted with the compaction), it runs again after the units, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from ray_migrate.migration import Migration

log = logging.getLogger(__name__)

POLL_S = 0.5
# A unit in one of these phases has its copy ahead of it or under way.
BEFORE_COPY_ENDS = frozenset({"source", "capturing", "copying", "rolled_back", "failed"})


class OverlappedFinalize:
    """``with OverlappedFinalize(m) as fin: m.prepare_units(); fin.prepared()``: finalize
    runs as soon as every copy ended (or the units are prepared), and the block's end waits
    for it."""

    def __init__(self, m: Migration, poll_s: float = POLL_S):
        self.m = m
        self.poll_s = poll_s
        self._prepared = threading.Event()
        self._copied = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._copied_before = False  # a unit had its copy ahead when the run began
        self.looks = 0  # the router was asked this many times (tests wait on it)
        self.prepared_at: float | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="rm-finalize")

    def __enter__(self) -> OverlappedFinalize:
        self._copied_before = bool(self._pending())
        self._thread.start()
        return self

    def copied(self) -> None:
        """Every unit's copy returned: finalize starts now if it has not (a unit that
        failed its copy does not hold it back)."""
        self._copied.set()

    def prepared(self) -> None:
        """Every unit's prepare returned: finalize starts now if it has not."""
        self.prepared_at = time.time()
        self._prepared.set()
        self._copied.set()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if err is not None:
            self._stop.set()  # prepare failed: nothing more starts (a build under way ends)
        self._thread.join()
        if err is not None:
            return
        if self._error is not None:
            log.warning("finalize while the units verified failed (%s: %s); finalizing again "
                        "now that they are ready", type(self._error).__name__, self._error)
            self._finalize(overlapped=False)
        self._record()

    def _pending(self) -> list[str]:
        assert self.m.router is not None
        return [r["unit_id"] for r in self.m.router.call("status")["units"]
                if r["phase"] in BEFORE_COPY_ENDS]

    def _run(self) -> None:
        try:
            while not (self._prepared.is_set() or self._stop.is_set()):
                pending = self._pending()
                self.looks += 1
                if not pending or self._copied.is_set():
                    break
                self._copied.wait(self.poll_s)
            if self._stop.is_set():
                return
            self._finalize(overlapped=not self._prepared.is_set())
        except BaseException as err:  # noqa: BLE001 - handed to the block's end
            self._error = err

    def _finalize(self, overlapped: bool) -> None:
        self._error = None
        self.started_at = time.time()
        log.info("finalizing the target %s", "while the units verify" if overlapped
                 else "after the units")
        # Whether anything was copied now is known only once the units are prepared: before
        # that, a unit with its copy ahead when the run began counts as copied.
        known = self._prepared.is_set() or self._copied.is_set()  # the report has the copies
        # Beside the verifies, catch-up writes may keep conflicting with the compaction: one
        # try, then it runs after the units (followers paused) as before.
        self.m.finalize_target(None if known else int(self._copied_before),
                               attempts=0 if overlapped else 5)
        self.ended_at = time.time()
        self.m.event("finalize", started=self.started_at, seconds=round(
            self.ended_at - self.started_at, 3), overlapped=overlapped)

    def _record(self) -> None:
        """How long finalize ran alongside the units' prepare, in the report."""
        fin = self.m.report.finalize
        if self.started_at is None or self.ended_at is None or "skipped" in fin:
            return
        prepared_at = self.prepared_at or self.ended_at
        fin["seconds"] = round(self.ended_at - self.started_at, 3)
        fin["overlapped_s"] = round(max(0.0, min(self.ended_at, prepared_at) - self.started_at),
                                    3)

