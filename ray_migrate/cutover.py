"""Cutover (and rollback) of one unit behind a short write freeze, or none at all.

Step 1: switch at a quiet moment, or freeze the unit (new writes wait at the router). The
cutover applies what ends until a moment when no write of the unit is under way and every
ended one is applied, confirms what it applied, and looks again: if the unit is still quiet,
the router flips the owner at that same moment (``settle``), and no write waits at all.
Without a quiet moment within ``IDLE_WAIT_S`` it freezes anyway, at a moment when every
ended write is applied (only writes under way remain), or after ``FORCE_GRACE_S`` more at
any moment.
Step 2: drain the captured changes of the writes that have ended to the new owner's side.
Step 3: confirm the drained ids: as many on both sides, with the same content.
Step 4: flip the owner, which also lifts the freeze; if an entry settled since the drain (a
lease that expired), go back to step 2 instead. Writes still under way are not waited for:
the router fences them, and those that end during the freeze as well (see
``routing.RoutingTable.end_write``): their clients write again once it is over.
If any step fails, or the freeze would last longer than ``max_freeze_ms``, the freeze is lifted
and the unit stays with its owner; the caller catches up and tries again later. Steps 2 to 4
run in a thread of their own, so the freeze is lifted on time even while one of their engine
calls hangs.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from ray_migrate import failpoints
from ray_migrate.backends.base import Backend
from ray_migrate.catchup import UnitSync
from ray_migrate.checksum import Digest, point_hashes
from ray_migrate.routing.actor import RouterHandle
from ray_migrate.routing.records import Owner
from ray_migrate.schema import ID
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

DRAIN_STEP = 500  # ids per drain step inside a freeze, so its budget is checked often
IDLE_WAIT_S = 0.5  # how long to wait, before freezing, for a quiet moment (see step 1)
FORCE_GRACE_S = 0.3  # then how long for a moment with nothing to drain, before freezing anyway


@dataclass
class CutoverResult:
    unit_id: str
    ok: bool
    freeze_ms: float
    drained: int
    reason: str | None = None
    steps_ms: dict[str, float] | None = None  # how long each step of the freeze took
    how: str | None = None  # "quiet" (no freeze), "freeze" or "freeze, N writes under way"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Abort(Exception):
    pass


def _confirm(sync: UnitSync, ids: set[Any], owner_rows: pa.Table | None = None,
             when: str = "after the drain") -> None:
    """The changed ids hold the same points on both sides: as many present, same content.

    The rest of the unit was verified equal before the freeze, up to the ids in the change
    log, and every one of those has now been drained: so this settles the whole unit.
    ``owner_rows``: the owner's rows for these ids as the catch-up or drain that applied them
    read them (see ``switch_unit`` for why that is enough), so only the other side is read
    again; None reads the owner too."""
    if not ids:
        return
    if owner_rows is None:
        owner_rows = sync.owner_rows(ids)
    want = sync.other.stored_form(sync.transform.apply(owner_rows))
    have = sync.other_rows(ids)  # a point that moved to another tenant is not the unit's
    a, b = Digest().add(want), Digest().add(have)
    if not a.same_as(b):
        wh = dict(zip(*point_hashes(want), strict=True))
        hh = dict(zip(*point_hashes(have), strict=True))
        bad = sorted((i for i in ids if wh.get(i) != hh.get(i)), key=str)
        raise Abort(f"{len(bad)} of {len(ids)} changed ids differ between the two sides "
                    f"{when} (for example {bad[:5]})")


def rows_of(reads: list[tuple[list[Any], pa.Table]], ids: set[Any]) -> pa.Table | None:
    """What the last read that asked for each of ``ids`` found: its row, or nothing when it
    found the id absent (an id updated, then deleted, then read again has no row). ``reads``
    are (ids asked, rows found) in read order. None when nothing was read at all."""
    if not reads:
        return None
    last: dict[Any, int | None] = {}
    offset = 0
    for asked, rows in reads:
        found = {pid: offset + i for i, pid in enumerate(rows.column(ID).to_pylist())}
        for pid in asked:
            if pid in ids:
                last[pid] = found.get(pid)
        offset += rows.num_rows
    table = pa.concat_tables([rows for _, rows in reads])
    return table.take(pa.array(sorted(i for i in last.values() if i is not None), pa.int64()))


def switch_unit(router: RouterHandle, owner: tuple[Backend, UnitSpec],
                other: tuple[Backend, UnitSpec], transform: Transform, to_phase: str,
                back_phase: str, max_freeze_ms: int, ready_lag: int,
                holder: str | None = None) -> CutoverResult:
    """Move ownership of a unit from ``owner`` to ``other``, each given as (backend, the unit
    in that backend's terms); ``transform`` maps owner rows to the other side.

    First catch up on every write that has ended (refusing to go on while more than
    ``ready_lag`` changes wait), confirm what was applied and make followers yield, so the
    switch applies and confirms only the writes of its last moments. Confirming uses the owner rows as the apply
    read them (or the clients' rows that stood in for them): the other side holds what this
    applier wrote, and nobody else applies a reserved unit. An id written again since is in
    the log again, so the switch waits until it is applied and confirmed too. ``holder``: who
    holds the unit's log meanwhile (the switch's reservation holder; default a fresh one)."""
    unit = owner[1]
    sync = UnitSync(unit, router, owner[0], other[0], transform, seen=[],
                    side="source" if to_phase == "target" else "target")
    if holder is not None:
        sync.holder = holder
    # Apply every write that has ended (not waiting for a moment with none under way: under
    # steady writes there may be none for seconds, and each look is a router call; step 1
    # below waits for such a moment, with a budget).
    left, changed = sync.until(0, 1.0, ended=True)
    if left > ready_lag:
        return CutoverResult(unit.unit_id, False, 0.0, 0,
                             f"{left} changes wait for catch-up (cutover.ready_lag is "
                             f"{ready_lag}): not freezing yet")
    try:
        _confirm(sync, changed, rows_of(sync.seen, changed),
                 "after the catch-up before the freeze")
    except Abort as why:
        return _refused(unit.unit_id, to_phase, why)
    try:
        return _Switch(router, sync, unit.unit_id, to_phase, back_phase, max_freeze_ms,
                       len(changed)).run()
    finally:
        router.call("yield_followers", 0)


def _refused(unit_id: str, to_phase: str, why: Abort) -> CutoverResult:
    """Not switching, before any freeze: the unit stays with its owner, nothing waited."""
    log.warning("unit %s: not switching to %s: %s", unit_id, to_phase, why)
    return CutoverResult(unit_id, False, 0.0, 0, str(why))


class _Switch:
    """Steps 1 to 4 of the module's notes for one unit: ``wait`` (step 1) switches at a quiet
    moment or freezes; ``drain_and_flip`` (steps 2 to 4) ends a freeze with a flip, or lifts
    it. The timings of each step go to ``steps`` (ms)."""

    def __init__(self, router: RouterHandle, sync: UnitSync, unit_id: str, to_phase: str,
                 back_phase: str, max_freeze_ms: int, before: int):
        self.router, self.sync, self.unit_id = router, sync, unit_id
        self.to_phase, self.back_phase, self.max_freeze_ms = to_phase, back_phase, max_freeze_ms
        self.before = before  # ids caught up and confirmed before the freeze
        self.steps: dict[str, float] = {}
        self.drained: set[Any] = set()
        self.start = time.perf_counter()  # of the look that switched or froze

    def lap(self, name: str) -> None:
        total = (time.perf_counter() - self.start) * 1000
        self.steps[name] = self.steps.get(name, 0.0) + total - sum(self.steps.values())

    def over(self, what: str) -> None:
        ms = (time.perf_counter() - self.start) * 1000
        if ms > self.max_freeze_ms:
            raise Abort(f"the freeze would last {ms:.0f} ms (max_freeze_ms "
                        f"{self.max_freeze_ms}) {what}")

    def run(self) -> CutoverResult:
        outcome = self.wait()
        if isinstance(outcome, CutoverResult):
            return outcome
        return self.drain_and_flip(outcome)

    # --- step 1 -----------------------------------------------------------------------------
    def wait(self) -> CutoverResult | str:
        """Wait for a quiet moment, applying what ends meanwhile. What was applied is
        confirmed outside any freeze: at a quiet moment, and then the router is asked again
        whether it may switch; or once the wait is over, just before the unit freezes anyway,
        so that freeze confirms only what its drain applies. Not after every apply: that
        reads the target again and again, and at 1,000 writes/s the wait then never ends.
        Confirming while writes go on is valid: nobody else applies this reserved unit, so
        what this wait wrote to the other side stays there; newer writes are in the log
        again. Returns the result of a switch at a quiet moment (or of a refusal), or how the
        unit froze."""
        router, sync = self.router, self.sync
        called = time.perf_counter()
        sync.seen = []
        applied: set[Any] = set()
        waiting = 1  # ended writes not applied yet, as the router last said
        quiet = force = False
        budget = self.max_freeze_ms / 1000
        # A test that needs the freeze (to fault it) skips the switch at a quiet moment.
        no_quiet = bool(failpoints.hit("cutover.no_quiet_switch", unit=self.unit_id))
        while True:
            if waiting:
                applied.update(sync.step(DRAIN_STEP, lag=False)[0])
            waited = time.perf_counter() - called
            if waited > IDLE_WAIT_S and not force:
                # Followers (of other units) yield from here to the end of the freeze: on a
                # small machine they compete for it. While they yield every other waiting
                # unit falls behind, so only this long (not while waiting for a quiet moment,
                # when nothing waits), and a unit with a change older than YIELD_MAX_AGE_S is
                # followed anyway.
                router.call("quiet_followers", budget + FORCE_GRACE_S + 0.5, timeout_s=budget)
            force = waited > IDLE_WAIT_S or no_quiet
            if applied and (force or quiet):
                try:
                    _confirm(sync, applied, rows_of(sync.seen, applied), "before the freeze")
                except Abort as why:
                    return _refused(self.unit_id, self.to_phase, why)
                self.before += len(applied)
                applied, sync.seen = set(), []
            self.start = time.perf_counter()
            # One router call per look: it switches, freezes or says what waits; while only
            # writes under way keep the unit from a quiet moment, it answers when one ends
            # (or once this wait is over). Forced, the freeze waits for a moment with nothing
            # ended left to apply: a drain in the freeze writes to a table the clients write
            # too, and then reads it back (measured: 60 to 150 ms for 20 to 40 ids, against
            # 15 ms for a freeze with none).
            wait_s = 0.0 if force else max(IDLE_WAIT_S - (self.start - called), 0.0)
            out = router.call("settle", self.unit_id, self.to_phase,
                              not (applied or no_quiet), force, wait_s,
                              waited <= IDLE_WAIT_S + FORCE_GRACE_S)
            if out.get("needs_repair"):  # the router restarted during the switch (P13)
                if out["state"] == "frozen":
                    router.call("lift_freeze", self.unit_id, self.back_phase)
                return _refused(self.unit_id, self.to_phase, Abort(
                    "the router restarted during the switch: the unit needs diff-and-repair "
                    "before it may switch"))
            if out["state"] == "switched":
                return self._switched_quietly(out)
            if out["state"] == "frozen":
                return "freeze" if out["quiet"] else \
                    f"freeze, {out['under_way']} writes under way"
            quiet = out["state"] == "quiet"
            waiting = 0 if quiet else out["settled"]
            if not waiting and not quiet:
                time.sleep(0.002)

    def _switched_quietly(self, out: dict[str, Any]) -> CutoverResult:
        ms = (time.perf_counter() - self.start) * 1000 - out.get("waited_ms", 0.0)
        log.info("unit %s: %s at once, at a quiet moment (%d ids caught up and confirmed just "
                 "before; the switch took %.1f ms)", self.unit_id, self.to_phase, self.before,
                 ms)
        return CutoverResult(self.unit_id, True, ms, 0, how="quiet", steps_ms={"switch": ms})

    # --- steps 2 to 4 -----------------------------------------------------------------------
    def _drain_confirm_flip(self, stop: threading.Event) -> None:
        """Steps 2 to 4, in a thread of their own: the freeze is lifted at ``max_freeze_ms``
        even while one of their engine calls is still running."""
        sync = self.sync
        now: set[Any] = set()
        while True:
            # Step 2: drain the changes of every write that ended before the freeze. Writes
            # under way are not waited for: they are fenced when they end, and write again
            # after the freeze. One step unless it was full: an entry settled after it (a
            # lease that expired) makes the flip refuse, and this round comes again.
            while True:
                if stop.is_set():
                    raise Abort("stopped")
                ids, _ = sync.step(DRAIN_STEP, lag=False)
                now.update(ids)
                self.over(f"with {len(now)} ids drained")
                if len(ids) < DRAIN_STEP:
                    break
            self.drained.update(now)
            self.lap("drain")
            # Step 3: confirm them against the rows read (no write of theirs can land on the
            # owner now: the drained writes have ended).
            _confirm(sync, now, rows_of(sync.seen, now))
            sync.seen = []
            self.lap("confirm")
            self.over("after the confirm")
            # Step 4: flip, unless a write ended meanwhile (then drain it too). This lifts the
            # freeze.
            failpoints.hit("cutover.frozen", unit=self.unit_id)  # frozen, drained, not flipped
            if stop.is_set() or self.router.call("flip", self.unit_id, self.to_phase):
                return
            self.lap("flip")
            if not now:
                time.sleep(0.002)
            now = set()

    def drain_and_flip(self, how: str) -> CutoverResult:
        """End the freeze ``wait`` began: with a flip within ``max_freeze_ms``, or lifted."""
        # Frozen only when forced, and what the wait applied was confirmed just before: the
        # freeze confirms only what its drain applies.
        self.sync.times = {}
        self.lap("freeze")
        stop = threading.Event()
        pool = ThreadPoolExecutor(1, thread_name_prefix="rm-freeze")
        body = pool.submit(self._drain_confirm_flip, stop)
        pool.shutdown(wait=False)
        try:
            self._await(body, stop)
        except Abort as why:
            stop.set()
            self.router.call("lift_freeze", self.unit_id, self.back_phase)
            freeze_ms = (time.perf_counter() - self.start) * 1000
            log.warning("unit %s: switch to %s aborted after %.0f ms: %s", self.unit_id,
                        self.to_phase, freeze_ms, why)
            return CutoverResult(self.unit_id, False, freeze_ms, len(self.drained), str(why),
                                 self.steps, how=how)
        except BaseException:
            stop.set()
            self.router.call("lift_freeze", self.unit_id, self.back_phase)
            raise
        freeze_ms = (time.perf_counter() - self.start) * 1000
        self.lap("flip")
        times = self.sync.times
        log.info("unit %s: %s after a %.0f ms %s (%d ids drained, %d caught up just before; "
                 "ms per step %s; of the drain, reading the owner %.0f ms and writing the "
                 "other side %.0f ms)", self.unit_id, self.to_phase, freeze_ms, how,
                 len(self.drained), self.before,
                 {k: round(v, 1) for k, v in self.steps.items()}, times.get("read", 0.0),
                 times.get("write", 0.0))
        return CutoverResult(self.unit_id, True, freeze_ms, len(self.drained), how=how,
                             steps_ms=self.steps)

    def _await(self, body: Any, stop: threading.Event) -> None:
        """Wait for steps 2 to 4 until ``max_freeze_ms``; then lift the freeze, unless the
        flip came first."""
        left = self.max_freeze_ms / 1000 - (time.perf_counter() - self.start)
        try:
            body.result(timeout=max(left, 0.0))
        except FutureTimeout:
            stop.set()
            if not self.router.call("lift_freeze", self.unit_id, self.back_phase):
                body.result()  # the flip came first: the switch is done
            else:
                raise Abort(f"the freeze reached max_freeze_ms ({self.max_freeze_ms}) with a "
                            "step still under way; it was lifted then") from None


@dataclass(frozen=True)
class Direction:
    """One way a unit's owner switches (``switching.UnitSwitch``): cutover or rollback."""

    name: str
    owner: Owner  # the side that owns the unit before the switch
    start: frozenset[str]  # the phases a switch may start from
    to_phase: str  # the phase after the flip
    back_phase: str  # where a switch that gives up leaves the unit
    already: frozenset[str]  # phases in which there is nothing to do (ok)
    already_says: str  # the reason given then ({phase})
    refuses: str  # why a unit in any other phase cannot switch ({unit}, {phase})
    differs: str  # the reason given when diff-and-repair leaves a difference


CUTOVER = Direction(
    "cutover", "source", frozenset({"catching_up", "ready"}), "target", "ready",
    frozenset({"target", "done"}), "already on the target",
    "unit {unit} is {phase}; only a prepared unit (catching_up or ready) can be cut over",
    "differs from the source after diff-and-repair")
ROLLBACK = Direction(
    "rollback", "target", frozenset({"target"}), "rolled_back", "target",
    frozenset({"rolled_back", "source", "capturing", "copying", "catching_up", "ready"}),
    "already on the source ({phase})", "unit {unit} is {phase}: its rollback window is over",
    "the source differs from the target after diff-and-repair")


def switch_result(spec: UnitSpec, ok: bool, reason: str) -> dict[str, Any]:
    """A cutover or rollback that froze nothing: done already, or refused."""
    return {"unit_id": spec.unit_id, "ok": ok, "freeze_ms": 0.0, "drained": 0, "reason": reason}
