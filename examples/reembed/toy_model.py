"""A deterministic toy embedding model for the re-embedding example: 64-d vectors of the old
model to 32-d vectors of the "new" one (a fixed random projection and tanh).

``embed`` is the ``transform.function`` (a batch: a pyarrow table with id, payload and the
vectors); ``embed_query`` is the ``transform.query_function`` (one query vector of the old
model's space, as the application sends it, to the new space). A real model would embed the
documents' text; ray_migrate hands the query function the query vector, so an application
that embeds text with the new model searches the new collection itself.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MODEL = np.random.default_rng(2024).standard_normal((64, 32)).astype(np.float32) / 8.0


def _vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.values.to_numpy(zero_copy_only=False).reshape(len(arr), -1).astype(np.float32)


def embed(table: pa.Table) -> pa.Table:
    """The new model, for a batch of points."""
    vecs = np.tanh(_vectors(table.column("vector")) @ MODEL).astype(np.float32)
    arrow = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()), 32)
    return table.set_column(table.column_names.index("vector"), "vector", arrow)


def embed_query(q: np.ndarray) -> np.ndarray:
    """The new model, for one query vector."""
    return np.tanh(np.asarray(q, np.float32) @ MODEL).astype(np.float32)
