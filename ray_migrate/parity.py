"""Query parity: does the target answer searches as well as the source, unit by unit.

``queries`` points sampled from the unit are searched on both sides through each engine's own
search (``Backend.search``), once within the unit (its payload filter or id range) and once
over the whole collection. Each side's answers are scored against exact brute force over the
unit: the source's in the source's space, the target's in its own space (the transform
applied to the unit's source points, so a ``transform.function`` that re-embeds is judged in
the new model's space and a target missing true neighbours shows it). Runs in a unit worker,
next to the data, like verify. With ``transform.query_function`` the target is searched with
the query as clients send it (the source vector through that function, ``reembed``), and
``recall_at_k_new_vs_old`` says how many of the old model's exact top-k the new model's
answers keep, on the same queries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ray_migrate.backends.base import Backend
from ray_migrate.config import ParityConfig
from ray_migrate.errors import ConfigError
from ray_migrate.plan import Plan
from ray_migrate.schema import ID, vectors_to_numpy
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

MAX_EXACT_POINTS = 200_000  # brute force reads at most this many points of a unit
MAX_EXACT_FLOATS = 25_000_000  # and at most this many floats per side (100 MB): 32k at 768-d


@dataclass
class Side:
    """A unit's points in one side's space: ids, vectors (n, dim) and the metric."""

    ids: list[Any]
    vectors: np.ndarray
    distance: str

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Higher is better, as ``client.similarity`` puts both engines."""
        if self.distance == "cosine":
            norms = np.linalg.norm(self.vectors, axis=1) * max(float(np.linalg.norm(q)), 1e-30)
            return (self.vectors @ q) / np.maximum(norms, 1e-30)
        if self.distance == "dot":
            return self.vectors @ q
        if self.distance == "l2":
            return -np.sum((self.vectors - q) ** 2, axis=1)
        return -np.sum(np.abs(self.vectors - q), axis=1)  # manhattan

    def top(self, q: np.ndarray, k: int) -> list[Any]:
        order = np.argsort(-self.scores(q), kind="stable")[:k]
        return [self.ids[i] for i in order]


@dataclass
class ParityResult:
    k: int
    queries: int
    recall_at_k_source: float
    recall_at_k_target: float
    overlap_at_k: float
    p50_ms_source: float
    p95_ms_source: float
    p50_ms_target: float
    p95_ms_target: float
    exact_points: int  # points of the unit the brute force ran over
    bounded: bool  # the unit had more than MAX_EXACT_POINTS: recall is then a lower bound
    unfiltered: dict[str, float] = field(default_factory=dict)
    recall_at_k_new_vs_old: float | None = None  # with transform.query_function only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_unit(unit: UnitSpec, source: Backend, transform: Transform, name: str,
              batch_size: int, limit: int = MAX_EXACT_POINTS) -> tuple[np.ndarray, np.ndarray,
                                                                          list[Any], bool]:
    """The unit's vectors in the source's space and in the target's (transform applied), the
    ids, and whether the unit had more points than ``limit``."""
    tname = transform.rename_vectors.get(name, name)
    src, dst, ids = [], [], []
    n, bounded = 0, False
    for batch, _ in source.scan(unit, batch_size):
        if n + batch.num_rows > limit:
            batch, bounded = batch.slice(0, limit - n), True
        out = transform.apply(batch)
        src.append(vectors_to_numpy(batch.column(name)))
        dst.append(vectors_to_numpy(out.column(tname)))
        ids += batch.column(ID).to_pylist()
        n += batch.num_rows
        if bounded:
            break
    if not ids:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), [], False
    return np.concatenate(src), np.concatenate(dst), ids, bounded


def _timed(backend: Backend, q: np.ndarray, k: int, name: str,
           unit: UnitSpec | None) -> tuple[list[Any], float]:
    start = time.perf_counter()
    hits = backend.search(q.tolist(), k, name, unit=unit, exact=False)  # through the index
    return [h.id for h in hits], (time.perf_counter() - start) * 1000


def _pct(ms: list[float], p: float) -> float:
    return float(np.percentile(ms, p)) if ms else 0.0


def _recall_in_unit(hits: list[Any], truth: Side, q: np.ndarray, members: set[Any]) -> float:
    """An unfiltered search's hits that lie in the unit must be the unit's own top-m."""
    mine = [h for h in hits if h in members]
    if not mine:
        return 1.0
    return len(set(mine) & set(truth.top(q, len(mine)))) / len(mine)


