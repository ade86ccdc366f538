"""The router and cutovers run at normal CPU priority although Ray starts workers niced."""

from __future__ import annotations

import os
import threading

from ray_migrate.priority import urgent


def can_raise_priority() -> bool:
    """Whether this process may lower a thread's niceness (CAP_SYS_NICE), tried in a thread."""
    out: list[bool] = []

    def probe() -> None:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 5)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
            out.append(True)
        except PermissionError:
            out.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return out[0]


def test_urgent_runs_a_niced_thread_at_normal_priority_then_restores_it():
    allowed = can_raise_priority()
    seen: dict[str, int] = {}

    def work() -> None:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 15)  # as Ray starts its workers
        with urgent():
            seen["inside"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["after"] = os.getpriority(os.PRIO_PROCESS, tid)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == {"inside": 0 if allowed else 15, "after": 15}


def test_the_router_actor_runs_at_normal_priority(ray_cluster, tmp_path):
    from ray_migrate.routing.actor import start_router

    h = start_router("rt-nice", str(tmp_path), ["a"], {}, lease_s=5.0)
    try:
        h.call("begin_writes", [("a", [1], None)])
        pid = h.call("describe")["pid"]
        nices = {int(open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()[16])
                 for tid in os.listdir(f"/proc/{pid}/task")}
        assert nices == ({0} if can_raise_priority() else {15}), nices
    finally:
        h.kill()


def test_urgent_raises_every_thread_of_the_process_then_restores_each():
    """An engine's own threads (LanceDB's tokio pool) do a cutover's work: they must run at
    normal priority too. Threads at 0 stay at 0, and overlapping blocks restore once."""
    allowed = can_raise_priority()
    seen: dict[str, tuple[int, ...]] = {}
    go, done = threading.Event(), threading.Event()
    tids: dict[str, int] = {}

    def engine_thread() -> None:  # started niced, before any urgent block, like tokio's pool
        tids["engine"] = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tids["engine"], 15)
        go.set()
        done.wait(10)

    def nice(name: str) -> int:
        return os.getpriority(os.PRIO_PROCESS, tids[name])

    def work() -> None:
        tids["caller"] = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tids["caller"], 15)  # as Ray starts its workers
        with urgent():
            seen["one"] = (nice("caller"), nice("engine"), nice("main"))
            with urgent():  # a second block (another thread in a worker) overlaps
                pass
            seen["after inner"] = (nice("caller"), nice("engine"), nice("main"))
        seen["after"] = (nice("caller"), nice("engine"), nice("main"))

    tids["main"] = threading.get_native_id()
    before_main = nice("main")
    engine = threading.Thread(target=engine_thread)
    engine.start()
    go.wait(10)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    done.set()
    engine.join()
    inside = (0, 0, before_main) if allowed else (15, 15, before_main)
    assert seen == {"one": inside, "after inner": inside, "after": (15, 15, before_main)}


def test_urgent_after_raises_a_niced_block_only_once_it_has_lasted_that_long():
    import time

    from ray_migrate.priority import urgent_after

    allowed = can_raise_priority()
    seen: dict[str, int] = {}

    def work() -> None:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 15)  # as Ray starts its workers
        with urgent_after(0.2):
            seen["early"] = os.getpriority(os.PRIO_PROCESS, tid)
            time.sleep(0.6)
            seen["late"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["after"] = os.getpriority(os.PRIO_PROCESS, tid)
        with urgent_after(5.0):  # a short block stays niced, and ends at once
            t0 = time.monotonic()
        seen["short_s"] = int(time.monotonic() - t0 >= 1.0)
        seen["after_short"] = os.getpriority(os.PRIO_PROCESS, tid)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == {"early": 15, "late": 0 if allowed else 15, "after": 15, "short_s": 0,
                    "after_short": 15}, seen


BACKGROUND_PROBE = """
import os, sys, threading
from ray_migrate.priority import background

def nice(tid): return os.getpriority(os.PRIO_PROCESS, tid)
stop = threading.Event()
tids = {}
def park(name):
    tids[name] = threading.get_native_id()
    stop.wait()
old = threading.Thread(target=park, args=("old",)); old.start()
while "old" not in tids: pass
me = threading.get_native_id()
with background():
    inside = (nice(me), nice(tids["old"]))
    new = threading.Thread(target=park, args=("new",)); new.start()
    while "new" not in tids: pass
    inside += (nice(tids["new"]),)
after = (nice(me), nice(tids["old"]), nice(tids["new"]))
stop.set()
print(inside, after)
"""


def test_background_lowers_every_thread_then_restores_each(tmp_path):
    """The driver's bulk work (finalize) runs the whole process at the workers' niceness,
    threads started meanwhile included; afterwards each thread is back where it was (where
    the process may raise it back). In a process of its own: pytest's threads stay as they
    are."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", BACKGROUND_PROBE], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    back = 0 if can_raise_priority() else 15
    assert out.split() == ["(15,", "15,", "15)", f"({back},", f"{back},", f"{back})"], out
