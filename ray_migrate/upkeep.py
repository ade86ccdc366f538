"""Upkeep while the migration is live: merge the small fragments that writes pile up in a
LanceDB target, and in a LanceDB source.

Every catch-up step and every client write to a cut-over unit makes a new small LanceDB
fragment in the target, and every client write to a unit still on the source one in the
source; each slows later reads (the clients' tenant look-ups, catch-up's fetches), merges
and so the cutover's drain. While units wait for their waves and during the rollback window,
a thread in the driver merges a side's small fragments whenever
``lance.compact_min_fragments`` have piled up (``lance_upkeep.maintain``; the source only with
``lance.compact_source``, and without removing any of its versions). Never while a cutover is
reserved or frozen, and a cutover waits for a compaction under way (the router's
``begin_upkeep``); a compaction that conflicts with a concurrent write is simply tried again
on the next round (LanceDB's merge_insert retries its own commit when the compaction wins).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

from ray_migrate.backends import Backend, open_backend
from ray_migrate.errors import TransientError
from ray_migrate.migration import Migration

log = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0
UPKEEP_MAX_S = 60.0  # cutovers wait for a compaction at most this long if the driver dies


class LiveUpkeep:
    def __init__(self, m: Migration, every_s: float = CHECK_EVERY_S):
        self.m = m
        self.every_s = every_s
        self.compactions: list[dict[str, Any]] = []
        self.conflicts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rm-upkeep")

    def __enter__(self) -> LiveUpkeep:
        if self._sides():
            self._thread.start()
        return self

    def _sides(self) -> list[str]:
        """The sides kept: a LanceDB target, and a LanceDB source with ``compact_source``."""
        cfg = self.m.cfg
        if not cfg.lance.compact_min_fragments:
            return []
        return [side for side, ep in (("target", cfg.target), ("source", cfg.source))
                if ep.kind == "lancedb" and (side == "target" or cfg.lance.compact_source)]

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.compactions or self.conflicts:
            log.info("live upkeep: %d compactions, %d deferred by a concurrent write",
                     len(self.compactions), self.conflicts)

    def _loop(self) -> None:
        m = self.m
        assert m.plan is not None and m.router is not None
        infos = {"source": m.plan.source_info, "target": m.plan.target_info}
        eps = {"source": m.cfg.source, "target": m.cfg.target}
        backends = {side: open_backend(eps[side], payload_schema=infos[side].payload_schema)
                    for side in self._sides()}
        try:
            while not self._stop.wait(self.every_s):
                for side, backend in backends.items():
                    self._round(side, backend)
        finally:
            for backend in backends.values():
                backend.close()

    def _round(self, side: str, backend: Backend) -> None:
        """One look at one side: compact it if due, unless a cutover runs."""
        m = self.m
        try:
            if not m.router.call("begin_upkeep", UPKEEP_MAX_S):
                return  # a cutover is about to run or runs: leave it the machine
            try:
                # A source's old versions stay: they are the application's, not ours.
                done = backend.maintain(m.cfg.lance, keep_versions=side == "source")
            finally:
                m.router.call("end_upkeep")
            if done:
                self.compactions.append({"side": side, **done})
                log.info("compacted the %s while live: %s", side, done)
        except TransientError:
            self.conflicts += 1
        except Exception as err:  # noqa: BLE001 - upkeep must never stop a migration
            log.warning("%s upkeep failed: %s: %s", side, type(err).__name__, err)