def unit_parity(unit: UnitSpec, source: Backend, target: Backend, transform: Transform,
                vector: tuple[str, str, str], queries: int, k: int, batch_size: int = 2000,
                seed: int = 0, limit: int = MAX_EXACT_POINTS) -> ParityResult | None:
    """Parity of one unit; None when it has no points. ``vector``: (source name, source
    distance, target distance) of the vector searched; ``limit``: points read at most."""
    name, src_dist, dst_dist = vector
    src_vecs, dst_vecs, ids, bounded = read_unit(unit, source, transform, name, batch_size,
                                                 limit)
    if not ids:
        return None
    if bounded:
        log.warning("unit %s: parity's brute force reads only the first %d points; its "
                    "recall is a lower bound", unit.unit_id, limit)
    sides = {"source": Side(ids, src_vecs, src_dist), "target": Side(ids, dst_vecs, dst_dist)}
    picks = np.random.default_rng(seed).choice(len(ids), size=min(queries, len(ids)),
                                               replace=False)
    tname = transform.rename_vectors.get(name, name)
    how = {"source": (source, name, unit), "target": (target, tname, transform.target_unit(unit))}
    members = set(ids)
    recall = {s: [] for s in sides} | {f"u_{s}": [] for s in sides}
    ms: dict[str, list[float]] = {s: [] for s in sides} | {f"u_{s}": [] for s in sides}
    overlap, vs_old = [], []
    for i in picks:
        got = {}
        for side, (backend, vname, scope) in how.items():
            q = _query(side, i, src_vecs, dst_vecs, transform)
            truth = sides[side].top(q, k)
            got[side], t = _timed(backend, q, k, vname, scope)
            recall[side].append(len(set(got[side]) & set(truth)) / len(truth))
            ms[side].append(t)
            wide, t = _timed(backend, q, k, vname, None)
            recall[f"u_{side}"].append(_recall_in_unit(wide, sides[side], q, members))
            ms[f"u_{side}"].append(t)
        overlap.append(len(set(got["source"]) & set(got["target"])) / k)
        old = sides["source"].top(src_vecs[i], k)
        vs_old.append(len(set(got["target"]) & set(old)) / len(old))
    mean = {key: float(np.mean(v)) for key, v in recall.items()}
    return ParityResult(
        k=k, queries=len(picks), recall_at_k_source=mean["source"],
        recall_at_k_target=mean["target"], overlap_at_k=float(np.mean(overlap)),
        p50_ms_source=_pct(ms["source"], 50), p95_ms_source=_pct(ms["source"], 95),
        p50_ms_target=_pct(ms["target"], 50), p95_ms_target=_pct(ms["target"], 95),
        exact_points=len(ids), bounded=bounded,
        unfiltered={"recall_at_k_source": mean["u_source"],
                    "recall_at_k_target": mean["u_target"],
                    "p95_ms_source": _pct(ms["u_source"], 95),
                    "p95_ms_target": _pct(ms["u_target"], 95)},
        recall_at_k_new_vs_old=(float(np.mean(vs_old)) if transform.query_function is not None
                                else None))


def _query(side: str, i: int, src_vecs: np.ndarray, dst_vecs: np.ndarray,
           transform: Transform) -> np.ndarray:
    """Point ``i`` as a query of ``side``: with a query function, the target gets the source
    vector through it (as a client's search does), else the point's own target vector."""
    if side == "source":
        return src_vecs[i]
    if transform.query_function is not None:
        return transform.embed_query(src_vecs[i], dst_vecs.shape[1])
    return dst_vecs[i]


def plan_parity(plan: Plan, unit: UnitSpec, source: Backend, target: Backend,
                transform: Transform, cfg: ParityConfig, batch_size: int = 2000
                ) -> dict[str, Any] | None:
    """``unit_parity`` of the configured vector (default the first), with each side's metric
    from the plan."""
    src = plan.source_info
    name = cfg.vector or src.vectors[0].name
    vec = src.vector(name)
    if vec is None:
        raise ConfigError(f"verify.parity.vector: {name!r} is not a vector of the source; "
                          f"it has {src.vector_names}")
    tvec = plan.target_info.vector(transform.rename_vectors.get(name, name))
    res = unit_parity(unit, source, target, transform,
                      (name, vec.distance, tvec.distance if tvec else vec.distance),
                      cfg.queries, cfg.k, batch_size=batch_size,
                      limit=max(1, min(MAX_EXACT_POINTS, MAX_EXACT_FLOATS // vec.dim)))
    return None if res is None else res.to_dict()


def recall_gate(result: dict[str, Any] | None, min_recall: float | None) -> str | None:
    """Why the unit must not be cut over (target recall below ``min_recall``), or None."""
    if min_recall is None or result is None:
        return None
    got = result["recall_at_k_target"]
    if got < min_recall:
        return (f"query parity: target recall@{result['k']} {got:.3f} is below "
                f"cutover.gates.min_recall {min_recall} (source {result['recall_at_k_source']:.3f},"
                f" {result['queries']} queries); the unit stays on the source")
    return None
