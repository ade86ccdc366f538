"""A LanceDB target's upkeep: compaction and vector indexes after the bulk load (finalize),
compaction while units wait and after cutover (maintain). The caller turns the engine's
errors into ray_migrate's (``lancedb._guard``)."""

from __future__ import annotations

import datetime as _dt
import warnings
from typing import Any

from ray_migrate.backends.lance_layout import Layout
from ray_migrate.config import LanceTargetOptions
from ray_migrate.schema import ID

METRICS = {"l2": "l2", "cosine": "cosine", "dot": "dot"}

# Finalize compacts only a table of small fragments: one written as fragments of a unit's bulk
# load (``lance_direct``, 50k rows each) is read as fast as a compacted one, and a compaction
# rewrites every row (at 3M x 128, longer than the copy itself).
COMPACT_BELOW_MEAN_ROWS = 20_000


def fragments_large(rows: int, fragments: int) -> bool:
    """Whether a table's fragments hold COMPACT_BELOW_MEAN_ROWS rows or more on average."""
    return fragments > 0 and rows / fragments >= COMPACT_BELOW_MEAN_ROWS


def _compact(tbl: Any, options: LanceTargetOptions) -> None:
    # After the bulk copy no reader holds an old version older than the option: drop them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tbl.optimize(cleanup_older_than=_dt.timedelta(seconds=options.cleanup_older_than_s))


def _fragments(tbl: Any) -> int:
    return tbl.stats()["fragment_stats"]["num_fragments"]


def finalize(tbl: Any, lay: Layout, options: LanceTargetOptions) -> dict[str, Any]:
    """Compact a table of small fragments, then index each vector column (from
    ``index_min_rows`` rows on); what was done, with versions and fragments before and after."""
    from lancedb.index import HnswSq, IvfFlat, IvfPq

    done: dict[str, Any] = {"compacted": False, "indexed": [],
                            "versions_before": len(tbl.list_versions()),
                            "fragments_before": _fragments(tbl)}
    n = tbl.count_rows()
    if options.compact and not fragments_large(n, done["fragments_before"]):
        _compact(tbl, options)
        done["compacted"] = True
    elif options.compact:
        done["compaction"] = (f"skipped: {done['fragments_before']} fragments of "
                              f"{n // max(done['fragments_before'], 1):,} rows on average")
    if n >= options.index_min_rows:
        cls = {"IVF_PQ": IvfPq, "IVF_HNSW_SQ": HnswSq, "IVF_FLAT": IvfFlat}
        for v in lay.vectors:  # partitions: lance's default (by target partition size)
            cfg = cls[options.index_type](distance_type=METRICS.get(v.distance, "l2"))
            tbl.create_index(v.name, config=cfg, replace=True)
            done["indexed"].append(v.name)
    done["id_index"] = _reindex_ids(tbl)
    done.update(versions_after=len(tbl.list_versions()), fragments_after=_fragments(tbl),
                rows=n)
    return done


def _reindex_ids(tbl: Any) -> bool:
    """Rebuild the id index of a table that has one (ray_migrate makes it with the table,
    empty): the bulk load's rows are not in it, so every look-up by id after the copy
    (catch-up, the cutover's checks, the clients' merges and tenant look-ups, and every
    write of the application once it is cut over) would read every id of the table. Rows
    written later are read flat until the application's own index upkeep (``optimize``)
    takes them in. About 1 s at 3M ids. tests/test_lance_id_index.py checks it against a
    model under every live write."""
    from lancedb.index import BTree

    if not any(ID in i.columns for i in tbl.list_indices()):
        return False
    tbl.create_index(ID, config=BTree(), replace=True)
    return True


def small_fragments(ds: Any) -> int:
    """How many fragments hold fewer than COMPACT_BELOW_MEAN_ROWS rows (from the manifest:
    no data read). Each catch-up step and client write adds one."""
    return sum(1 for f in ds.get_fragments()
               if f.metadata.physical_rows < COMPACT_BELOW_MEAN_ROWS)


def maintain(tbl: Any, options: LanceTargetOptions,
             keep_versions: bool = False) -> dict[str, Any] | None:
    """Once ``compact_min_fragments`` small fragments have piled up, merge only those: a
    fragment of COMPACT_BELOW_MEAN_ROWS rows or more is left as it is, deletions in it too
    (finalize's compaction takes them), so a live compaction rewrites what the live writes
    added, not the table, whatever its size, and conflicts only with writes to those
    fragments. Then versions older than ``cleanup_older_than_s`` go, unless
    ``keep_versions``. None if not due."""
    if not options.compact_min_fragments:
        return None
    ds = tbl.to_lance()
    before = small_fragments(ds)
    if before < options.compact_min_fragments:
        return None
    metrics = ds.optimize.compact_files(target_rows_per_fragment=COMPACT_BELOW_MEAN_ROWS,
                                        materialize_deletions=False)
    ds = tbl.to_lance()
    if not keep_versions:
        ds.cleanup_old_versions(older_than=_dt.timedelta(seconds=options.cleanup_older_than_s))
    return {"fragments_before": before, "fragments_after": small_fragments(ds),
            "rewritten": metrics.fragments_removed}
