"""LanceDB to LanceDB copy without the canonical round trip, and Lance's distributed write.

A canonical batch carries the payload as one JSON text per row: building it from a Lance
table's columns and taking it apart again costs about 3.5 us a row each way in Python, 4x
the engines' own scan and append (measured: bench/copy_lance.py). With an identity
transform a batch goes from the source's columns to the target's column by column instead;
a batch this cannot take exactly (explicit nulls, NaN, values out of a column's range) goes
the canonical way, which also names the bad value.

For a target the run created, a unit's batches are written as Lance fragments (data files no
manifest lists yet) and one commit per unit adds them all, so the table gets one version per
unit instead of one per batch. The commit is idempotent: the fragments' files are in the
unit's checkpoint, and a commit whose files the table already lists is not made again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ray_migrate.backends.base import Cursor
from ray_migrate.backends.lance_layout import (
    NULL_KEYS,
    Layout,
    _dumps,
    _dumps_foreign,
    to_canonical,
    to_layout,
)
from ray_migrate.schema import ID, check_vectors
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

_SIMPLE = ("bool", "int", "float", "string")


def direct_ok(src: Layout, dst: Layout) -> bool:
    """Whether every column of ``dst`` can be made from ``src``'s columns one by one: same id
    kind, same vectors, every source payload key a target column of its kind (or json text)."""
    if src.id_type != dst.id_type or {v.name: v.dim for v in src.vectors} != \
            {v.name: v.dim for v in dst.vectors}:
        return False
    if any(pa.types.is_integer(t) != (src.id_type == "int") for t in (src.id_arrow,
                                                                        dst.id_arrow)):
        return False
    for k, kind in src.payload.items():
        have = dst.payload.get(k)
        if have is None:
            return False
        if have == "json":
            if dst.schema.field(k).type not in (pa.string(), pa.large_string()):
                return False
        elif have != kind:
            return False
    return True


def relayout(batch: pa.Table, src: Layout, dst: Layout) -> pa.Table:
    """``batch`` (in ``src``'s columns) in ``dst``'s columns: what ``to_layout(to_canonical())``
    gives, column by column where it can, else that way (which raises on bad values)."""
    try:
        out = _direct(batch, src, dst)
    except (pa.ArrowInvalid, ValueError, TypeError, OverflowError):
        out = None
    return out if out is not None else to_layout(to_canonical(batch, src), dst)


def _direct(batch: pa.Table, src: Layout, dst: Layout) -> pa.Table | None:
    n = batch.num_rows
    if src.has_null_keys and batch.column(NULL_KEYS).null_count < n:
        return None  # explicit nulls: the canonical way keeps them exactly
    ids = batch.column(ID)
    if src.id_type == "int":
        ids = ids.cast(pa.uint64())  # a negative id raises: the canonical way names it
    arrays: dict[str, Any] = {ID: ids.cast(dst.id_arrow)}
    for v in dst.vectors:
        col = batch.column(v.name)
        if col.null_count:
            return None
        if v.name in src.var_vectors:
            col = col.cast(pa.list_(pa.float32(), v.dim))
        arrays[v.name] = col.cast(dst.schema.field(v.name).type)
    for k, kind in dst.payload.items():
        ftype = dst.schema.field(k).type
        if k not in src.payload:
            arrays[k] = pa.nulls(n, ftype)
            continue
        col = batch.column(k)
        if kind == "json":
            arrays[k] = _json_column(col, k in src.json_text, src.own, ftype)
            if arrays[k] is None:
                return None
            continue
        if kind == "float" and col.null_count < n and \
                not pc.all(pc.is_finite(col.drop_null())).as_py():
            return None  # NaN or infinity: the canonical way refuses it by name
        arrays[k] = col.cast(ftype)
    if dst.has_null_keys:
        arrays[NULL_KEYS] = pa.nulls(n, dst.schema.field(NULL_KEYS).type)
    return pa.table([arrays[c] for c in dst.columns],
                    schema=pa.schema([dst.schema.field(c) for c in dst.columns]))


def _json_column(col: pa.ChunkedArray, text: bool, own: bool,
                 ftype: pa.DataType) -> pa.Array | None:
    """A json column's values as canonical JSON text (one Python call a value, for this
    column only); None when a value is a JSON null (an explicit null in canonical form)."""
    if not text and col.type in (pa.list_(pa.string()), pa.large_list(pa.string())):
        out = _string_lists(col.combine_chunks())
        if out is not None:
            return out.cast(ftype)
    enc = _dumps if own else _dumps_foreign
    loads = json.loads
    out = []
    for x in col.to_pylist():
        if x is None:
            out.append(None)
            continue
        v = loads(x) if text else loads(enc(x))
        if v is None:
            return None
        out.append(_dumps(v))
    return pa.array(out, ftype)


_ESCAPED = r'[\x00-\x1f\\"]'  # what json.dumps escapes with ensure_ascii=False


def _string_lists(arr: pa.Array) -> pa.Array | None:
    """list<string> as JSON text, vectorised: ``["a",null]`` as ``_dumps`` writes it; None
    when a string needs an escape (then each value goes through ``json``)."""
    values = pc.list_flatten(arr)
    if len(values) and pc.any(pc.match_substring_regex(values, _ESCAPED)).as_py():
        return None
    quoted = pc.fill_null(pc.binary_join_element_wise('"', arr.values, '"', ""), "null")
    lists = pa.ListArray.from_arrays(arr.offsets, quoted)  # null lists are empty here
    text = pc.binary_join_element_wise("[", pc.binary_join(lists, ","), "]", "")
    return pc.if_else(arr.is_null(), pa.scalar(None, pa.string()), text)


class LanceDirect:
    """A LanceDB target fed from a LanceDB source's own columns (see the module's doc)."""

    def __init__(self, source: Any, target: Any):
        self.source, self.target = source, target
        self.src = source._layout()
        self.dst = target._layout()

    def scan(self, unit: UnitSpec, batch_size: int,
             cursor: Cursor | None = None) -> Iterator[tuple[pa.Table, Cursor]]:
        """The source's scan, batches in its own columns (as ``LanceBackend.scan``)."""
        return self.source.scan(unit, batch_size, cursor, raw=True)

    def rows(self, parts: list[pa.Table]) -> pa.Table:
        """The gathered scan batches in the target's columns, their vectors checked."""
        t = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        out = relayout(t, self.src, self.dst)
        check_vectors(out, self.dst.canonical_info(""))
        return out

    def write(self, table: pa.Table, append: bool) -> None:
        """Append (the ids cannot be there yet) or merge by id, as the backend does."""
        with self.target.guard(f"{'append to' if append else 'merge_insert into'}"):
            if append:
                self.target.tbl.add(table)
            else:
                self.target.tbl.merge_insert(ID).when_matched_update_all() \
                    .when_not_matched_insert_all().execute(table)

    # --- Lance's distributed write: fragments now, one commit per unit --------------------
    def write_files(self, tables: Iterable[pa.Table]) -> list[dict[str, Any]]:
        """Write ``tables`` (target columns) as fragments no version lists yet; their metadata
        as JSON, for the unit's checkpoint and its commit."""
        from lance.fragment import write_fragments

        schema = pa.schema([self.dst.schema.field(c) for c in self.dst.columns])
        reader = pa.RecordBatchReader.from_batches(
            schema, (rb for t in tables for rb in t.to_batches()))
        with self.target.guard("write fragments of"):
            frags = write_fragments(reader, self._dataset(), schema=schema)
        return [f.to_json() for f in frags]

    def commit_files(self, fragments: list[dict[str, Any]]) -> bool:
        """Add the fragments to the table in one commit, unless a commit already did (their
        files are listed): True when this call committed."""
        import lance
        from lance.fragment import FragmentMetadata

        if not fragments:
            return False
        metas = [FragmentMetadata.from_json(json.dumps(f)) for f in fragments]
        mine = {d.path for m in metas for d in m.files}
        with self.target.guard("commit fragments to"):
            ds = self._dataset()
            listed = {d.path for f in ds.get_fragments() for d in f.metadata.files}
            if mine & listed:
                return False
            lance.LanceDataset.commit(ds, lance.LanceOperation.Append(metas),
                                      read_version=ds.version,
                                      storage_options=self.target.storage_options())
        return True

    def _dataset(self) -> Any:
        import lance

        return lance.dataset(self.target.dataset_uri(),
                             storage_options=self.target.storage_options())
