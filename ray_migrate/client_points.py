"""The application's points checked before anything is written: ids the collection can hold,
every vector present with its dimension and no NaN or infinity, JSON payloads. A bad point
raises ``InvalidPointError`` (a ``ValueError``) naming the id and the fault."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from ray_migrate.errors import InvalidDataError, InvalidPointError
from ray_migrate.schema import (
    ID,
    UINT64_MAX,
    CollectionInfo,
    canonical_json,
    check_vectors,
    make_batch,
)


def check_id(info: CollectionInfo, pid: Any) -> Any:
    """``pid`` as the collection stores ids, or InvalidPointError naming it."""
    if info.id_type == "int":
        if isinstance(pid, bool) or not isinstance(pid, (int, np.integer)):
            raise InvalidPointError(f"id {pid!r}: this collection has unsigned integer ids")
        if not 0 <= int(pid) <= UINT64_MAX:
            raise InvalidPointError(f"id {pid!r}: ids must be in 0..2**64-1")
        return int(pid)
    if not isinstance(pid, (str, uuid.UUID)):
        raise InvalidPointError(f"id {pid!r}: this collection has string (UUID) ids")
    return str(pid)


def points_table(info: CollectionInfo, points: Iterable[dict[str, Any]] | pa.Table) -> pa.Table:
    """Validate points (ids, dimensions, NaN) and make a canonical table in source terms."""
    table = points if isinstance(points, pa.Table) else _from_dicts(info, list(points))
    try:
        check_vectors(table, info)
    except InvalidDataError as err:
        raise InvalidPointError(str(err)) from None
    ids = table.column(ID).to_pylist()
    if len(set(ids)) < len(ids):  # the last write of an id wins, as in one engine call
        last = {pid: i for i, pid in enumerate(ids)}
        table = table.take(sorted(last.values()))
    return table


def _from_dicts(info: CollectionInfo, pts: list[Any]) -> pa.Table:
    """Points given as dicts ({"id", "vector" or named vectors, "payload"}) as a batch."""
    ids, payloads = [], []
    vecs: dict[str, list[Any]] = {v.name: [] for v in info.vectors}
    for p in pts:
        if not isinstance(p, dict) or "id" not in p:
            raise InvalidPointError(f"each point must be a dict with 'id': got {p!r}"[:200])
        ids.append(check_id(info, p["id"]))
        v = p.get("vector")
        named = v if isinstance(v, dict) else {info.vectors[0].name: v}
        for spec in info.vectors:
            if named.get(spec.name) is None:
                raise InvalidPointError(f"point {p['id']!r}: vector {spec.name!r} is "
                                       "missing")
            arr = np.asarray(named[spec.name], dtype=np.float32)
            if arr.shape != (spec.dim,):
                raise InvalidPointError(f"point {p['id']!r}: vector {spec.name!r} has "
                                       f"shape {arr.shape}; expected ({spec.dim},)")
            vecs[spec.name].append(arr)
        payload = p.get("payload") or {}
        try:
            canonical_json(payload)
        except (TypeError, ValueError) as err:
            raise InvalidPointError(f"point {p['id']!r}: payload is not JSON: {err}") from None
        payloads.append(payload)
    return make_batch(info, ids,
                      {k: np.stack(v) if v else np.zeros((0, 1), np.float32)
                       for k, v in vecs.items()}, payloads)


__all__ = ["check_id", "points_table"]
