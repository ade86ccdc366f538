"""A seeded randomized test of the routing table and its persistence, without Ray.

Each seed interleaves, one router call or engine action at a time: client writes (upserts and
deletes through leases, some ending late, fenced ones retried as ``RoutedCollection`` does),
preparing units (capture, copy, catch-up), cutovers (a switch at a quiet moment, or a freeze,
a drain and a flip), rollbacks, units cut over again after a rollback, the workers' followers,
and router restarts at random moments without a flush: the new router is rebuilt from the two
documents as ``DurableTable`` last wrote them (real ``StateStore`` files), while leases and
appliers of the old one carry on. The two engines are dicts with the semantics of
``catchup.apply_ids``: an applier re-reads the owner (or uses a client's rows where the router
hands them out) and upserts or deletes on the other side.

At the end (every write ended, logs drained) each unit's owner holds exactly what the
acknowledged writes say (no write lost, no delete undone, no stale value), the other side of a
followed unit holds the same, and no lease token or log sequence number was issued twice.
``RM_SEEDS`` raises the number of seeds; a failure names its seed (``RM_SEED=17 RM_TRACE=1``
runs it alone and prints its events).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

from ray_migrate.routing.durable import DurableTable
from ray_migrate.routing.records import CAPTURING, FOLLOWED, TransitionError
from ray_migrate.state import StateStore

SEEDS = int(os.environ.get("RM_SEEDS", "300"))
LEASE_S = 1.0  # a client's write lands, and an applier's step ends, within this (the contract)
FREEZE_TIMEOUT_S = 3.0
STEPS = 500
IDS_PER_UNIT = 4
Step = Generator[float | None, None, Any]  # yields the time by which it must go on, or None
SYNCED = FOLLOWED | {"target"}  # the other side follows the owner


class Failure(AssertionError):
    pass


class Sim:
    """One seed's run: the router, two engines, the acknowledged writes and the tasks."""

    def __init__(self, seed: int, folder: str):
        self.rng = random.Random(seed)
        self.now = 1000.0
        self.units = ["a", "b", "c"][: self.rng.choice([2, 3])]
        self.ids = {u: [i * 10 + k for k in range(IDS_PER_UNIT)]
                    for i, u in enumerate(self.units)}
        self.sides: dict[str, dict[int, int]] = {"source": {}, "target": {}}
        self.truth: dict[int, tuple[int | None, int]] = {}  # id -> (value, when it landed)
        self.values = iter(range(1, 10**9))
        for pid in (p for ids in self.ids.values() for p in ids):
            if self.rng.random() < 0.7:
                self.sides["source"][pid] = next(self.values)
            self.truth[pid] = (self.sides["source"].get(pid), 0)
        self.store = StateStore(folder, "m")
        self.router = DurableTable.open(self.store, self.units, lease_s=LEASE_S,
                                        freeze_timeout_s=FREEZE_TIMEOUT_S,
                                        clock=lambda: self.now, now=self.now)
        self.tick = 0  # orders engine writes
        self.tokens: set[int] = set()
        self.seqs: dict[int, tuple[Any, Any]] = {}
        self.copied: set[str] = set()  # units whose copy checkpoint says done
        self.tasks: dict[str, tuple[Iterator[float | None], float | None]] = {}
        self.busy: dict[str, str] = {}  # unit -> the task that works on it
        self.trace: list[str] = []
        self.names = iter(range(10**9))
        self.stopping = False
        self.restarts = self.recut = 0
        self.rolled: set[str] = set()  # units rolled back once

    # --- tools ----------------------------------------------------------------------------
    @property
    def table(self) -> Any:
        return self.router.table

    def note(self, what: str) -> None:
        self.trace.append(f"{self.now:9.3f} {what}")

    def land(self, side: str, values: dict[int, int | None]) -> int:
        self.tick += 1
        for pid, v in values.items():
            if v is None:
                self.sides[side].pop(pid, None)
            else:
                self.sides[side][pid] = v
        return self.tick

    def check_numbers(self, leases: Sequence[dict[str, Any]] = ()) -> None:
        """No token and no seq is issued twice (a restored entry keeps its seq, id and token)."""
        for le in leases:
            if le["status"] == "ok":
                if le["token"] in self.tokens:
                    raise Failure(f"token {le['token']} issued twice")
                self.tokens.add(le["token"])
        for u in self.table.units.values():
            for e in u.log:
                if self.seqs.setdefault(e.seq, (e.id, e.token)) != (e.id, e.token):
                    raise Failure(f"seq {e.seq} issued twice: {self.seqs[e.seq]} and "
                                  f"{(e.id, e.token)}")

    # --- a client write, as RoutedCollection makes it ---------------------------------------
    def client(self, unit: str, values: dict[int, int | None]) -> Step:
        held: list[int] = []
        attempt = 0
        while True:
            leases = self.router.begin_writes([(unit, list(values), None)], now=self.now)
            self.check_numbers(leases)
            lease = leases[0]
            if lease["status"] == "wait":
                yield None
                continue
            token, owner = lease["token"], lease["owner"]
            self.note(f"lease {token} {unit} {values} -> {owner} ({lease['phase']})")
            yield self.now + LEASE_S * 0.9  # the write lands within its lease
            if attempt == 0 and self.rng.random() < 0.04:  # the engine refused: not acked
                self.router.end_writes([token])
                self.note(f"lease {token} failed")
                return
            landed = self.land(owner, values)
            yield None  # its end may come late: after a flip, an expiry or a restart
            rows = None
            if lease["phase"] in CAPTURING:
                kind = "delete" if None in values.values() else "upsert"
                rows = {token: (((kind, list(values)) if kind == "delete" else (kind, values)),
                                1)}
            end = self.router.end_writes([token, *held], rows)[0]
            self.note(f"end {token} (+{held}): {end}")
            held = []
            if end["valid"]:
                for pid, v in values.items():
                    if landed > self.truth[pid][1]:
                        self.truth[pid] = (v, landed)
                return
            if end.get("held"):
                held.append(token)
            attempt += 1
            yield None

    def new_write(self) -> Step:
        unit = self.rng.choice(self.units)
        ids = self.rng.sample(self.ids[unit], self.rng.choice([1, 1, 2]))
        delete = self.rng.random() < 0.35
        return self.client(unit, {pid: None if delete else next(self.values) for pid in ids})

    # --- appliers (catchup.apply_ids) -------------------------------------------------------
    def apply(self, take: Callable[[], dict[str, tuple[list[Any], int, list[Any]]]],
              ack: Callable[[dict[str, int]], None], owner: str, other: str,
              holder: str) -> Step:
        """One step of an applier: take, read the owner, write the other side, ack. Returns
        the ids applied."""
        taken = take()
        if not taken:
            return []
        self.note(f"{holder} took {taken}")
        deadline = self.now + LEASE_S * 0.8  # an applier's step ends within a lease time
        yield deadline
        values: dict[int, int | None] = {}
        for ids, _, carried in taken.values():
            known: dict[int, int | None] = {}
            for c_ids, (kind, data) in carried:
                known.update({p: None for p in c_ids} if kind == "delete"
                             else {p: data[p] for p in c_ids if p in data})
            for pid in ids:
                values[pid] = known[pid] if pid in known else self.sides[owner].get(pid)
        yield deadline
        if self.rng.random() < 0.03:  # the other side refused the write: let go
            ack({u: 0 for u in taken})
            return []
        self.land(other, values)
        self.note(f"{holder} applied {values} {owner}->{other}")
        yield deadline
        ack({u: seq for u, (_, seq, _) in taken.items()})
        return list(values)

    def unit_sync(self, unit: str, holder: str, owner: str, other: str) -> Step:
        """``catchup.UnitSync.step``."""
        def take() -> dict[str, tuple[list[Any], int, list[Any]]]:
            ids, seq = self.table.take_changes(unit, 3, holder, now=self.now, owner=owner)
            return {unit: (ids, seq, self.table.carried_for(unit))} if ids else {}

        def ack(seqs: dict[str, int]) -> None:
            self.router.ack_changes(unit, seqs[unit], holder)

        return (yield from self.apply(take, ack, owner, other, holder))

    def follower(self, name: str) -> Step:
        """``follower.Follower.run``: forward for followed units, back for units on the target; the
        direction is chosen from one look at the lags, and a unit may flip before the take."""
        holder = f"follower:{name}"
        while True:
            lags = self.table.lags(now=self.now)
            forward = [u for u, (p, lag, res, _) in lags.items()
                       if p in FOLLOWED and lag and not res]
            back = [u for u, (p, lag, res, _) in lags.items() if p == "target" and lag
                    and not res]
            if forward:
                yield from self.follow_step(forward, "source", "target", holder)
            if back:
                yield from self.follow_step(back, "target", "source", holder)
            yield None

    def follow_step(self, units: list[str], owner: str, other: str, holder: str) -> Step:
        """``follower.Follower.step``: one take for several units, one apply, one ack."""
        def take() -> dict[str, tuple[list[Any], int, list[Any]]]:
            return {u: (ids, seq, self.table.carried_for(u)) for u, (ids, seq)
                    in self.table.take_many(units, 5, holder, now=self.now,
                                            owner=owner).items()}

        def ack(seqs: dict[str, int]) -> None:
            self.router.ack_many(seqs, holder)

        return (yield from self.apply(take, ack, owner, other, holder))

    # --- the unit's life: prepare, cutover, rollback ----------------------------------------
    def repair(self, unit: str) -> None:
        """Diff-and-repair of a unit whose log may have lost entries (a restart): ids that
        differ go into its log, for its one applier."""
        u = self.table.unit(unit)
        if not u.needs_repair:
            return
        owner, other = (u.owner, "target" if u.owner == "source" else "source")
        differ = [p for p in self.ids[unit]
                  if self.sides[owner].get(p) != self.sides[other].get(p)]
        self.router.log_ids(unit, differ)
        self.router.clear_repair(unit)
        self.note(f"repaired {unit}: {differ}")

    def prepare(self, unit: str) -> Step:
        """``worker.prepare`` with verify off: capture, copy (once: then its checkpoint skips
        it), catch up, ready."""
        holder = f"prepare:{next(self.names)}"
        if self.table.unit(unit).phase in ("source", "rolled_back"):
            self.router.set_phase(unit, "capturing", now=self.now)
        repair = self.table.unit(unit).needs_repair  # as prepare reads it, once
        while self.table.unit(unit).phase == "capturing":
            yield None
            if not self.table.open_leases(unit, self.table.unit(unit).capture_epoch, self.now):
                self.router.set_phase(unit, "copying", now=self.now)
        if self.table.unit(unit).phase == "copying":
            if unit not in self.copied:
                ids = list(self.ids[unit])
                while ids:
                    chunk, ids = ids[:2], ids[2:]
                    rows = {p: self.sides["source"].get(p) for p in chunk}
                    yield None
                    self.land("target", {p: v for p, v in rows.items() if v is not None})
                self.copied.add(unit)
            self.router.set_phase(unit, "catching_up", now=self.now)
        for _ in range(self.rng.randint(0, 3)):
            yield from self.unit_sync(unit, holder, "source", "target")
            yield None
        if repair:
            self.repair(unit)
        self.router.set_phase(unit, "ready", now=self.now)

    def switch(self, unit: str, to_phase: str, back_phase: str, owner: str) -> Step:
        """``worker._cutover`` / ``_rollback`` and ``cutover.switch_unit``."""
        other = "target" if owner == "source" else "source"
        holder = f"switch:{next(self.names)}"
        want = ("ready", "catching_up") if to_phase == "target" else ("target",)
        try:
            if self.table.unit(unit).phase not in want:
                return
            while not self.table.reserve(unit, holder, now=self.now):  # a follower's step
                yield None
            if self.table.settling_s(now=self.now) > 0:  # it would sleep that long: later
                return
            self.repair(unit)
            while (yield from self.unit_sync(unit, holder, owner, other)):
                yield None
            applied, looks = False, self.rng.randint(0, 6)
            while True:
                out = self.router.settle(unit, to_phase, not applied, looks <= 0,
                                         self.rng.random() < 0.5, now=self.now)
                looks -= 1
                self.note(f"settle {unit} {to_phase}: {out}")
                if out["state"] == "switched":
                    self.switched(unit, to_phase)
                    return
                if out["state"] == "frozen":
                    break
                yield None
                applied = bool((yield from self.unit_sync(unit, holder, owner, other)))
            while True:  # frozen: drain, then flip (or give up and lift the freeze)
                while (yield from self.unit_sync(unit, holder, owner, other)):
                    yield None
                if self.rng.random() < 0.08:
                    self.router.lift_freeze(unit, back_phase, now=self.now)
                    self.note(f"lifted {unit}")
                    return
                try:
                    if self.router.flip(unit, to_phase, now=self.now):
                        self.switched(unit, to_phase)
                        return
                except TransitionError:  # its freeze timed out and was lifted
                    return
                yield None
        finally:
            self.table.release(unit, holder)

    def switched(self, unit: str, to_phase: str) -> None:
        self.note(f"switched {unit} to {to_phase}")
        if to_phase == "rolled_back":
            self.rolled.add(unit)
        elif unit in self.rolled:
            self.recut += 1

    # --- the schedule ---------------------------------------------------------------------
    def unit_task(self, unit: str) -> Step | None:
        phase = self.table.unit(unit).phase
        r = self.rng.random()
        if phase in ("source", "rolled_back") and r < 0.5:
            return self.prepare(unit)
        if phase in ("ready", "catching_up") and r < 0.5:
            return self.switch(unit, "target", "ready", "source")
        if phase == "target" and r < 0.4:
            return self.switch(unit, "rolled_back", "target", "target")
        if phase == "target" and r < 0.42:
            return self.finish(unit)
        return None

    def finish(self, unit: str) -> Step:
        self.router.set_phase(unit, "done", now=self.now)
        yield None

    def restart(self) -> None:
        self.restarts += 1
        self.router = DurableTable.open(self.store, self.units, lease_s=LEASE_S,
                                        freeze_timeout_s=FREEZE_TIMEOUT_S,
                                        clock=lambda: self.now, now=self.now)
        self.note(f"restart: incarnation {getattr(self.table, 'incarnation', '?')}")
        self.check_numbers()

    def spawn(self) -> None:
        clients = sum(1 for k in self.tasks if k.startswith("client"))
        if not self.stopping and clients < 3 and self.rng.random() < 0.5:
            self.tasks[f"client:{next(self.names)}"] = (self.new_write(), None)
        for unit in self.units:
            if not self.stopping and unit not in self.busy and self.rng.random() < 0.1:
                task = self.unit_task(unit)
                if task is not None:
                    name = f"unit:{unit}:{next(self.names)}"
                    self.tasks[name], self.busy[unit] = (task, None), name

    def step(self) -> None:
        due = [k for k, (_, d) in self.tasks.items() if d is not None and d <= self.now]
        name = due[0] if due else self.rng.choice(sorted(self.tasks))
        gen = self.tasks[name][0]
        try:
            self.tasks[name] = (gen, next(gen))
        except StopIteration:
            del self.tasks[name]
            for u in [u for u, k in self.busy.items() if k == name]:
                del self.busy[u]
        self.check_numbers()

    def tick_clock(self) -> None:
        deadlines = [d for _, d in self.tasks.values() if d is not None]
        self.now = max(self.now, min([self.now + self.rng.uniform(0.0, 0.03), *deadlines]))

    def run(self) -> None:
        self.tasks["follower:1"] = (self.follower("1"), None)
        self.tasks["follower:2"] = (self.follower("2"), None)
        for _ in range(STEPS):
            self.tick_clock()
            self.spawn()
            if self.rng.random() < 0.006:
                self.restart()
            self.step()
        self.stopping = True
        for _ in range(20_000):  # every write and every unit task ends
            if not any(k.startswith(("client", "unit")) for k in self.tasks):
                break
            self.tick_clock()
            self.step()
        else:
            raise Failure(f"tasks never ended: {sorted(self.tasks)}")
        self.now += LEASE_S + 0.1  # leases lapse: held and expired entries settle
        self.drain_and_check()

    def drain_and_check(self) -> None:
        holder = "final"
        for unit in self.units:
            u = self.table.unit(unit)
            assert u.phase != "frozen", f"{unit} left frozen"
            if u.phase in SYNCED:
                self.repair(unit)
                other = "target" if u.owner == "source" else "source"
                for _ in range(1000):
                    gen = self.unit_sync(unit, holder, u.owner, other)
                    try:
                        while True:
                            next(gen)
                    except StopIteration as stop:
                        if not stop.value and not self.table.lag(unit):
                            break
                else:
                    raise Failure(f"unit {unit}: its log never drained")
        for unit in self.units:
            u = self.table.unit(unit)
            for pid in self.ids[unit]:
                want, have = self.truth[pid][0], self.sides[u.owner].get(pid)
                if have != want:
                    kind = ("lost" if have is None else "resurrected" if want is None
                            else "stale")
                    raise Failure(f"unit {unit} ({u.phase}) id {pid}: {kind}: the owner "
                                  f"({u.owner}) holds {have}, the acknowledged write {want}")
                if u.phase in SYNCED:
                    other = "target" if u.owner == "source" else "source"
                    if self.sides[other].get(pid) != want:
                        raise Failure(f"unit {unit} ({u.phase}) id {pid}: the {other} holds "
                                      f"{self.sides[other].get(pid)}, the owner {want}")


