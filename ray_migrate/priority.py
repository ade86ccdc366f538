"""CPU priority of the latency-critical parts.

Ray starts its worker processes at niceness 15 (``RAY_worker_niceness``), so on a machine
that also runs the application they get the CPU last. That suits the bulk work (copy and
verify), but not the router, which every client write asks twice, nor a cutover, whose
freeze every writer of the unit waits for, nor the catch-up after a copy and a follower step
once a change has waited a while: without them a waiting unit's lag grows for as long as the
machine is busy. Those run at niceness 0 where the process may raise its priority
(``CAP_SYS_NICE``, as root in most containers); elsewhere they stay as they are and say so
once. The reverse, ``background``: the driver's own bulk work (finalize builds the vector
index in the engine's threads) runs at the workers' niceness, so that it too yields the CPU
to the application and the router on a machine they share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

NORMAL = 0
BACKGROUND = 15  # what Ray gives its workers: bulk work yields the CPU to everything else
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
    for tid in _threads():
        if not _set(tid, NORMAL):
            return


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [threading.get_native_id()]


def _niceness(tid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (OSError, AttributeError):
        return None  # the thread ended, or not a POSIX system


_lock = threading.Lock()
_holders = 0
_before: dict[int, int] = {}  # niceness of each thread when the first holder raised them
_known: set[int] = set()  # the threads there were then
_default: int | None = None  # niceness of threads started while raised, once lowered again


@contextmanager
def urgent() -> Iterator[None]:
    """Run the whole process at niceness 0 for the block, then as before.

    The whole process, not just the calling thread: an engine does its work in threads of
    its own (LanceDB's tokio pool, started niced by whichever thread first used it), so
    raising the caller alone leaves that work at the back of the queue. Blocks of several
    threads may overlap; the last one to leave restores every thread's niceness."""
    global _holders, _default
    with _lock:
        _holders += 1
        if _holders == 1:
            _default = _niceness(threading.get_native_id())
            _before.clear()
            _known.clear()
            if _default is not None and _default > NORMAL:
                _known.update(_threads())
                for tid in _known:
                    was = _niceness(tid)
                    if was is not None and was > NORMAL and _set(tid, NORMAL):
                        _before[tid] = was
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _before:
                for tid in _threads():
                    if tid in _before:
                        _set(tid, _before[tid])
                    elif tid not in _known and _niceness(tid) == NORMAL:
                        _set(tid, _default)  # type: ignore[arg-type] - started meanwhile
                _before.clear()


@contextmanager
def urgent_after(seconds: float) -> Iterator[None]:
    """Run the block at the priority the process has; if it lasts longer than ``seconds``,
    at niceness 0 (``urgent``) from then to its end. For background work that is cheap to
    run niced while the machine has room, but must not be starved for long: a follower step
    holds its units' logs while it runs, so nobody else can apply them meanwhile."""
    done = threading.Event()

    def hold() -> None:
        if not done.wait(seconds):
            with urgent():
                done.wait()

    helper = threading.Thread(target=hold, daemon=True, name="rm-urgent-after")
    helper.start()
    try:
        yield
    finally:
        done.set()
        helper.join()


@contextmanager
def background() -> Iterator[None]:
    """Run the whole process at niceness BACKGROUND for the block, then as before.

    For a process that otherwise runs at normal priority (the driver): its bulk work is done
    in the engine's own threads, so every thread is lowered. Threads started meanwhile go back
    to the caller's niceness too. Raising them back needs ``CAP_SYS_NICE`` (root in most
    containers); without it they stay low, which slows only the driver, and it says so."""
    caller = _niceness(threading.get_native_id())
    known = _threads()
    lowered = {}
    for tid in known:
        was = _niceness(tid)
        if was is not None and was < BACKGROUND:
            with contextlib.suppress(OSError):  # lowering is always allowed; the thread ended
                os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND)
                lowered[tid] = was
    try:
        yield
    finally:
        _restore(lowered, set(known), caller)


def _restore(lowered: dict[int, int], known: set[int], caller: int | None) -> None:
    for tid in _threads():
        was = lowered.get(tid)
        if tid not in known and caller is not None and caller < BACKGROUND \
                and _niceness(tid) == BACKGROUND:
            was = caller  # started meanwhile, from a lowered thread
        if was is not None and not _set(tid, was):
            return
