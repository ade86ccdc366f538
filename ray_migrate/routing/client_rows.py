"""Clients' rows: what a client wrote under a lease, kept for the applier of the unit's log.

An applier may use those rows instead of reading the owner back (``catchup``), but only where
they must equal what the owner holds:

- the write went to the unit's current owner and ended normally (not fenced);
- its entry is the id's newest among those handed out together;
- no other write of the same id was under way at any moment of its lease, nor any write of
  the unit from before capture (two such writes may land in either order);
- its lease was not issued around a router restart (overlaps with unknown leases are unknown);
- the rows kept fit in ``CARRY_MAX_BYTES``.

Anything else is read again. Plain Python, used by ``table.RoutingTable``.

An upsert's rows travel as Arrow IPC bytes (``encode_rows``), not as a ``pyarrow.Table``:
Ray pickles a table column by column in Python (about 0.8 ms for 100 rows of 64-d here), once
from the client (on its write's critical path) and again from the router to the applier, where
bytes cost next to nothing; the router never looks inside them (bench/router.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ray_migrate.routing.records import LogEntry

CARRY_MAX_BYTES = 128 << 20  # beyond this, clients' rows are dropped and appliers read again


def encode_rows(table: pa.Table) -> pa.Buffer:
    """A client's rows as one Arrow IPC stream, for the router to keep and hand on."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def decode_rows(data: Any) -> pa.Table:
    """``encode_rows``'s table back; a table as is (a client from before the encoding)."""
    if isinstance(data, pa.Table):
        return data
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


@dataclass
class Carried:
    """What a client wrote under one lease."""

    unit_id: str
    flips: int  # the owner it was written to (see ``routing.UnitRoute.flips``)
    rows: Any  # opaque here: ("upsert", encode_rows(table)) or ("delete", ids), owner's terms
    nbytes: int


class ClientRows:
    """The rows kept per lease token, and which open leases met another write of an id."""

    def __init__(self) -> None:
        self.kept: dict[int, Carried] = {}
        self.nbytes = 0
        self._writing: dict[Any, set[int]] = {}  # id -> open leases writing it (capturing)
        self._overlapped: set[int] = set()  # open leases that met another write of an id

    def opened(self, token: int, ids: Iterable[Any], before_capture: bool) -> None:
        """A capturing write began. ``before_capture``: a write of the unit from before its
        capture is still under way."""
        if before_capture:
            self._overlapped.add(token)
        for pid in ids:
            writing = self._writing.setdefault(pid, set())
            if writing:  # two writes of one id under way: their order is unknown
                self._overlapped.update(writing)
                self._overlapped.add(token)
            writing.add(token)

    def closed(self, token: int, ids: Iterable[Any]) -> bool:
        """Forget an open lease's ids; returns whether another write of one of them was under
        way at some moment of the lease."""
        for pid in ids:
            writing = self._writing.get(pid)
            if writing is not None:
                writing.discard(token)
                if not writing:
                    del self._writing[pid]
        overlapped = token in self._overlapped
        self._overlapped.discard(token)
        return overlapped

    def keep(self, token: int, carried: Carried) -> None:
        if self.nbytes + carried.nbytes <= CARRY_MAX_BYTES:
            self.kept[token] = carried
            self.nbytes += carried.nbytes

    def for_entries(self, entries: Iterable[LogEntry], flips: int
                    ) -> list[tuple[list[Any], Any]]:
        """(ids, rows) per kept write whose rows stand for the owner's value of those ids:
        its entry is the newest of its id among ``entries`` (in log order) and it went to the
        owner of now (``flips``)."""
        newest: dict[Any, int | None] = {}
        for e in entries:
            newest[e.id] = e.token
        by_token: dict[int, list[Any]] = {}
        for pid, tok in newest.items():
            c = self.kept.get(tok) if tok is not None else None
            if c is not None and c.flips == flips:
                by_token.setdefault(tok, []).append(pid)  # type: ignore[arg-type]
        return [(ids, self.kept[tok].rows) for tok, ids in by_token.items()]

    def drop_unused(self, unit_id: str, live: set[Any]) -> None:
        """Forget the unit's rows whose lease token no log entry names any more (``live``)."""
        for tok in [t for t, c in self.kept.items() if c.unit_id == unit_id and t not in live]:
            self.nbytes -= self.kept.pop(tok).nbytes