def run_seed(seed: int, folder: Path) -> Sim:
    shutil.rmtree(folder, ignore_errors=True)
    sim = Sim(seed, str(folder))
    try:
        sim.run()
    except Exception as err:
        if os.environ.get("RM_TRACE"):
            print("\n".join(sim.trace))  # a test's own output
        raise Failure(f"seed={seed}: {type(err).__name__}: {err} (RM_SEED={seed} RM_TRACE=1 "
                      "runs it alone and prints its events)") from err
    return sim


def test_random_interleavings_lose_no_write_and_reuse_no_number(tmp_path):
    """Many seeds (``RM_SEEDS``, or only ``RM_SEED=17,42``); the failing ones are named. Also
    checks that the runs did what they are for: restarts, and units cut over again after a
    rollback."""
    seeds = [int(s) for s in os.environ.get("RM_SEED", "").split(",") if s] or range(SEEDS)
    failures, restarts, recut = [], 0, 0
    for seed in seeds:
        try:
            sim = run_seed(seed, tmp_path / "state")
        except Failure as err:
            if len(seeds) == 1:
                raise
            failures.append(str(err))
            continue
        restarts += sim.restarts
        recut += sim.recut
    assert not failures, (f"{len(failures)} of {len(seeds)} seeds failed:\n"
                          + "\n".join(failures[:20]))
    assert restarts >= len(seeds) and recut >= len(seeds) // 10, (restarts, recut)
