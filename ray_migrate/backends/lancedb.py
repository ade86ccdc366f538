"""LanceDB backend: snapshot scans pinned to a table version, SQL-filtered units, upserts by
merge on ``id``, appends for fresh units, compaction and indexing after the bulk load. The
column layout and the conversions live in ``lance_layout``."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_migrate.backends import lance_upkeep
from ray_migrate.backends.base import (
    Backend,
    Capabilities,
    Cursor,
    SearchHit,
    in_tenant,
    tenant_units,
)
from ray_migrate.backends.lance_layout import (
    META,
    NULL_KEYS,
    PAYLOAD_ARROW,
    Layout,
    table_layout,
    to_canonical,
    to_layout,
)
from ray_migrate.backends.lance_sql import quote_ident, sql_literal
from ray_migrate.config import LanceEndpoint, LanceTargetOptions
from ray_migrate.errors import (
    IncompatibleTargetError,
    InvalidDataError,
    RayMigrateError,
    TerminalError,
    TransientError,
    UnsupportedError,
)
from ray_migrate.schema import (
    ID,
    INT64_MAX,
    PAYLOAD,
    CollectionInfo,
    arrow_schema,
    check_vectors,
    payload_dicts,
)
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)
PLAIN_KINDS = ("string", "int", "bool")  # payload columns read back as they were written

METRICS = lance_upkeep.METRICS
CHUNK = 1000
# A scan reads this far ahead of its consumer (Lance's defaults: 2 GiB of I/O, 16 batches,
# 4 fragments... more than a worker should hold; 2.3M rows/s of 128-d here all the same).
SCAN_AHEAD = {"io_buffer_size": 16 << 20, "batch_readahead": 2, "fragment_readahead": 1}
# A scan's own dataset caches no more than this: Lance's defaults (1 GiB of file metadata, 6
# GiB of index) let a worker's memory grow with the source's fragments, for a one-pass read
# (1M x 128, 4 units in one process: peak 542 -> 505 MB, with MALLOC_ARENA_MAX=2 436 MB).
SCAN_CACHE = {"metadata_cache_size_bytes": 16 << 20, "index_cache_size_bytes": 16 << 20}
_TRANSIENT = ("conflict", "retryable", "timeout", "timed out", "contention", "temporar",
              "too many concurrent", "connection reset", "connection refused", "throttl",
              "slow down", "503", "broken pipe")


def _convert(err: Exception, what: str) -> RayMigrateError:
    msg = f"LanceDB {what} failed: {type(err).__name__}: {err}"
    low = str(err).lower()
    if "not found" not in low and any(s in low for s in _TRANSIENT):
        return TransientError(msg)
    return TerminalError(msg)


@contextmanager
def _guard(what: str) -> Iterator[None]:
    try:
        yield
    except RayMigrateError:
        raise
    except Exception as err:  # lance raises ValueError/OSError/RuntimeError for everything
        raise _convert(err, what) from err


def _own_column(lay: Layout, field: str) -> bool:
    """Whether a payload field is stored as a column of its own, of a plain type (read back
    as written, comparable in a filter), not in the JSON column."""
    return lay.payload.get(field) in PLAIN_KINDS and field not in lay.json_text


class LanceBackend(Backend):
    kind = "lancedb"
    capabilities = Capabilities(parallel_writes=True, snapshot_scan=True,
                                preferred_write_rows=10_000,
                                higher_score_is_better=False, reads_back_writes=True,
                                updates_in_place=True)

    def __init__(self, endpoint: LanceEndpoint, payload_schema: dict[str, str] | None = None):
        self.endpoint = endpoint
        self.declared = dict(payload_schema or {})
        self._db: Any = None
        self._tbl: Any = None
        self._pinned: dict[int, Any] = {}
        self._lay: Layout | None = None

    # --- connection ------------------------------------------------------------------------
    @property
    def db(self) -> Any:
        if self._db is None:
            import lancedb

            with _guard(f"connect to {self.endpoint.uri!r}"):
                self._db = lancedb.connect(self.endpoint.uri,
                                           storage_options=self.endpoint.storage_options or None,
                                           read_consistency_interval=_dt.timedelta(0))
        return self._db

    def _where(self) -> str:
        return f"table {self.endpoint.table!r} at {self.endpoint.uri!r}"

    @property
    def tbl(self) -> Any:
        if self._tbl is None:
            try:
                self._tbl = self.db.open_table(self.endpoint.table)
            except Exception as err:
                if "not found" in str(err).lower() or "does not exist" in str(err).lower():
                    raise TerminalError(f"LanceDB {self._where()} does not exist") from None
                raise _convert(err, f"open {self._where()}") from err
        return self._tbl

    def _at(self, version: int) -> Any:
        if version not in self._pinned:
            with _guard(f"check out version {version} of {self._where()}"):
                h = self.db.open_table(self.endpoint.table)
                h.checkout(version)
            self._pinned = {version: h}
        return self._pinned[version]

    def _layout(self, h: Any = None) -> Layout:
        h = self.tbl if h is None else h
        with _guard(f"read the schema of {self._where()}"):
            schema = h.schema
            if self._lay is not None and self._lay.schema.equals(schema, check_metadata=True):
                return self._lay

            def sample(col: str) -> pa.ChunkedArray:
                return h.search().select([col]).limit(200).to_arrow().column(col)

            lay = table_layout(schema, self.endpoint.distance, sample)
        self._lay = lay
        return lay

    def exists(self) -> bool:
        try:
            self.db.open_table(self.endpoint.table)
            return True
        except Exception:
            return False

    # --- describe and prepare ----------------------------------------------------------------
    def describe(self, sample_size: int = 1000) -> CollectionInfo:
        lay = self._layout()
        with _guard(f"count {self._where()}"):
            count = self.tbl.count_rows()
        return lay.canonical_info(self.endpoint.table, count)

    def create(self, info: CollectionInfo) -> None:
        ptypes = {**info.payload_schema, **self.declared}
        reserved = {ID, NULL_KEYS, *info.vector_names}
        clash = sorted(reserved & set(ptypes))
        if clash:
            raise IncompatibleTargetError(f"payload keys {clash} collide with the id/vector columns "
                                          "of the LanceDB table; rename them with "
                                          "transform.rename_fields")
        meta = {META + "payload_types": json.dumps(ptypes, sort_keys=True),
                META + "id_type": info.id_type, META + "unnamed_vector": str(info.unnamed_vector)}
        fields = [pa.field(ID, pa.uint64() if info.id_type == "int" else pa.string(), False)]
        for v in info.vectors:
            if v.distance not in METRICS:
                raise IncompatibleTargetError(f"vector {v.name!r} uses distance {v.distance!r}, "
                                              "which LanceDB does not support (l2, cosine, dot)")
            meta[META + "distance." + v.name] = v.distance
            fields.append(pa.field(v.name, pa.list_(pa.float32(), v.dim)))
        fields += [pa.field(k, PAYLOAD_ARROW[t]) for k, t in sorted(ptypes.items())]
        fields.append(pa.field(NULL_KEYS, pa.list_(pa.string())))
        with _guard(f"create {self._where()}"):
            self._tbl = self.db.create_table(self.endpoint.table,
                                             schema=pa.schema(fields, metadata=meta))
            # Catch-up fetches, client writes (merge on id) and cutover checks look points up
            # by id: a BTree index keeps them from scanning the whole table. Made empty here:
            # finalize rebuilds it over the bulk load (``lance_upkeep._reindex_ids``).
            from lancedb.index import BTree

            self._tbl.create_index(ID, config=BTree())
        log.info("created LanceDB %s with %d payload columns", self._where(), len(ptypes))

    def check_compatible(self, info: CollectionInfo) -> None:
        lay = self._layout()
        where = self._where()
        if lay.id_type != info.id_type:
            raise IncompatibleTargetError(f"{where} has {lay.id_type} ids ({lay.id_arrow}) but "
                                          f"the source has {info.id_type} ids")
        mine = {v.name: v for v in lay.vectors}
        for v in info.vectors:
            t = mine.get(v.name)
            if t is None:
                raise IncompatibleTargetError(f"vector {v.name!r} has no column in {where} "
                                              f"(vector columns: {sorted(mine)})")
            if t.dim != v.dim:
                raise IncompatibleTargetError(f"vector {v.name!r}: {where} has dimension {t.dim}, "
                                              f"the source has {v.dim}")
            if lay.own and t.distance != v.distance:
                raise IncompatibleTargetError(f"vector {v.name!r}: {where} uses distance "
                                              f"{t.distance}, the source uses {v.distance}")
        for k, kind in {**info.payload_schema, **self.declared}.items():
            have = lay.payload.get(k)
            if have is None:
                raise IncompatibleTargetError(f"payload key {k!r} has no column in {where}")
            if have not in (kind, "json"):
                raise IncompatibleTargetError(f"payload key {k!r}: column in {where} holds "
                                              f"{have}, the source has {kind}")

    # --- units -------------------------------------------------------------------------------
    def _filter(self, unit: UnitSpec | None, lay: Layout) -> str | None:
        if unit is None or unit.kind == "all":
            return None
        if unit.kind == "tenant":
            kind = lay.payload.get(unit.field or "")
            if kind is None:
                raise TerminalError(f"tenant field {unit.field!r} is not a column of "
                                    f"{self._where()} (payload columns: {sorted(lay.payload)})")
            if kind == "json":
                raise UnsupportedError(f"tenant field {unit.field!r} is a json column in "
                                       f"{self._where()}; tenants must be bool, int, float or "
                                       "string columns (use units.by: id_range)")
            col = quote_ident(unit.field)
            return f"{col} IS NULL" if unit.value is None else f"{col} = {sql_literal(unit.value)}"
        parts = []
        if unit.lo is not None:
            parts.append(f"{ID} >= {sql_literal(unit.lo)}")
        if unit.hi is not None:
            parts.append(f"{ID} < {sql_literal(unit.hi)}")
        return " AND ".join(parts) or None

    def tenant_counts(self, field: str) -> dict[Any, int]:
        lay = self._layout()
        self._filter(UnitSpec("probe", "tenant", field=field), lay)
        with _guard(f"count tenants of {self._where()}"):
            col = self.tbl.search().select([field]).to_arrow().column(field)
        counts = pc.value_counts(col.combine_chunks())
        return {d["values"]: d["counts"] for d in counts.to_pylist()}

    def id_boundaries(self, count: int) -> list[Any]:
        lay = self._layout()
        with _guard(f"read the ids of {self._where()}"):
            ids = self.tbl.search().select([ID]).to_arrow().column(ID)
        if lay.id_type == "int":
            s = np.sort(ids.to_numpy())
        else:
            s = sorted(ids.to_pylist())
        n, out = len(s), []
        for j in range(1, count):
            b = s[j * n // count]
            b = b.item() if isinstance(b, np.generic) else b
            if b != s[0] and (not out or b > out[-1]):
                out.append(b)
        return out

    def count(self, unit: UnitSpec) -> int:
        f = self._filter(unit, self._layout())
        with _guard(f"count {self._where()}"):
            return self.tbl.count_rows(f)

    # --- read --------------------------------------------------------------------------------
    def scan(self, unit: UnitSpec, batch_size: int, cursor: Cursor | None = None,
             raw: bool = False) -> Iterator[tuple[pa.Table, Cursor]]:
        """``raw``: batches in this table's own columns, not canonical (``lance_direct``)."""
        conv = (lambda t, lay: t) if raw else to_canonical
        if cursor is None:
            with _guard(f"read the version of {self._where()}"):
                version = self.tbl.version
            rows = 0
        else:
            version, rows = int(cursor["version"]), int(cursor["rows"])
        h = self._at(version)
        lay = self._layout(h)
        f = self._filter(unit, lay)
        buf: list[pa.RecordBatch] = []
        have = 0
        with _guard(f"scan version {version} of {self._where()}"):
            # Lance's own scanner, whose read-ahead can be bounded: through LanceDB's query a
            # worker's memory grew with the unit (1.2M x 128 in one scan: +430 MB; +170 MB so).
            scanner = h.to_lance(**SCAN_CACHE).scanner(columns=lay.columns, filter=f, offset=rows or None,
                                           batch_size=batch_size, scan_in_order=True,
                                           **SCAN_AHEAD)
            for rb in scanner.to_batches():
                buf.append(rb)
                have += rb.num_rows
                while have >= batch_size:
                    t = pa.Table.from_batches(buf)
                    rows += batch_size
                    yield conv(t.slice(0, batch_size), lay), {"version": version,
                                                                 "rows": rows}
                    rest = t.slice(batch_size)
                    buf, have = rest.to_batches(), rest.num_rows
            if have:
                rows += have
                yield conv(pa.Table.from_batches(buf), lay), {"version": version,
                                                               "rows": rows}

    def _id_list(self, ids: Sequence[Any], lay: Layout) -> list[Any]:
        if lay.id_type == "int":
            hi = INT64_MAX if pa.types.is_signed_integer(lay.id_arrow) else 2**64 - 1
            return [int(i) for i in ids if 0 <= int(i) <= hi]
        return [str(i) for i in ids]

    def fetch(self, ids: Sequence[Any]) -> pa.Table:
        lay = self._layout()
        keys = self._id_list(ids, lay)
        parts = [arrow_schema(lay.canonical_info("")).empty_table()]
        with _guard(f"fetch from {self._where()}"):
            for i in range(0, len(keys), CHUNK):
                lits = ", ".join(sql_literal(k) for k in keys[i:i + CHUNK])
                t = self.tbl.search().where(f"{ID} IN ({lits})").select(lay.columns).to_arrow()
                parts.append(to_canonical(t, lay))
        return pa.concat_tables(parts)

    def fetch_values(self, ids: Sequence[Any], field: str) -> list[tuple[Any, Any]]:
        """Only the id and the field's own column, where it has one of a plain type (a
        tenant look-up of 100 ids read about half the time of whole rows)."""
        lay = self._layout()
        if not _own_column(lay, field):
            return super().fetch_values(ids, field)
        keys = self._id_list(ids, lay)
        out: list[tuple[Any, Any]] = []
        with _guard(f"fetch from {self._where()}"):
            for i in range(0, len(keys), CHUNK):
                lits = ", ".join(sql_literal(k) for k in keys[i:i + CHUNK])
                t = self.tbl.search().where(f"{ID} IN ({lits})").select([ID, field]).to_arrow()
                out += zip(t.column(ID).to_pylist(), t.column(field).to_pylist(), strict=True)
        return out

    def search(self, vector: Sequence[float], k: int, vector_name: str,
               unit: UnitSpec | None = None, within: Sequence[UnitSpec] | None = None,
               exact: bool = True) -> list[SearchHit]:
        lay = self._layout()
        spec = next((v for v in lay.vectors if v.name == vector_name), None)
        if spec is None:
            raise TerminalError(f"{self._where()} has no vector column {vector_name!r}")
        if spec.distance not in METRICS:
            raise UnsupportedError(f"LanceDB cannot search with distance {spec.distance!r}")
        q = (self.tbl.search(np.asarray(vector, dtype=np.float32), vector_column_name=vector_name)
             .distance_type(METRICS[spec.distance]).limit(k)
             .select([*lay.columns, "_distance"]))
        if exact:
            q = q.bypass_vector_index()
        parts = [self._filter(unit, lay)]
        if within is not None:
            parts.append(" OR ".join(f"({self._filter(u, lay)})" for u in within) or "FALSE")
        f = " AND ".join(f"({p})" for p in parts if p)
        if f:
            q = q.where(f, prefilter=True)
        with _guard(f"search {self._where()}"):
            res = q.to_arrow()
        canon = to_canonical(res, lay)
        return [SearchHit(id=i, score=float(s), payload=json.loads(p)) for i, s, p in zip(
            canon.column(ID).to_pylist(), res.column("_distance").to_pylist(),
            canon.column(PAYLOAD).to_pylist(), strict=True)]

    # --- write -------------------------------------------------------------------------------
    def upsert(self, table: pa.Table,
               within: Sequence[UnitSpec] | None = None) -> list[Any]:
        if table.num_rows == 0:
            return []
        data = self._rows(table)
        tenants = tenant_units(within)
        only = None if tenants is None else self._any_of(tenants)
        with _guard(f"merge_insert into {self._where()}"):
            done = (self.tbl.merge_insert(ID).when_matched_update_all(where=only)
                    .when_not_matched_insert_all().execute(data))
        if only is None or done.num_updated_rows + done.num_inserted_rows >= table.num_rows:
            return []
        # Some rows met a point of another tenant (see Backend.upsert): which ones. Every id
        # not held in one of the units now counts, absent ones too: another unit's applier
        # may have deleted the point it met between the merge and this read, and the id must
        # be applied again, not dropped.
        ids = table.column(ID).to_pylist()
        found = self.fetch(ids)
        held = {pid for pid, p in zip(found.column(ID).to_pylist(), payload_dicts(found),
                                      strict=True)
                if any(in_tenant(u, p) for u in tenants)}
        return [pid for pid in ids if pid not in held]

    def update_in_place(self, table: pa.Table, field: str) -> bool | None:
        """One conditional merge: a row replaces the point of its id only where the stored
        point's column ``field`` equals the row's (a null equals nothing: such rows count as
        not replaced). Only a field stored as a column of its own can be compared."""
        if table.num_rows == 0:
            return True
        if not _own_column(self._layout(), field):
            return None
        data = self._rows(table)
        col = quote_ident(field)
        with _guard(f"merge_insert into {self._where()}"):
            done = (self.tbl.merge_insert(ID)
                    .when_matched_update_all(where=f"target.{col} = source.{col}")
                    .execute(data))
        return done.num_updated_rows == table.num_rows

    def _any_of(self, tenants: list[UnitSpec]) -> str:
        """A merge's condition on the matched row: it is in one of these tenant units."""
        self._filter(tenants[0], self._layout())  # checks the field is a plain column
        parts = []
        for fld in dict.fromkeys(u.field or "" for u in tenants):
            col = "target." + quote_ident(fld)
            values = [u.value for u in tenants if u.field == fld and u.value is not None]
            if values:
                parts.append(f"{col} IN ({', '.join(sql_literal(v) for v in values)})")
            if any(u.field == fld and u.value is None for u in tenants):
                parts.append(f"{col} IS NULL")
        return " OR ".join(parts)

    def append(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        data = self._rows(table)
        with _guard(f"append to {self._where()}"):
            self.tbl.add(data)

    def direct_from(self, source: Backend) -> Any:
        """A LanceDB source's batches reach this table without the canonical form."""
        from ray_migrate.backends.lance_direct import LanceDirect, direct_ok

        if not isinstance(source, LanceBackend):
            return None
        d = LanceDirect(source, self)
        return d if direct_ok(d.src, d.dst) else None

    def guard(self, what: str) -> Any:
        """Lance errors of ``what`` (this table named after it) as ray_migrate's."""
        return _guard(f"{what} {self._where()}")

    def dataset_uri(self) -> str:
        with _guard(f"locate {self._where()}"):
            return self.tbl.uri

    def storage_options(self) -> dict[str, str] | None:
        return self.endpoint.storage_options or None

    def stored_form(self, table: pa.Table) -> pa.Table:
        """The batch as ``fetch`` would return it once written: through this table's layout
        (payload columns and their types) and back."""
        lay = self._layout()
        return to_canonical(to_layout(table, lay), lay)

    def check_writable(self, table: pa.Table) -> None:
        """The write's conversion, dry: against the layout known, then (if that refuses, as
        when a column was added since) against the table's current schema."""
        if self._lay is not None:
            try:
                to_layout(table, self._lay)
                return
            except InvalidDataError:
                pass
        self._rows(table)

    def keeps_canonical(self) -> bool:
        """A table made by ray_migrate stores every canonical value exactly (int64, float64,
        bool, string and JSON-text payload columns, fixed-size float32 vectors), so
        ``stored_form`` gives back what it accepts; a foreign one may not (float32 columns)."""
        lay = self._layout()
        vectors_exact = all(lay.schema.field(v.name).type == pa.list_(pa.float32(), v.dim)
                            for v in lay.vectors)
        return lay.own and vectors_exact and all(
            lay.schema.field(k).type == PAYLOAD_ARROW[kind] for k, kind in lay.payload.items())

    def _rows(self, table: pa.Table) -> pa.Table:
        lay = self._layout()
        check_vectors(table, lay.canonical_info(self.endpoint.table))
        return to_layout(table, lay)

    def delete(self, ids: Sequence[Any], unit: UnitSpec | None = None) -> None:
        self.delete_many([(ids, unit)])

    def delete_many(self, parts: Sequence[tuple[Sequence[Any], UnitSpec | None]]) -> None:
        """One delete (one table version) per CHUNK ids, whatever the number of units: each
        part's ids, and with a tenant unit only where the row holds its value."""
        lay = self._layout()
        clauses = []
        for ids, unit in parts:
            keys = self._id_list(ids, lay)
            scope = self._filter(unit, lay) if unit is not None and unit.kind == "tenant" \
                else None
            for i in range(0, len(keys), CHUNK):
                lits = ", ".join(sql_literal(k) for k in keys[i:i + CHUNK])
                clause = f"{ID} IN ({lits})"
                clauses.append((min(len(keys) - i, CHUNK),
                                clause if scope is None else f"({clause} AND ({scope}))"))
        with _guard(f"delete from {self._where()}"):
            batch: list[str] = []
            size = 0
            for n, clause in clauses:
                if batch and size + n > CHUNK:
                    self.tbl.delete(" OR ".join(batch))
                    batch, size = [], 0
                batch.append(clause)
                size += n
            if batch:
                self.tbl.delete(" OR ".join(batch))

    def finalize(self, options: LanceTargetOptions) -> dict[str, Any]:
        with _guard(f"finalize {self._where()}"):
            done = lance_upkeep.finalize(self.tbl, self._layout(), options)
        log.info("finalized LanceDB %s: %s", self._where(), done)
        return done

    def maintain(self, options: LanceTargetOptions,
                 keep_versions: bool = False) -> dict[str, Any] | None:
        """Merge small fragments once ``compact_min_fragments`` have piled up. A compaction
        conflicts with a concurrent update of the same fragments: that raises TransientError
        and the caller tries again later."""
        with _guard(f"compact {self._where()}"):
            return lance_upkeep.maintain(self.tbl, options, keep_versions)

    def close(self) -> None:
        self._tbl = None
        self._pinned = {}
        self._db = None
