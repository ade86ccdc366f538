"""Digests and transforms on canonical batches (pure functions, no engine)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from ray_migrate.checksum import Digest, digest_of
from ray_migrate.config import TransformConfig
from ray_migrate.errors import ConfigError, InvalidDataError
from ray_migrate.schema import (
    CollectionInfo,
    VectorSpec,
    check_vectors,
    infer_payload_schema,
    make_batch,
    payload_dicts,
    vectors_to_numpy,
)
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

INFO = CollectionInfo("c", (VectorSpec("vector", 4, "dot"),), "int")


def batch(ids, seed=0, payloads=None):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((len(ids), 4), dtype=np.float32)
    payloads = payloads or [{"tenant": f"t{i % 2}", "n": i} for i in ids]
    return make_batch(INFO, ids, {"vector": vecs}, payloads)


def test_digest_is_order_independent_and_mergeable():
    t = batch(list(range(50)))
    whole = digest_of([t])
    parts = Digest().add(t.slice(30)).merge(Digest().add(t.slice(0, 30)))
    shuffled = digest_of([t.take(np.random.default_rng(1).permutation(50))])
    assert whole.hexdigest == parts.hexdigest == shuffled.hexdigest
    assert whole.count == 50
    assert Digest.from_dict(whole.to_dict()).to_dict() == whole.to_dict()


def test_digest_sees_one_bit_of_one_vector_and_localizes_it():
    t = batch(list(range(50)))
    vecs = vectors_to_numpy(t.column("vector")).copy()
    vecs.view(np.uint32)[17, 2] ^= 1  # flip the lowest mantissa bit
    changed = make_batch(INFO, list(range(50)), {"vector": vecs}, payload_dicts(t))
    a, b = digest_of([t]), digest_of([changed])
    assert a.count == b.count and a.hexdigest != b.hexdigest
    assert len(a.differing_buckets(b)) == 1


def test_digest_sees_payload_changes_and_duplicates():
    t = batch([1, 2])
    other = batch([1, 2], payloads=[{"tenant": "t1", "n": 1}, {"tenant": "t0", "n": 2.0}])
    assert digest_of([t]).hexdigest != digest_of([other]).hexdigest
    assert digest_of([t, t.slice(0, 1)]).count == 3


def test_check_vectors_names_the_point():
    vecs = np.ones((2, 4), dtype=np.float32)
    vecs[1, 3] = np.nan
    t = make_batch(INFO, [5, 6], {"vector": vecs}, [{}, {}])
    with pytest.raises(InvalidDataError, match="point 6: vector 'vector' holds NaN"):
        check_vectors(t, INFO)
    wrong = CollectionInfo("c", (VectorSpec("vector", 8, "dot"),), "int")
    with pytest.raises(InvalidDataError, match="dimension 4; the collection expects 8"):
        check_vectors(make_batch(INFO, [1], {"vector": vecs[:1]}, [{}]), wrong)


def test_infer_payload_schema_picks_exact_types():
    schema = infer_payload_schema([
        {"a": 1, "b": 1.5, "c": "x", "d": True, "e": [1], "f": 1, "g": 2**63},
        {"a": None, "b": 2.5, "f": 1.5},
    ])
    assert schema == {"a": "int", "b": "float", "c": "string", "d": "bool", "e": "json",
                      "f": "json", "g": "json"}


def test_rename_drop_and_vector_rename_and_their_inverse():
    cfg = TransformConfig(rename_fields={"n": "num"}, drop_fields=[],
                          rename_vectors={"vector": "emb"})
    t = batch([1, 2])
    out = Transform(cfg).apply(t)
    assert out.column_names == ["id", "emb", "payload"]
    assert payload_dicts(out) == [{"tenant": "t1", "num": 1}, {"tenant": "t0", "num": 2}]
    back = Transform(cfg, inverse=True).apply(out)
    assert back.equals(t)
    assert cfg.invertible
    assert not TransformConfig(drop_fields=["n"]).invertible


def test_target_unit_follows_a_renamed_tenant_field():
    tr = Transform(TransformConfig(rename_fields={"tenant": "org"}))
    unit = UnitSpec("tenant=t1", "tenant", field="tenant", value="t1")
    assert tr.target_unit(unit).field == "org"
    with pytest.raises(ConfigError, match="drops 'tenant', the units.field"):
        Transform(TransformConfig(drop_fields=["tenant"])).target_unit(unit)


def test_function_transform_changes_dimension_and_is_seen_in_target_info(tmp_path, monkeypatch):
    (tmp_path / "my_embed.py").write_text(textwrap.dedent("""
        import numpy as np, pyarrow as pa
        from ray_migrate.schema import vectors_to_arrow, vectors_to_numpy
        def double(t):
            v = vectors_to_numpy(t.column("vector"))
            return t.set_column(1, "vector", vectors_to_arrow(np.hstack([v, v])))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    tr = Transform(TransformConfig(function="my_embed:double"))
    info = tr.target_info(INFO, batch([1, 2]))
    assert info.vector("vector").dim == 8
    sys.modules.pop("my_embed", None)


def test_missing_function_module_is_a_config_error():
    with pytest.raises(ConfigError, match="transform.function: cannot import module 'nope_mod'"):
        Transform(TransformConfig(function="nope_mod:f"))


def test_vectors_roundtrip_bit_exact():
    arr = np.random.default_rng(3).standard_normal((10, 7)).astype(np.float32)
    from ray_migrate.schema import vectors_to_arrow

    back = vectors_to_numpy(pa.chunked_array([vectors_to_arrow(arr)]))
    assert back.tobytes() == arr.tobytes()
