"""Transform functions used by tests; importable in Ray workers through PYTHONPATH (conftest)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ray_migrate.schema import vectors_to_arrow, vectors_to_numpy


def poison_13(table: pa.Table) -> pa.Table:
    """A buggy re-embedding: point 13 gets a NaN."""
    vecs = vectors_to_numpy(table.column("vector")).copy()
    ids = table.column("id").to_pylist()
    if 13 in ids:
        vecs[ids.index(13), 0] = np.nan
    return table.set_column(table.column_names.index("vector"), "vector", vectors_to_arrow(vecs))


def scale_up(table: pa.Table) -> pa.Table:
    vecs = vectors_to_numpy(table.column("vector")) * np.float32(2)
    return table.set_column(table.column_names.index("vector"), "vector", vectors_to_arrow(vecs))


def scale_down(table: pa.Table) -> pa.Table:
    vecs = vectors_to_numpy(table.column("vector")) / np.float32(2)
    return table.set_column(table.column_names.index("vector"), "vector", vectors_to_arrow(vecs))


def refuse_113(table: pa.Table) -> pa.Table:
    """A re-embedding service that refuses the batch holding point 113 (past the plan's
    sample of 64 points)."""
    if 113 in table.column("id").to_pylist():
        raise ValueError("the embedding service refused point 113: quota exceeded")
    return table


def refuse_all(table: pa.Table) -> pa.Table:
    """A re-embedding service that refuses every batch, the plan's sample too."""
    raise ValueError("the embedding service is not configured: no API key")


TOY_MODEL = np.random.default_rng(11).standard_normal((8, 8)).astype(np.float32)


def toy_embed(table: pa.Table) -> pa.Table:
    """A deterministic toy re-embedding: another space, where neighbours are not the same."""
    vecs = np.tanh(vectors_to_numpy(table.column("vector")) @ TOY_MODEL).astype(np.float32)
    return table.set_column(table.column_names.index("vector"), "vector", vectors_to_arrow(vecs))


def toy_query(q: np.ndarray) -> np.ndarray:
    """``toy_embed``'s model for one query vector (``transform.query_function``)."""
    return np.tanh(np.asarray(q, np.float32) @ TOY_MODEL).astype(np.float32)


def toy_embed_4d(table: pa.Table) -> pa.Table:
    """A re-embedding into 4 dimensions."""
    vecs = np.tanh(vectors_to_numpy(table.column("vector")) @ TOY_MODEL[:, :4]).astype(np.float32)
    return table.set_column(table.column_names.index("vector"), "vector", vectors_to_arrow(vecs))
