"""Verify LanceDB to LanceDB in the target's own columns, without the canonical round trip.

A canonical batch carries the payload as one JSON text per row: building it costs about 3.5 us
a row in Python, on both sides, most of a verify's time (3M x 128: 20 of its 35 s). When the
copy goes column by column (``lance_direct``: identity transform, ``direct_ok`` layouts), the
target holds exactly ``relayout(source batch)``, so both sides are hashed in the target's
columns instead: the source's batches through ``relayout`` (the canonical way for the rows
it cannot take, as the copy and the live writes do), the target's as stored. Every column of
every point is still compared bit-exactly: the same multilinear hashing as ``checksum``, over
each column's Arrow buffers (vectors and numbers by their bits, strings by their bytes, null
as its own constant), under its own algorithm name so that a digest of one kind never equals
one of the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from ray_migrate.backends.base import Backend
from ray_migrate.checksum import COLUMNS_ALGORITHM, Digest, column_hashes, columns_hashable
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec


class ColumnSides:
    """Both sides of a unit in the target's columns (see the module's doc), each read
    through the backend given (its retries of a broken scan included)."""

    def __init__(self, unit: UnitSpec, source: Backend, target: Backend, direct: Any,
                 batch_size: int):
        self.unit, self.direct, self.batch_size = unit, direct, batch_size
        self._source, self._target = source, target

    def source(self) -> Iterator[pa.Table]:
        from ray_migrate.backends.lance_direct import relayout

        d = self.direct
        for batch, _ in self._source.scan(self.unit, self.batch_size, raw=True):
            yield relayout(batch, d.src, d.dst)

    def target(self) -> Iterator[pa.Table]:
        for batch, _ in self._target.scan(self.unit, self.batch_size, raw=True):
            yield batch

    @staticmethod
    def hashes(table: pa.Table) -> np.ndarray:
        return column_hashes(table)

    @staticmethod
    def digest(tables: Iterator[pa.Table]) -> Digest:
        d = Digest(algorithm=COLUMNS_ALGORITHM)
        for t in tables:
            d.add(t, column_hashes(t) if t.num_rows else None)
        return d


def column_sides(unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
                 batch_size: int) -> ColumnSides | None:
    """The unit's sides in the target's columns, when the copy goes column by column and
    every column is of a type hashed here; else None (the canonical verify)."""
    if not transform.is_identity or not isinstance(target, Backend) \
            or not isinstance(source, Backend):
        return None
    direct = target.direct_from(source)
    if direct is None or not columns_hashable(pa.schema([direct.dst.schema.field(c)
                                                 for c in direct.dst.columns])):
        return None
    return ColumnSides(unit, source, target, direct, batch_size)
