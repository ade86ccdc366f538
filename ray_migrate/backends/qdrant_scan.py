"""Scans of a Qdrant local-mode collection (``QdrantClient(path=...)``) by listed ids.

Local mode sorts every id and evaluates a filter over every point in Python on each
``scroll`` call, so a scan by filtered pages costs N**2 / batch, and even one filtered
listing per unit is one pass over the whole collection per unit. ``LocalScans`` lists ids
instead and retrieves each page by id. ``list_units`` lists many units in one pass (ids and
the unit field only) and keeps each unit's ids under a token; a scan whose cursor names that
token (``{"listing": token}`` to start) takes its unit's ids from there; any other scan
lists its own unit (once per scan).

Why a listing is complete: it is made only once capture runs for every unit it lists (the
caller's promise), so a point added after it is in its unit's change log, which catch-up
applies; and each page is read when it is retrieved, so a point changed or deleted since the
listing is read as it is then (a deleted one is absent, its delete is in the log too).
"""

from __future__ import annotations

import bisect
import logging
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from ray_migrate.backends.base import Cursor
from ray_migrate.backends.qdrant_convert import (
    in_unit,
    payload_value,
    scroll_order,
    unit_filter,
)
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

SCROLL_IDS_PAGE = 10_000
_CACHED_SCANS = 64  # unit id lists of scans under way that were not listed together
_KEPT_LISTINGS = 4  # listings of several units (``list_units``) kept for their scans

Ids = list[int | str]


