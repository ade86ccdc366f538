"""The leases around a ``RoutedCollection`` write: one lease call for every unit it touches,
one engine write per owner, one call to end the leases (or, where they cannot have been fenced,
an end sent off the write's path: P9a), units whose owner changed written again, frozen ones
after their freeze. See ``routing.table`` for why a lease keeps every acknowledged write."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ray_migrate.errors import TransientError
from ray_migrate.placement import UNFLIPPABLE, Lookup, Placement
from ray_migrate.routing.records import CAPTURING

log = logging.getLogger(__name__)

FREEZE_WAIT_S = 30.0
# A write spanning several units waits this long, at most, for the moment none of them is
# frozen, to write them all at once; then it writes the unfrozen ones and the others later.
WHOLE_WAIT_S = 1.0
# A write whose units are all frozen waits in the router (woken when the table changes) up
# to this long per call, then asks again: no polling through a freeze (P9).
FREEZE_ASK_S = 0.25
END_LATER_S = 5.0  # how long an end sent off the write's path retries a restarting router
# write(owner, unit ids, units to report) -> per reported unit, (what was written, its size)
Write = Callable[[str, list[str], set[str]], dict[str, tuple[Any, int]]]


class LeasedWrites(Placement):
    """The write half of ``RoutedCollection``: it provides ``router``, ``backends``,
    ``stats``, ``cfg``, ``_pool``, ``_ender`` and ``_saw_epoch``."""

    def _leased(self, parts: dict[str, tuple[list[Any], Any]], write: Write,
                lookup: Lookup | None = None) -> None:
        """Write the ids of several units: one lease call for all of them, one backend write
        per owner (``write(owner, unit_ids)``, which returns what it wrote per unit), one call
        to end the leases, handing the router what was written (see ``routing.client_rows``);
        units whose owner changed meanwhile are written again to the new one, frozen units
        after their freeze. ``parts``: unit id -> (its ids, its tenant value). ``lookup``:
        an upsert's look-up, which asks for wide leases (P2a).

        A lease fenced by a flip is held open by the router (see ``RoutingTable.end_write``)
        and ended here with its retry's lease, or when this call gives up."""
        pending = dict(parts)
        held: dict[str, list[int]] = defaultdict(list)  # unit -> its fenced leases
        began = time.monotonic()
        try:
            self._lease_loop(pending, held, write, began, lookup)
        finally:
            if held:  # gave up before a retry: let the fenced entries settle now
                try:
                    self.router.call("end_writes", [t for ts in held.values() for t in ts])
                except Exception as err:  # noqa: BLE001 - they expire after a lease time
                    log.warning("could not end fenced leases %s: %s", dict(held), err)

    def _lease_loop(self, pending: dict[str, tuple[list[Any], Any]],
                    held: dict[str, list[int]], write: Write, began: float,
                    lookup: Lookup | None) -> None:
        while pending:
            names = list(pending)
            waited = time.monotonic() - began
            whole = len(names) > 1 and waited < WHOLE_WAIT_S
            ask_s = min(FREEZE_ASK_S, WHOLE_WAIT_S - waited) if whole else FREEZE_ASK_S
            leased = time.monotonic()
            leases = self.router.call("begin_writes",
                                      [(u, pending[u][0], pending[u][1]) for u in names], whole,
                                      lookup is not None, ask_s)
            granted = {u: le for u, le in zip(names, leases, strict=True)
                       if le["status"] == "ok"}
            if lookup is not None:
                lookup.granted(granted)
            self._saw_epoch(max(le["epoch"] for le in leases))
            by_owner: dict[str, list[str]] = defaultdict(list)
            for u, le in granted.items():
                by_owner[le["owner"]].append(u)
                self.stats.tag(le["owner"], [u])
            written: dict[str, tuple[Any, int]] = {}
            try:
                # Only writes the router logs (capturing units) hand in what they wrote.
                self._write_owners(by_owner, write, written,
                                   {u for u, le in granted.items() if le["phase"] in CAPTURING})
            except BaseException:  # a failed write ends its leases too: its ids are logged
                self._end_leases(granted, held, written, False)
                raise
            ends = self._end_leases(granted, held, written,
                                    time.monotonic() - leased < self.cfg.cutover.write_lease_s / 2)
            if ends:
                self._saw_epoch(max(end["epoch"] for end in ends))
            for u, end in zip(granted, ends, strict=True):
                if end["valid"]:
                    del pending[u]
                else:
                    if end.get("held"):
                        held[u].append(granted[u]["token"])
                    log.info("unit %s changed owner during a write; writing again", u)
            frozen = sorted(u for u in pending if u not in granted)
            if frozen and time.monotonic() - began > FREEZE_WAIT_S:
                raise TransientError(f"units {frozen} stayed frozen for {FREEZE_WAIT_S}s")

    def _end_leases(self, granted: dict[str, dict[str, Any]], held: dict[str, list[int]],
                    written: dict[str, tuple[Any, int]], in_time: bool) -> list[dict[str, Any]]:
        """End the granted leases (and the fenced ones their retry settles). Leases of units
        that cannot flip while they are open (``UNFLIPPABLE``), ended well within their lease
        time, are valid for sure: their end is sent off the write's path (P9a)."""
        if not granted:
            return []
        tokens = [le["token"] for le in granted.values()]
        retried = [t for u in granted for t in held.pop(u, [])]
        carried = {granted[u]["token"]: w for u, w in written.items()}
        if in_time and not retried and not carried \
                and all(le["phase"] in UNFLIPPABLE for le in granted.values()):
            self._ender.submit(self._end_later, tokens)
            return [{"valid": True, "epoch": le["epoch"]} for le in granted.values()]
        return self.router.call("end_writes", tokens + retried, carried)[:len(tokens)]

    def _end_later(self, tokens: list[int]) -> None:
        try:
            # Bounded: a router that restarts forgets the leases anyway, and close waits.
            self.router.call("end_writes", tokens, timeout_s=END_LATER_S)
        except Exception as err:  # noqa: BLE001 - they expire after a lease time
            log.warning("could not end leases %s: %s", tokens, err)

    def _write_owners(self, by_owner: dict[str, list[str]], write: Write,
                      written: dict[str, tuple[Any, int]], report: set[str]) -> None:
        """One write per owner; while units of one write have different owners (the middle of
        a migration) both engine writes run at once, so a write costs the slower of the two
        rather than their sum. Every part ends before the first error is raised. ``written``
        gets, per unit of ``report`` written successfully to an owner whose reads return
        exactly what was written, (what was written, its size): appliers of the log may use
        it."""
        def one(owner: str, units: list[str]) -> None:
            keep = report if self.backends[owner].capabilities.reads_back_writes else set()
            written.update(write(owner, units, keep & set(units)))

        if len(by_owner) < 2:
            for owner, units in by_owner.items():
                one(owner, units)
            return
        futures = [self._pool.submit(one, owner, units) for owner, units in by_owner.items()]
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:
            raise errors[0]
