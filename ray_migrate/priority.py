"""CPU priority of the latency-critical parts.

Ray starts its worker processes at niceness 15 (``RAY_worker_niceness``), so on a machine
that also runs the application they get the CPU last. That suits the bulk work (copy, verify,
followers), but not the router, which every client write asks twice, nor a cutover, whose
freeze every writer of the unit waits for. Those run at niceness 0 where the process may raise
its priority (``CAP_SYS_NICE``, as root in most containers); elsewhere they stay as they are
and say so once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

NORMAL = 0
_warned = False


def _set(tid: int, niceness: int) -> bool:
    global _warned
    try:
        os.setpriority(os.PRIO_PROCESS, tid, niceness)
        return True
    except (OSError, AttributeError) as err:  # no permission, or not a POSIX system
        if not _warned:
            _warned = True
            log.info("cannot raise CPU priority (%s): start Ray with RAY_worker_niceness=0 "
                     "to run the router and cutovers at normal priority", err)
        return False


def process_at_normal_priority() -> None:
    """Every thread of this process at niceness 0 (Linux keeps one per thread); threads
    started later inherit it from the thread that starts them."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [threading.get_native_id()]
    for tid in tids:
        if not _set(tid, NORMAL):
            return


@contextmanager
def urgent() -> Iterator[None]:
    """Run the calling thread at niceness 0 for the block, then as before."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
    except (OSError, AttributeError):
        before = None
    raised = before is not None and before > NORMAL and _set(tid, NORMAL)
    try:
        yield
    finally:
        if raised:
            _set(tid, before)  # type: ignore[arg-type]
