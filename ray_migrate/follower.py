"""A unit worker's follower: the background thread that keeps waiting units caught up.

It applies the change logs of units that wait for their wave (forward) and, during the rollback
window, of units on the target (back to the source). It lives in its worker's process and uses
that worker's backends, router and transforms (``UnitWorker``), read when each step runs.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from ray_migrate import failpoints
from ray_migrate.backends import Backend
from ray_migrate.catchup import apply_units
from ray_migrate.errors import TerminalError
from ray_migrate.priority import urgent, urgent_after
from ray_migrate.retry import RetryPolicy
from ray_migrate.routing.records import FOLLOWED, TransitionError
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

if TYPE_CHECKING:
    from ray_migrate.worker import UnitWorker

log = logging.getLogger(__name__)

FOLLOW_EVERY_S = 0.5  # how often a worker's follower applies the waiting units' changes
FOLLOW_STEP = 5000  # ids per follower write, over all units
FOLLOW_URGENT_AGE_S = 0.6  # a follower step runs at normal priority once a change is this old
STEP_NICED_S = 0.3  # or once it has run this long at low priority
# The back-sync to the source (rollback window) applies this seldom, over all workers. Every
# apply to a LanceDB table that clients also write slows their writes: more versions and
# fragments to load, and now and then a commit conflict and its retry (bench/conflicts.py:
# a client's merge_insert p99 1.6 to 1.7x with another process writing its table every 2 s,
# 4.5 to 5.8x every 0.25 s); the standby's lag only delays a rollback's drain.
BACK_EVERY_S = 2.0


# A follower's wait after a failed step: from 0.5 s, doubled per failure in a row, up to 15 s.
# It never gives up (an unapplied change stays in the log), so ``attempts`` is unused.
FOLLOW_BACKOFF_S = 0.5
FOLLOW_BACKOFF_MAX_S = 15.0
FOLLOW_BACKOFF = RetryPolicy(attempts=0, first_s=FOLLOW_BACKOFF_S, max_s=FOLLOW_BACKOFF_MAX_S)


def backoff_s(failures: int, rng: random.Random | None = None) -> float:
    """The wait after ``failures`` failed steps in a row: doubling up to a cap, jittered over
    its upper half, so workers that failed together do not all retry together."""
    return FOLLOW_BACKOFF.delay(failures, rng)


class Follower:
    """The follower of one worker: ``run`` is its thread, ``stop`` ends it (tests; an actor
    just dies)."""

    def __init__(self, worker: UnitWorker):
        self.worker = worker
        self.stopped = threading.Event()
        self.back_broken: set[str] = set()  # units whose back-sync failed for good
        self.holder = f"follower:{worker.index}:{worker.who}"
        self.back_at = 0.0  # when this worker's next back-sync step is due (set by ``run``)

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        """Every ``FOLLOW_EVERY_S``, apply the change logs of the units that wait for their wave
        (``ready``) and, every ``BACK_EVERY_S`` during the rollback window, of units on the
        target (back to the source), all of them in one write per direction: LanceDB makes a
        version of every write, and many small ones slow every later read.

        Every worker follows; the router hands a unit's log to one applier at a time, and to
        none while a cutover has reserved or frozen the unit, so a cutover never waits behind
        a follower. A terminal error fails the unit it came from (``_fail``); other errors are
        logged and retried after a jittered backoff: an unapplied change stays in the log."""
        # Workers take turns, evenly spread over the interval: with n workers a change waits
        # at most FOLLOW_EVERY_S / n for some follower to look.
        turns = max(1, self.worker.cfg.copy_cfg.workers)
        next_at = time.monotonic() + FOLLOW_EVERY_S * (self.worker.index % turns) / turns
        self.back_at = next_at  # when this worker's next back-sync step is due
        failures = 0  # steps that failed in a row: the next waits longer (``backoff_s``)
        while not self.stopped.is_set():  # a daemon thread: it ends with the actor
            # Every FOLLOW_EVERY_S from the start of one step to the next, not after the last
            # step ended: a change waits at most that long plus one step. A step that overran
            # is not made up for with a burst.
            next_at = max(next_at + FOLLOW_EVERY_S, time.monotonic())
            self.stopped.wait(max(0.0, next_at - time.monotonic()))
            try:
                self._tick(turns)
                failures = 0
            except Exception as err:  # noqa: BLE001 - the log keeps what was not applied
                failures += 1
                wait = backoff_s(failures)
                log.warning("worker %d follower: %s: %s; trying again in %.1fs",
                            self.worker.index, type(err).__name__, err, wait)
                self.stopped.wait(wait)

    def _tick(self, turns: int) -> None:
        """One look at the lags and a step per direction (back only once ``back_at``)."""
        w = self.worker
        rows = w.router.call("lags")
        # catching_up too: a verify running meanwhile watches the log (see
        # ``verify_live``), so an apply between its scans is explained.
        forward = [u for u, (phase, lag, reserved, _) in rows.items()
                   if phase in FOLLOWED and lag and not reserved]
        back = [u for u, (phase, lag, reserved, _) in rows.items()
                if phase == "target" and lag and not reserved
                and time.monotonic() >= self.back_at]
        # At Ray's low priority while it keeps up, so the application keeps the CPU;
        # at normal priority once a change has waited FOLLOW_URGENT_AGE_S: a follower
        # that gets the CPU last on a busy machine lets the lag grow without bound.
        # Always at normal priority with a unit still catching_up: its catch-up after
        # the copy runs so too, and a niced follower holding that log would stall it
        # (measured: one such step took 2.5 s).
        oldest = max((rows[u][3] for u in forward + back), default=0.0)
        hurry = oldest >= FOLLOW_URGENT_AGE_S or any(
            rows[u][0] == "catching_up" for u in forward)
        # A niced step that gets no CPU for STEP_NICED_S runs at normal priority from
        # then on: it holds its units' logs, so nobody else may apply them meanwhile
        # (measured: one niced step of 42 ids took 4 s while 20 searches/s ran).
        with urgent() if hurry else urgent_after(STEP_NICED_S):
            if forward:
                self.step(forward, w.source, w.target, w.forward)
            if back and w.inverse is not None:
                self.back_at = time.monotonic() + BACK_EVERY_S * turns
                self.step(back, w.target, w.source, w.inverse)

    def step(self, units: list[str], owner: Backend, other: Backend,
             transform: Transform) -> None:
        """Take the units' logs in one call, apply them in one write, ack them in one call."""
        w, holder = self.worker, self.holder
        back = owner is not w.source
        units = [u for u in units if not (back and u in self.back_broken)]
        taken = w.router.call("take_many", units, FOLLOW_STEP, holder,
                              "target" if back else "source") if units else {}
        if not taken:
            return
        ids = list(dict.fromkeys(i for unit_ids, _, _ in taken.values() for i in unit_ids))
        started = time.monotonic()
        error: BaseException | None = None
        failed: dict[str, str] = {}
        try:
            try:
                self._apply_step(taken, owner, other, transform)
                for uid in taken:  # applied, not acknowledged
                    failpoints.hit("catchup.applied", unit=uid)
                acks = {u: seq for u, (_, seq, _) in taken.items()}
            except TerminalError:  # find the units it comes from: the others go on
                acks, failed, error = self._apply_apart(taken, owner, other, transform)
        except BaseException:
            w.router.call("ack_many", {u: 0 for u in taken}, holder)  # let go, ack nothing
            raise
        w.router.call("ack_many", acks, holder)
        for uid, reason in failed.items():
            self._fail(uid, reason, back)
        if error is not None:
            raise error
        took = time.monotonic() - started
        if took > 2 * FOLLOW_EVERY_S:
            log.warning("worker %d follower: %d ids of %d units took %.2fs to apply; the owner's "
                        "reads are slow (a LanceDB table with many fragments?)", w.index,
                        len(ids), len(taken), took)

    def _apply_step(self, taken: dict[str, Any], owner: Backend, other: Backend,
                    transform: Transform) -> None:
        """Apply a follower step's units, each within its unit (see ``catchup.apply_units``,
        in the owner's field names); ids an upsert left go back into their unit's log before
        the caller acks."""
        w = self.worker
        side = (lambda u: u) if owner is w.source else w.forward.target_unit
        kept: dict[str, list[Any]] = {}
        apply_units([(side(self._unit_spec(u)), unit_ids, carried)
                     for u, (unit_ids, _, carried) in taken.items()], owner, other,
                    transform, kept=kept)
        for u, left in kept.items():
            w.router.call("log_ids", u, left)

    def _apply_apart(self, taken: dict[str, Any], owner: Backend, other: Backend,
                     transform: Transform
                     ) -> tuple[dict[str, int], dict[str, str], BaseException | None]:
        """A step's units one by one: (seq to ack per unit, 0 where nothing was applied; the
        reason of each unit that meets a terminal error; the first other error)."""
        acks: dict[str, int] = {}
        failed: dict[str, str] = {}
        error: BaseException | None = None
        for uid, (ids, seq, carried) in taken.items():
            acks[uid] = 0
            try:
                self._apply_step({uid: (ids, seq, carried)}, owner, other, transform)
                acks[uid] = seq
            except TerminalError as err:
                failed[uid] = f"{type(err).__name__}: {err}"
            except Exception as err:  # noqa: BLE001 - raised once the others are acked
                error = error or err
        return acks, failed, error

    def _fail(self, unit_id: str, reason: str, back: bool) -> None:
        """A change of the unit cannot be applied, ever: waiting units fail (status and the
        run's report show why; a later run prepares them again, as ``UnitWorker.prepare``
        says). A unit on the target stays there, but its source is no longer a standby: a
        rollback would lose writes, so it says so and this worker stops syncing it back."""
        router = self.worker.router
        if back:
            self.back_broken.add(unit_id)
            reason = f"the source is no longer kept in sync for a rollback: {reason}"
        log.error("unit %s: %s", unit_id, reason)
        router.call("update_progress", unit_id, error=reason)
        if back:
            return
        try:
            router.call("set_phase", unit_id, "failed")
        except TransitionError as err:  # a cutover took it meanwhile: the error is shown
            log.warning("unit %s: not marked failed: %s", unit_id, err)

    def _unit_spec(self, unit_id: str) -> UnitSpec:
        """A unit of the plan, or one the router added for a tenant first seen while running."""
        w = self.worker
        spec = next((u for u in w.plan.units if u.unit_id == unit_id), None)
        if spec is None:
            row = next(r for r in w.router.call("status")["units"] if r["unit_id"] == unit_id)
            spec = UnitSpec(unit_id, "tenant", field=unit_id.partition("=")[0], value=row["value"])
        return spec
