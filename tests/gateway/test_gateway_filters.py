"""Qdrant's filters as the gateway evaluates them (plain Python, no cluster): payload paths,
lists matching by any element, ``true`` not ``1``, ranges on numbers only, nested filters;
and every condition it does not implement refused with a message naming it."""

from __future__ import annotations

import pytest

from ray_migrate.gateway.filters import Unsupported, compile_filter, tenant_equality

DOC = {"tenant": "t1", "n": 5, "flag": True, "tags": ["a", "b"],
       "meta": {"src": "web", "items": [{"k": 1}, {"k": 2}]}}


@pytest.mark.parametrize("flt, expected", [
    ({"must": [{"key": "tenant", "match": {"value": "t1"}}]}, True),
    ({"must": [{"key": "meta.src", "match": {"value": "web"}}]}, True),
    ({"must": [{"key": "meta.items[].k", "match": {"value": 2}}]}, True),
    ({"must": [{"key": "tags", "match": {"value": "b"}}]}, True),
    ({"must": [{"key": "tags", "match": {"any": ["x", "a"]}}]}, True),
    ({"must": [{"key": "tags", "match": {"except": ["a", "b"]}}]}, False),
    ({"must": [{"key": "flag", "match": {"value": 1}}]}, False),
    ({"must": [{"key": "n", "match": {"value": True}}]}, False),
    ({"must": [{"key": "n", "range": {"gt": 4, "lte": 5}}]}, True),
    ({"must": [{"key": "tenant", "range": {"gt": 0}}]}, False),
    ({"must": [{"key": "missing", "match": {"value": 1}}]}, False),
    ({"must_not": [{"has_id": [7, 8]}]}, True),
    ({"must": [{"has_id": [7]}]}, False),
    ({"should": [{"key": "n", "range": {"lt": 0}}, {"has_id": [3]}]}, True),
    ({"should": [{"key": "n", "range": {"lt": 0}}]}, False),
    ({"must": [{"must_not": [{"key": "tenant", "match": {"value": "t2"}}]}]}, True),
    ({}, True),
])
def test_filters_match_as_qdrant_does(flt, expected):
    assert compile_filter(flt)(3, DOC) is expected


@pytest.mark.parametrize("flt, named", [
    ({"must": [{"key": "loc", "geo_radius": {"center": {"lon": 0, "lat": 0}, "radius": 1}}]},
     "geo_radius"),
    ({"must": [{"key": "title", "match": {"text": "hello"}}]}, "['text']"),
    ({"must": [{"key": "tags", "values_count": {"gt": 1}}]}, "values_count"),
    ({"must": [{"is_empty": {"key": "tags"}}]}, "is_empty"),
    ({"must": [{"nested": {"key": "meta.items", "filter": {}}}]}, "nested"),
    ({"min_should": {"conditions": [], "min_count": 1}}, "min_should"),
    ({"must": [{"key": "n", "range": {"gt": "2024-01-01T00:00:00Z", "lt": None,
                                      "format": "x"}}]}, "range"),
])
def test_what_the_gateway_does_not_implement_is_named(flt, named):
    with pytest.raises(Unsupported, match=named.replace("[", r"\[").replace("]", r"\]")):
        compile_filter(flt)


def test_the_tenant_equality_reaches_the_routed_read():
    flt = {"must": [{"key": "n", "range": {"gt": 1}}, {"key": "tenant", "match": {"value": "t1"}}]}
    assert tenant_equality(flt, "tenant") == {"tenant": "t1"}
    assert tenant_equality({"should": flt["must"]}, "tenant") == {}
    assert tenant_equality(flt, None) == {}
