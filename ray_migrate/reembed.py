"""Searching while a re-embedding moves: queries in each side's space, answers merged.

A ``transform.function`` that re-embeds gives the target vectors of another model (perhaps
another dimension). A search of units on the target must then use the query in the target's
space: ``transform.query_function`` maps the source-space query vector to it (the vector,
not text: an application whose new model embeds text searches the target itself).

Scores of two models are not comparable, so while units of one search's scope are on both
sides the hits are merged by rank, not score: a side owning a share ``f`` of the scope's
units puts its hit of rank ``r`` (0-based) at the estimated rank ``(r + 1) / f`` of the whole
scope (its hits are spread through the whole as its points are, if units are of similar
size). Each hit keeps its own side's score. When every unit in scope is on one side (a
tenant's search, or any search before the first or after the last cutover) the answer is
that side's own exact top-k by its score.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np

from ray_migrate.errors import ConfigError
from ray_migrate.plan import Plan
from ray_migrate.transform import Transform

Hit = tuple[float, Any, dict[str, Any]]  # (score, id, payload)


def similarity(score: float, distance: str, higher_is_better: bool) -> float:
    """One scale for both engines: higher is better. Qdrant reports similarity for cosine and
    dot and a distance for l2/manhattan; LanceDB reports 1 - cos, 1 - dot and squared l2."""
    if distance in ("cosine", "dot"):
        return score if higher_is_better else 1.0 - score
    if distance == "l2":
        return -score if higher_is_better else -math.sqrt(max(score, 0.0))
    return -score


def side_query(forward: Transform, plan: Plan, side: str, q: np.ndarray, name: str
               ) -> np.ndarray:
    """The query vector to send to ``side`` for the source vector ``name``."""
    if side == "source":
        return q
    tname = forward.rename_vectors.get(name, name)
    spec = plan.target_info.vector(tname)
    dim = spec.dim if spec is not None else q.shape[0]
    if forward.query_function is not None:
        return forward.embed_query(q, dim)
    if dim != q.shape[0]:
        raise ConfigError(
            f"transform.function makes vector {tname!r} {dim}-d on the target but queries "
            f"are {q.shape[0]}-d: set transform.query_function (module:function mapping a "
            "source-space query vector to the target's space) to search units on the target")
    return q


def merge_hits(per_side: dict[str, list[Hit]], k: int, shares: dict[str, float],
               by_rank: bool) -> list[Hit]:
    """The top ``k`` of both sides' hits: by score (one space), or by estimated rank in the
    whole scope (two spaces, ``shares``: each side's share of the scope's units)."""
    answering = [s for s, hits in per_side.items() if hits]
    if not by_rank or len(answering) < 2:
        every = [h for hits in per_side.values() for h in hits]
        return heapq.nlargest(k, every, key=lambda h: (h[0], str(h[1])))
    ranked = []
    for side in answering:
        own = sorted(per_side[side], key=lambda h: (-h[0], str(h[1])))
        share = max(shares.get(side, 0.0), 1e-9)
        ranked += [((r + 1) / share, str(h[1]), h) for r, h in enumerate(own)]
    return [h for _, _, h in sorted(ranked, key=lambda x: x[:2])[:k]]


__all__ = ["merge_hits", "side_query", "similarity"]
