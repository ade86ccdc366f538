"""Reads and deletes by payload condition for ``RoutedCollection``: scroll, count and delete
by filter, each over every unit's current owner (a unit is read only where it lives now, as
``retrieve`` does), merged and ordered by id.

There is no index to page through across two engines, so a scroll scans the units it covers
(every unit, or the one tenant an equality on ``units.field`` names) and keeps the matching
points from ``offset`` on: a page costs one scan of those units. A delete by filter deletes the
ids the scan found through the leased ``delete`` path, so it is captured and fenced as any
delete is; a point written to match the filter after the scan is not deleted (as a Qdrant
server, which deletes what matches when it applies the request).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

SCAN_BATCH = 1000
# A filter: an equality dict on payload keys (source names, as ``search`` takes), or a
# predicate on (id, payload), or both: (equalities, predicate).
Predicate = Callable[[Any, dict[str, Any]], bool]


def _sort_key(pid: Any) -> tuple[int, Any]:
    return (0, pid) if isinstance(pid, int) else (1, str(pid))


class ScanReads:
    """The scan half of ``RoutedCollection``: it provides ``routes``, ``units``, ``backends``,
    ``forward``, ``stats``, ``cfg``, ``unit_of``, ``_new_unit``, ``_from_target``, ``_rows``
    and ``delete``."""

    def iter_points(self, filter: dict[str, Any] | None = None,
                    where: Predicate | None = None) -> Iterator[dict[str, Any]]:
        """Every current point ({"id", "vector", "payload"}, source terms) whose payload has
        the ``filter`` equalities and for which ``where(id, payload)`` holds, unit by unit
        from its owner, in no particular order."""
        flt = filter or {}
        for unit_id, (owner, _) in self._scan_scope(flt).items():
            unit = self._unit_spec(unit_id)
            self.stats.tag(owner, [unit_id])
            side_unit = self.forward.target_unit(unit) if owner == "target" else unit
            for batch, _ in self.backends[owner].scan(side_unit, SCAN_BATCH):
                if owner == "target":
                    batch = self._from_target(batch)
                for row in self._rows(batch):
                    payload = row["payload"]
                    if self.unit_of(row["id"], payload) != unit_id:
                        continue  # moved to another tenant: its unit's owner answers for it
                    if any(payload.get(k) != v for k, v in flt.items()):
                        continue
                    if where is None or where(row["id"], payload):
                        yield row

    def scroll(self, filter: dict[str, Any] | None = None, limit: int = 10,
               offset: Any = None, where: Predicate | None = None
               ) -> tuple[list[dict[str, Any]], Any]:
        """(up to ``limit`` matching points with ids from ``offset`` on, ordered by id; the id
        the next page starts at, or None at the end), as Qdrant's scroll answers."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        start = None if offset is None else _sort_key(offset)
        found = [p for p in self.iter_points(filter, where)
                 if start is None or _sort_key(p["id"]) >= start]
        found.sort(key=lambda p: _sort_key(p["id"]))
        page = found[:limit]
        return page, (found[limit]["id"] if len(found) > limit else None)

    def count_where(self, filter: dict[str, Any] | None = None,
                    where: Predicate | None = None) -> int:
        """The number of current points matching the filter (``count`` when there is none)."""
        if not filter and where is None:
            return self.count()
        return sum(1 for _ in self.iter_points(filter, where))

    def delete_where(self, filter: dict[str, Any] | None = None,
                     where: Predicate | None = None) -> int:
        """Delete the points matching the filter now, through the leased ``delete`` path;
        returns how many were found. With no condition at all it refuses (as Qdrant needs a
        filter): deleting everything is not a filter's job."""
        if not filter and where is None:
            raise ValueError("delete_where needs a filter or a predicate")
        ids = [p["id"] for p in self.iter_points(filter, where)]
        if ids:
            self.delete(ids)
        log.debug("deleted %d points by filter", len(ids))
        return len(ids)

    def _scan_scope(self, flt: dict[str, Any]) -> dict[str, tuple[str, str]]:
        routes = self.routes()
        fld = self.cfg.units.field
        if self.cfg.units.by == "tenant" and fld in flt:
            uid = self.unit_of(None, flt)
            return {uid: routes[uid]} if uid in routes else {}
        return routes

    def _unit_spec(self, unit_id: str) -> UnitSpec:
        unit = self.units.get(unit_id) or self._seen_units.get(unit_id)
        if unit is None:
            unit = self._seen_units[unit_id] = self._new_unit(unit_id)
        return unit


__all__ = ["ScanReads"]
