"""The contract every backend keeps. Canonical batches (see ``schema``) cross it both ways."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ray_migrate.checksum import Digest
from ray_migrate.schema import CollectionInfo
from ray_migrate.units import UnitSpec

Cursor = dict[str, Any]


@dataclass(frozen=True)
class Capabilities:
    """What the engine allows, as data the driver reads (not ``isinstance`` checks)."""

    parallel_writes: bool  # several processes may write at once
    snapshot_scan: bool  # a scan reads one consistent version (LanceDB) or live data (Qdrant)
    higher_score_is_better: bool  # Qdrant: similarity; LanceDB: distance
    preferred_write_rows: int = 0  # gather this many rows per write (0: one scan batch)
    # What a client wrote, put through ``stored_form``, is what ``fetch`` returns: a change
    # log applier may use a client's rows instead of reading them back (see routing.client_rows).
    reads_back_writes: bool = False
    # ``list_units`` lists many units' ids in one pass, which their scans start from: the
    # driver starts capture for every unit first, then lists them all (Qdrant local mode).
    lists_units: bool = False
    # ``update_in_place`` replaces points only where they keep their tenant, in one engine
    # call that says whether every row did: a client's upsert then needs no look-up (P2b).
    updates_in_place: bool = False


def in_tenant(unit: UnitSpec | None, payload: dict[str, Any]) -> bool:
    """Whether a point with this payload is in ``unit`` as the engines' unit filters say: the
    field holds the unit's value, of the same type, or for the value None is absent or null.
    Any point is in a unit that is not a tenant (an id range names its ids)."""
    if unit is None or unit.kind != "tenant":
        return True
    v = payload.get(unit.field or "")
    if unit.value is None:
        return v is None
    return type(v) is type(unit.value) and v == unit.value


def tenant_units(units: Sequence[UnitSpec] | None) -> list[UnitSpec] | None:
    """The tenant units among ``units``, or None when there are none (no scope)."""
    tenants = [u for u in units or () if u.kind == "tenant"]
    return tenants or None


@dataclass(frozen=True)
class SearchHit:
    id: Any
    score: float  # as the engine reports it; see Capabilities.higher_score_is_better
    payload: dict[str, Any]


class Backend(ABC):
    """One collection in one engine. Opened inside the process that uses it."""

    kind: str
    capabilities: Capabilities

    # --- describe and prepare -------------------------------------------------------------
    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def describe(self, sample_size: int = 1000) -> CollectionInfo:
        """Vectors, id type, inferred payload schema and count. Raises if missing."""

    @abstractmethod
    def create(self, info: CollectionInfo) -> None:
        """Create an empty collection that holds ``info``'s points."""

    @abstractmethod
    def check_compatible(self, info: CollectionInfo) -> None:
        """Raise IncompatibleTargetError, naming what differs, if this cannot hold ``info``."""

    # --- units ----------------------------------------------------------------------------
    @abstractmethod
    def tenant_counts(self, field: str) -> dict[Any, int]:
        """Point count per value of ``field``; the key None counts points without it."""

    @abstractmethod
    def id_boundaries(self, count: int) -> list[Any]:
        """Up to ``count - 1`` sorted ids that split the collection into ranges of near-equal size."""

    @abstractmethod
    def count(self, unit: UnitSpec) -> int: ...

    # --- read -----------------------------------------------------------------------------
    @abstractmethod
    def scan(self, unit: UnitSpec, batch_size: int,
             cursor: Cursor | None = None) -> Iterator[tuple[pa.Table, Cursor]]:
        """Canonical batches of the unit, each with the cursor that resumes right after it."""

    def list_units(self, units: Sequence[UnitSpec]) -> str | None:
        """List the ids of every one of ``units`` at once and keep them for their scans, where
        that is cheaper than a listing per scan (``capabilities.lists_units``). Returns a token:
        a scan started from the cursor ``{"listing": token}`` reads its unit's listed ids (as
        they are when read). Call it only once capture runs for every one of ``units``: a
        point added after the listing is in no list, only in its unit's change log. None:
        nothing was listed (start scans from None)."""
        return None

    @abstractmethod
    def fetch(self, ids: Sequence[Any]) -> pa.Table:
        """The canonical rows of those ids that exist (in any order)."""

    def fetch_values(self, ids: Sequence[Any], field: str) -> list[tuple[Any, Any]]:
        """(id, the payload value of ``field`` or None) of those ids that exist: where a
        client's write finds each id's tenant now. Backends that can read one field alone
        override it (a write waits for this look-up)."""
        from ray_migrate.schema import ID, payload_dicts

        t = self.fetch(ids)
        return [(pid, p.get(field)) for pid, p in
                zip(t.column(ID).to_pylist(), payload_dicts(t), strict=True)]

    def checksum(self, unit: UnitSpec, batch_size: int = 2000) -> Digest:
        digest = Digest()
        for batch, _ in self.scan(unit, batch_size):
            digest.add(batch)
        return digest

    @abstractmethod
    def search(self, vector: Sequence[float], k: int, vector_name: str,
               unit: UnitSpec | None = None, within: Sequence[UnitSpec] | None = None,
               exact: bool = True) -> list[SearchHit]:
        """Exact (brute-force) top-k, optionally restricted to a unit, or to the points of any
        of the tenant units ``within`` (the units a backend owns during a migration).
        ``exact=False``: through the engine's vector index, if it has one (query parity)."""

    # --- write ----------------------------------------------------------------------------
    @abstractmethod
    def upsert(self, table: pa.Table,
               within: Sequence[UnitSpec] | None = None) -> list[Any] | None:
        """Insert or replace by id; replaying the same batch changes nothing.

        ``within`` (tenant units, in this side's field names): replace only points that
        belong to one of them and insert absent ones; a point of any other tenant stays as
        it is, and its id is returned. A catch-up writes so: between its read of the owner
        and this write, the point may have moved to a tenant whose owner is this side."""

    def update_in_place(self, table: pa.Table, field: str) -> bool | None:
        """Replace by id only the points stored with the same value of ``field`` (a tenant
        unit's field, in this side's names) as their row of ``table``; insert nothing and
        leave every other point as it is. True when every row replaced a point, False when
        some did not (absent, or of another tenant now: the caller looks them up and writes
        them again), None when this table cannot say (``capabilities.updates_in_place``, or
        no column of its own for the field)."""
        return None

    def append(self, table: pa.Table) -> None:
        """Insert points known to be absent (a fresh unit of a fresh target). Engines where
        that is cheaper than an upsert override it."""
        self.upsert(table)

    def direct_from(self, source: Backend) -> Any:
        """A faster way from ``source`` to this engine for an identity transform, with
        ``scan``, ``rows``, ``write`` (see ``lance_direct.LanceDirect``), or None."""
        return None

    @abstractmethod
    def delete(self, ids: Sequence[Any], unit: UnitSpec | None = None) -> None:
        """Delete these ids. With a tenant ``unit`` (in this side's field names), only where the
        point belongs to it: a point that has moved to another tenant meanwhile stays. Id-range
        units need no scope (the id names the unit)."""

    def delete_many(self, parts: Sequence[tuple[Sequence[Any], UnitSpec | None]]) -> None:
        """``delete`` of several (ids, unit) parts; engines where one call is cheaper (one
        LanceDB version instead of several) override it."""
        for ids, unit in parts:
            self.delete(ids, unit)

    def stored_form(self, table: pa.Table) -> pa.Table:
        """The batch as this engine will store it (Qdrant normalizes cosine vectors)."""
        return table

    def check_writable(self, table: pa.Table) -> None:
        """Raise InvalidDataError, naming the point and the key, if an upsert of this
        canonical batch would be refused (a LanceDB table's typed columns); writes nothing.
        A client checks both sides with it, so the owner never takes a write that the other
        side (catch-up, rollback sync) could not."""
        return None

    def keeps_canonical(self) -> bool:
        """Whether ``stored_form`` returns every canonical batch it accepts unchanged (then
        verify need not compute it); False unless a backend knows it."""
        return False

    def finalize(self, options: Any) -> dict[str, Any]:
        """After the bulk copy: compact, build indexes. Returns what it did."""
        return {}

    def maintain(self, options: Any, keep_versions: bool = False) -> dict[str, Any] | None:
        """While live writes go on: tidy up small writes if needed (LanceDB compacts), and
        drop old versions unless ``keep_versions``. Returns what it did, or None when there
        was nothing to do."""
        return None

    def close(self) -> None:
        return None
