"""Target upkeep while the migration is live: compact a LanceDB target as small writes pile up.

Every catch-up step and every client write to a cut-over unit makes a new small LanceDB
fragment, and each one slows later reads, merges and so the cutover's drain. While units wait
for their waves and during the rollback window, a thread in the driver merges the target's
small fragments whenever ``lance.compact_min_fragments`` have piled up (``lance_upkeep``). Never while a cutover is reserved or frozen,
and a cutover waits for a compaction under way (the router's ``begin_upkeep``); a
compaction that conflicts with a concurrent write is simply tried again on the next round
(LanceDB's merge_insert retries its own commit when the compaction wins).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

from ray_migrate.backends import open_backend
from ray_migrate.errors import TransientError
from ray_migrate.migration import Migration

log = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0
UPKEEP_MAX_S = 60.0  # cutovers wait for a compaction at most this long if the driver dies


class TargetUpkeep:
    def __init__(self, m: Migration, every_s: float = CHECK_EVERY_S):
        self.m = m
        self.every_s = every_s
        self.compactions: list[dict[str, Any]] = []
        self.conflicts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rm-upkeep")

    def __enter__(self) -> TargetUpkeep:
        if self.m.cfg.target.kind == "lancedb" and self.m.cfg.lance.compact_min_fragments:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.compactions or self.conflicts:
            log.info("target upkeep: %d compactions, %d deferred by a concurrent write",
                     len(self.compactions), self.conflicts)

    def _loop(self) -> None:
        m = self.m
        assert m.plan is not None and m.router is not None
        target = open_backend(m.cfg.target, payload_schema=m.plan.target_info.payload_schema)
        while not self._stop.wait(self.every_s):
            try:
                if not m.router.call("begin_upkeep", UPKEEP_MAX_S):
                    continue  # a cutover is about to run or runs: leave it the machine
                try:
                    done = target.maintain(m.cfg.lance)
                finally:
                    m.router.call("end_upkeep")
                if done:
                    self.compactions.append(done)
                    log.info("compacted the target while live: %s", done)
            except TransientError:
                self.conflicts += 1
            except Exception as err:  # noqa: BLE001 - upkeep must never stop a migration
                log.warning("target upkeep failed: %s: %s", type(err).__name__, err)
        target.close()
