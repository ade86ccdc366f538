"""Qdrant's JSON filters as a predicate on (id, payload), evaluated by the gateway on the points
the routed reads return. Supported: ``must`` / ``should`` (with ``min_should``) / ``must_not``,
nested filters, field conditions with ``match`` (``value``, ``any``, ``except``), ``range``,
``is_empty`` and ``is_null``, and ``has_id``. Anything else raises ``Unsupported`` naming it,
which the gateway answers with a Qdrant-shaped 400.

Keys are payload paths (``metadata.source``); a list on the path matches when any element
does, as in Qdrant. An equality on ``units.field`` in ``must`` is also handed to the routed
read, which then reads that tenant's unit only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Pred = Callable[[Any, dict[str, Any]], bool]


class Unsupported(ValueError):
    """A request the gateway does not implement; the message names what."""


def _values(payload: dict[str, Any], key: str) -> list[Any]:
    """The values at a dotted payload path; lists on the way are expanded (any element)."""
    current: list[Any] = [payload]
    for part in key.replace("[]", "").split("."):
        nxt: list[Any] = []
        for value in current:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and part in item:
                    nxt.append(item[part])
        current = nxt
    out: list[Any] = []
    for value in current:
        out.extend(value if isinstance(value, list) else [value])
    return out


def _same_id(a: Any, b: Any) -> bool:
    return str(a).lower() == str(b).lower() if isinstance(a, str) or isinstance(b, str) \
        else a == b


def _eq(value: Any, want: Any) -> bool:
    """Equality as Qdrant's payload index: ``true`` is not ``1``."""
    if isinstance(value, bool) or isinstance(want, bool):
        return type(value) is type(want) and value == want
    return value == want


def _match(match: Any) -> Callable[[list[Any]], bool]:
    if not isinstance(match, dict):
        raise Unsupported(f"match {match!r}: expected an object")
    if "value" in match:
        want = match["value"]
        return lambda vals: any(_eq(v, want) for v in vals)
    if "any" in match:
        allowed = list(match["any"])
        return lambda vals: any(_eq(v, a) for v in vals for a in allowed)
    if "except" in match:
        banned = list(match["except"])
        return lambda vals: any(not any(_eq(v, b) for b in banned) for v in vals)
    raise Unsupported(f"match condition {sorted(match)} is not supported by the gateway "
                      "(supported: value, any, except)")


def _range(rng: Any) -> Callable[[list[Any]], bool]:
    if not isinstance(rng, dict) or not set(rng) <= {"lt", "gt", "gte", "lte"}:
        raise Unsupported(f"range {rng!r} is not supported by the gateway (supported: a "
                          "numeric range with lt, gt, gte, lte)")
    lt, gt, gte, lte = (rng.get(k) for k in ("lt", "gt", "gte", "lte"))

    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return ((lt is None or v < lt) and (gt is None or v > gt)
                and (gte is None or v >= gte) and (lte is None or v <= lte))
    return lambda vals: any(ok(v) for v in vals)


def _field(cond: dict[str, Any]) -> Pred:
    key = cond["key"]
    present = [k for k in cond if k != "key" and cond[k] is not None]
    if len(present) != 1:
        raise Unsupported(f"field condition on {key!r} with {present or 'no'} conditions: "
                          "the gateway supports exactly one of match, range, is_empty, is_null")
    kind = present[0]
    if kind == "match":
        test = _match(cond["match"])
        return lambda _pid, payload: test(_values(payload, key))
    if kind == "range":
        test = _range(cond["range"])
        return lambda _pid, payload: test(_values(payload, key))
    if kind in ("is_empty", "is_null"):
        raise Unsupported(f"{kind} is not supported by the gateway (key {key!r})")
    raise Unsupported(f"field condition {kind!r} on {key!r} is not supported by the gateway "
                      "(supported: match, range)")


def _condition(cond: Any) -> Pred:
    if not isinstance(cond, dict):
        raise Unsupported(f"filter condition {cond!r}: expected an object")
    if "key" in cond:
        return _field(cond)
    if "has_id" in cond:
        ids = list(cond["has_id"])
        return lambda pid, _payload: any(_same_id(pid, i) for i in ids)
    if {"must", "should", "must_not"} & set(cond):
        return compile_filter(cond)
    if "filter" in cond:
        return compile_filter(cond["filter"])
    name = next(iter(cond), "empty")
    raise Unsupported(f"filter condition {name!r} is not supported by the gateway "
                      "(supported: field match/range, has_id, nested must/should/must_not)")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def compile_filter(flt: Any) -> Pred:
    """A Qdrant ``Filter`` object as a predicate on (id, payload); raises ``Unsupported``."""
    if flt is None:
        return lambda _pid, _payload: True
    if not isinstance(flt, dict):
        raise Unsupported(f"filter {flt!r}: expected an object")
    unknown = set(flt) - {"must", "should", "must_not", "min_should"}
    if unknown:
        raise Unsupported(f"filter keys {sorted(unknown)} are not supported by the gateway")
    if flt.get("min_should") is not None:
        raise Unsupported("min_should is not supported by the gateway")
    must = [_condition(c) for c in _as_list(flt.get("must"))]
    should = [_condition(c) for c in _as_list(flt.get("should"))]
    must_not = [_condition(c) for c in _as_list(flt.get("must_not"))]

    def pred(pid: Any, payload: dict[str, Any]) -> bool:
        return (all(c(pid, payload) for c in must)
                and (not should or any(c(pid, payload) for c in should))
                and not any(c(pid, payload) for c in must_not))
    return pred


def tenant_equality(flt: Any, field: str | None) -> dict[str, Any]:
    """{field: value} when ``must`` holds a plain ``match.value`` on the tenant field, so the
    routed read can read that unit only; else {}."""
    if not field or not isinstance(flt, dict):
        return {}
    for cond in _as_list(flt.get("must")):
        if isinstance(cond, dict) and cond.get("key") == field and \
                isinstance(cond.get("match"), dict) and "value" in cond["match"]:
            return {field: cond["match"]["value"]}
    return {}


__all__ = ["Unsupported", "compile_filter", "tenant_equality"]