class LocalScans:
    """The id lists of the scans under way on one local-mode collection (see the module)."""

    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name
        self._unit_ids: OrderedDict[str, Ids] = OrderedDict()  # unit id -> ids
        self._listings: OrderedDict[str, dict[str, Ids]] = OrderedDict()  # token -> lists

    # --- listing ------------------------------------------------------------------------
    def scroll_ids(self, lo: Any = None, hi: Any = None) -> Iterator[int | str]:
        """Every id in ``[lo, hi)`` in scroll order, in pages of ids only."""
        offset = lo
        while True:
            recs, nxt = self.client.scroll(self.name, limit=SCROLL_IDS_PAGE, offset=offset,
                                           with_payload=False, with_vectors=False)
            for r in recs:
                if hi is not None and scroll_order(r.id) >= scroll_order(hi):
                    return
                yield r.id
            if nxt is None:
                return
            offset = nxt

    def list_unit(self, unit: UnitSpec) -> Ids:
        """The unit's ids in scroll order: one pass over the collection."""
        if unit.kind == "id_range":
            return list(self.scroll_ids(unit.lo, unit.hi))
        recs, _ = self.client.scroll(self.name, scroll_filter=unit_filter(unit),
                                     limit=self._limit(), with_payload=False,
                                     with_vectors=False)
        return sorted((r.id for r in recs), key=scroll_order)

    def list_units(self, units: Sequence[UnitSpec]) -> str:
        """List every one of ``units`` in one pass per tenant field (one for id ranges) and
        keep the lists for their scans; returns the token a scan starts from. Only once
        capture runs for every one of them (see the module)."""
        lists: dict[str, Ids] = {}
        fields = {u.field for u in units if u.kind == "tenant"}
        for field in sorted(f for f in fields if f is not None):
            lists.update(self._list_tenants(field, [u for u in units if u.field == field
                                                    and u.kind == "tenant"]))
        others = [u for u in units if u.kind != "tenant"]
        if others:
            lists.update(_split_ranges(self._all_ids(), others))
        token = uuid.uuid4().hex[:16]
        self._listings[token] = lists
        while len(self._listings) > _KEPT_LISTINGS:
            self._listings.popitem(last=False)
        log.info("listed %d units of %s in one pass: %d ids", len(lists), self.name,
                 sum(len(v) for v in lists.values()))
        return token

    def _limit(self) -> int:
        return max(int(self.client.count(self.name).count), 1)

    def _all_ids(self) -> Ids:
        recs, _ = self.client.scroll(self.name, limit=self._limit(), with_payload=False,
                                     with_vectors=False)
        return [r.id for r in recs]

    def _list_tenants(self, field: str, units: list[UnitSpec]) -> dict[str, Ids]:
        """Each tenant unit's ids, from one scroll of ids and ``field``; a point belongs to a
        unit as ``in_unit`` says (the value, or an array holding it, of the same type; for the
        value None: absent, null or [])."""
        by_value = {(type(u.value), u.value): u.unit_id for u in units if u.value is not None}
        empty = [u.unit_id for u in units if u.value is None]
        lists: dict[str, Ids] = {u.unit_id: [] for u in units}
        recs, _ = self.client.scroll(self.name, limit=self._limit(), with_payload=[field],
                                     with_vectors=False)
        for r in recs:  # in scroll order: each list is sorted
            v = payload_value(r.payload or {}, field)
            if v is None or v == []:
                for uid in empty:
                    lists[uid].append(r.id)
                continue
            seen: set[str] = set()
            for x in v if isinstance(v, list) else (v,):
                try:
                    uid = by_value.get((type(x), x))
                except TypeError:  # an unhashable value (an object) matches no tenant
                    continue
                if uid is not None and uid not in seen:
                    seen.add(uid)
                    lists[uid].append(r.id)
        return lists

    # --- scanning -----------------------------------------------------------------------
    def page(self, unit: UnitSpec, batch_size: int, cursor: Cursor | None,
             retrieve: Any) -> tuple[list[Any], Cursor | None]:
        """One page of the unit's records (``retrieve(ids)`` reads them) and the next cursor."""
        token = (cursor or {}).get("listing")
        ids = self._ids(unit, token, resumed="offset" in (cursor or {}))
        offset = (cursor or {}).get("offset")
        start = (0 if offset is None
                 else bisect.bisect_left(ids, scroll_order(offset), key=scroll_order))
        recs = retrieve(ids[start:start + batch_size])
        # A point that left the unit since the list was made (a client moved it to another
        # tenant) is not the unit's: copied here too, the other unit's copy would add it
        # again (a fresh target appends).
        recs = [r for r in recs if in_unit(unit, r.id, dict(r.payload or {}))]
        recs.sort(key=lambda r: scroll_order(r.id))
        nxt = ids[start + batch_size] if start + batch_size < len(ids) else None
        if nxt is None:
            self._forget(unit, token)
            return recs, None
        return recs, ({"offset": nxt} if token is None else {"listing": token, "offset": nxt})

    def _ids(self, unit: UnitSpec, token: str | None, resumed: bool) -> Ids:
        """The scan's ids: from its listing, else from this scan's own earlier pages, else a
        new list (a scan from the start never takes a list another scan left)."""
        listed = self._listings.get(token or "", {}).get(unit.unit_id)
        if listed is not None:
            return listed
        ids = self._unit_ids.get(unit.unit_id) if resumed else None
        if ids is None:
            ids = self.list_unit(unit)
            self._unit_ids[unit.unit_id] = ids
            while len(self._unit_ids) > _CACHED_SCANS:
                self._unit_ids.popitem(last=False)
        return ids

    def _forget(self, unit: UnitSpec, token: str | None) -> None:
        self._unit_ids.pop(unit.unit_id, None)
        listing = self._listings.get(token or "")
        if listing is not None:
            listing.pop(unit.unit_id, None)
            if not listing:
                self._listings.pop(token or "", None)


def _split_ranges(ids: Ids, units: list[UnitSpec]) -> dict[str, Ids]:
    """The ids (in scroll order) of each id-range or whole-collection unit."""
    keys = [scroll_order(i) for i in ids]
    out: dict[str, Ids] = {}
    for u in units:
        lo = 0 if u.lo is None or u.kind == "all" else bisect.bisect_left(keys,
                                                                           scroll_order(u.lo))
        hi = len(ids) if u.hi is None or u.kind == "all" else bisect.bisect_left(
            keys, scroll_order(u.hi))
        out[u.unit_id] = ids[lo:hi]
    return out


__all__ = ["SCROLL_IDS_PAGE", "LocalScans"]
