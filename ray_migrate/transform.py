"""Copy-time transforms: rename/drop payload fields, rename vectors, a user function per batch.

The same ``Transform`` runs on every path to the target (copy, catch-up, verify), so the
source side of a checksum is always computed on what the target should hold.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pyarrow as pa

from ray_migrate.config import TransformConfig
from ray_migrate.errors import ConfigError, TerminalError
from ray_migrate.schema import (
    ID,
    PAYLOAD,
    CollectionInfo,
    VectorSpec,
    canonical_json,
    infer_payload_schema,
    payload_dicts,
    vectors_to_numpy,
)
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)


def load_function(ref: str, field: str) -> Callable[[pa.Table], pa.Table]:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{field}: cannot import module {module_name!r} ({err}); make it "
                          "importable on every node (install it or ship it in the working dir)") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{field}: {module_name!r} has no function {attr!r}")
    return fn


class Transform:
    """Applies a ``TransformConfig`` to canonical batches."""

    def __init__(self, cfg: TransformConfig, inverse: bool = False):
        self.cfg = cfg
        self.inverse = inverse
        if inverse:
            self.rename_fields = {v: k for k, v in cfg.rename_fields.items()}
            self.rename_vectors = {v: k for k, v in cfg.rename_vectors.items()}
            self.drop_fields: set[str] = set()
            ref, field = cfg.inverse_function, "transform.inverse_function"
        else:
            self.rename_fields = dict(cfg.rename_fields)
            self.rename_vectors = dict(cfg.rename_vectors)
            self.drop_fields = set(cfg.drop_fields)
            ref, field = cfg.function, "transform.function"
        self.function = load_function(ref, field) if ref else None
        qref = None if inverse else cfg.query_function
        self.query_function = load_function(qref, "transform.query_function") if qref else None

    def embed_query(self, q: np.ndarray, dim: int) -> np.ndarray:
        """A source-space query vector in the target's space (``transform.query_function``),
        checked: ``dim`` finite floats. The function takes the vector, not text: an app whose
        new model embeds text embeds it itself and searches the target directly."""
        name = self.cfg.query_function
        try:
            out = np.asarray(self.query_function(q), dtype=np.float32)
        except Exception as err:  # noqa: BLE001 - the user's code, named
            raise TerminalError(f"transform.query_function: {name} raised "
                                f"{type(err).__name__}: {err}") from None
        if out.shape != (dim,) or not np.isfinite(out).all():
            raise TerminalError(f"transform.query_function: {name} must return {dim} finite "
                                f"floats (the target's dimension), got shape {out.shape}")
        return out

    @property
    def is_identity(self) -> bool:
        return not (self.rename_fields or self.rename_vectors or self.drop_fields or self.function)

    def _payload(self, text: str | None) -> str:
        p = json.loads(text or "{}")
        out = {}
        for k, v in p.items():
            if k in self.drop_fields:
                continue
            out[self.rename_fields.get(k, k)] = v
        return canonical_json(out)

    def apply(self, table: pa.Table) -> pa.Table:
        """The batch as the target should hold it (applied after the inverse, for rollback)."""
        if self.inverse and self.function is not None:
            table = self._call(table)
        if self.rename_vectors:
            table = table.rename_columns(
                [self.rename_vectors.get(c, c) if c not in (ID, PAYLOAD) else c
                 for c in table.column_names])
        if self.rename_fields or self.drop_fields:
            payloads = [self._payload(s) for s in table.column(PAYLOAD).to_pylist()]
            idx = table.column_names.index(PAYLOAD)
            table = table.set_column(idx, PAYLOAD, pa.array(payloads, pa.string()))
        if not self.inverse and self.function is not None:
            table = self._call(table)
        return table

    def _call(self, table: pa.Table) -> pa.Table:
        name = self.cfg.inverse_function if self.inverse else self.cfg.function
        field = "transform.inverse_function" if self.inverse else "transform.function"
        try:
            out = self.function(table)
        except Exception as err:  # noqa: BLE001 - the user's code: its unit fails, named
            raise TerminalError(f"{field}: {name} raised {type(err).__name__}: {err}") from None
        if not isinstance(out, pa.Table) or ID not in out.column_names or PAYLOAD not in out.column_names:
            raise TerminalError(f"transform function {name} must return a pyarrow.Table with "
                                "the columns id, payload and the vectors")
        if out.num_rows != table.num_rows:
            raise TerminalError(f"transform function {name} returned {out.num_rows} rows for "
                                f"{table.num_rows}; it must keep every row")
        return out

    def field_name(self, name: str) -> str | None:
        """The name a source payload field has on the target (None when dropped)."""
        if name in self.drop_fields:
            return None
        return self.rename_fields.get(name, name)

    def target_unit(self, unit: UnitSpec) -> UnitSpec:
        """The same unit, in the target's terms (the tenant field may be renamed)."""
        if unit.kind != "tenant" or unit.field is None:
            return unit
        field = self.field_name(unit.field)
        if field is None:
            raise ConfigError(f"transform.drop_fields drops {unit.field!r}, the units.field; "
                              "the target could not tell its units apart. Keep that field.")
        return replace(unit, field=field)

    def target_info(self, info: CollectionInfo, sample: pa.Table) -> CollectionInfo:
        """The target's description: renames applied, and the function run on a sample."""
        vectors = tuple(replace(v, name=self.rename_vectors.get(v.name, v.name))
                        for v in info.vectors)
        schema = {}
        for k, t in info.payload_schema.items():
            name = self.field_name(k)
            if name is not None:
                schema[name] = t
        out = replace(info, vectors=vectors, payload_schema=schema)
        if self.function is None or sample.num_rows == 0:
            return out
        result = self.apply(sample)
        specs = []
        for col in result.column_names:
            if col in (ID, PAYLOAD):
                continue
            dim = vectors_to_numpy(result.column(col)).shape[1]
            old = out.vector(col)
            specs.append(VectorSpec(col, dim, old.distance if old else vectors[0].distance))
        return replace(out, vectors=tuple(specs),
                       payload_schema={**infer_payload_schema(payload_dicts(result)), **schema},
                       unnamed_vector=out.unnamed_vector and len(specs) == 1)
