"""The columnar checksum: what it always detects, what it ignores, and a pinned digest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ray_migrate.checksum import (
    ALGORITHM,
    Digest,
    bucket_of,
    buckets_of,
    digest_of,
    point_hashes,
    row_hashes,
)
from ray_migrate.schema import ID, PAYLOAD

SEEDS = range(300)


def _strings(values: list[bytes]) -> pa.Array:
    """A string array over these exact bytes (a flipped bit may leave invalid UTF-8)."""
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [None, pa.py_buffer(offsets.tobytes()),
                                  pa.py_buffer(b"".join(values))])


def _table(ids: list | np.ndarray, vecs: dict[str, np.ndarray], payloads: list[bytes]) -> pa.Table:
    id_col = pa.array(ids, pa.uint64()) if isinstance(ids, np.ndarray) else \
        _strings([i.encode() for i in ids])
    cols = {ID: id_col}
    for name in sorted(vecs):
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(vecs[name].reshape(-1)),
                                                       vecs[name].shape[1])
    cols[PAYLOAD] = _strings(payloads)
    return pa.table(cols)


def _random_parts(rng: np.random.Generator, n: int, str_ids: bool):
    ids = [f"p-{rng.integers(1 << 40)}-{i}" for i in range(n)] if str_ids else \
        np.unique(rng.integers(0, 2**64 - 1, size=n * 2, dtype=np.uint64))[:n]
    vecs = {name: rng.standard_normal((n, int(rng.integers(1, 9))), dtype=np.float32)
            for name in ("b", "a")[: int(rng.integers(1, 3))]}
    payloads = [("{\"k\":\"" + "é" * int(rng.integers(0, 5)) + "x" * int(rng.integers(0, 40))
                 + "\"}").encode() for _ in range(n)]
    return list(ids) if str_ids else ids, vecs, payloads


def _flip(rng: np.random.Generator, ids, vecs, payloads, str_ids: bool) -> str:
    """Flip one random bit of one field of one row, in place; say which."""
    row, what = int(rng.integers(len(payloads))), rng.choice(["vector", "payload", "id"])
    if what == "vector":
        name = sorted(vecs)[int(rng.integers(len(vecs)))]
        word = int(rng.integers(vecs[name].shape[1]))
        vecs[name].view(np.uint32)[row, word] ^= np.uint32(1 << int(rng.integers(32)))
    elif what == "payload":
        b = bytearray(payloads[row])
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        payloads[row] = bytes(b)
    elif str_ids:
        b = bytearray(ids[row].encode())
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(7))  # stays ASCII
        ids[row] = b.decode()
    else:
        ids[row] ^= np.uint64(1 << int(rng.integers(64)))
    return f"{what} of row {row}"


@pytest.mark.parametrize("str_ids", [False, True])
def test_one_flipped_bit_always_changes_the_row_the_digest_and_a_bucket(str_ids):
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        ids, vecs, payloads = _random_parts(rng, int(rng.integers(1, 40)), str_ids)
        before = _table(ids, vecs, payloads)
        ids = list(ids) if str_ids else ids.copy()
        vecs = {k: v.copy() for k, v in vecs.items()}
        what = _flip(rng, ids, vecs, payloads, str_ids)
        after = _table(ids, vecs, payloads)
        a, b = digest_of([before]), digest_of([after])
        assert a.total != b.total, f"seed {seed}: flipped a bit of the {what}, same digest"
        assert a.differing_buckets(b), f"seed {seed}: {what}: no bucket differs"
        assert not a.same_as(b)


def test_order_merge_and_batch_split_do_not_matter():
    rng = np.random.default_rng(5)
    for str_ids in (False, True):
        t = _table(*_random_parts(rng, 200, str_ids))
        whole = digest_of([t])
        shuffled = digest_of([t.take(rng.permutation(200))])
        parts = Digest().add(t.slice(150)).merge(digest_of([t.slice(0, 70), t.slice(70, 80)]))
        chunked = digest_of([pa.concat_tables([t.slice(0, 33), t.slice(33)])])
        assert whole.to_dict() == shuffled.to_dict() == parts.to_dict() == chunked.to_dict()
        assert whole.count == 200 and sum(c for c, _ in whole.buckets) == 200
        assert Digest.from_dict(whole.to_dict()).same_as(whole)


def test_int_and_str_ids_bucket_alike_one_by_one_and_as_arrays():
    ints = pa.array([0, 1, 2**64 - 1, 12345], pa.uint64())
    strs = pa.array(["a", "", "0f8fad5b-d9cb-469f-a165-70867728950e", "12345"])
    assert list(buckets_of(ints)) == [bucket_of(i) for i in ints.to_pylist()]
    assert list(buckets_of(strs)) == [bucket_of(s) for s in strs.to_pylist()]
    spread = buckets_of(pa.array(np.arange(6400), pa.uint64()))
    assert np.bincount(spread, minlength=64).min() > 50  # about 100 each


def test_a_null_vector_differs_from_a_zero_one_and_ignores_its_slot():
    zero = np.zeros(3, dtype=np.float32)
    vals = pa.array(np.concatenate([zero, np.ones(3, np.float32)]))
    ok = pa.FixedSizeListArray.from_arrays(vals, 3)
    null_first = pa.FixedSizeListArray.from_arrays(vals, 3, mask=pa.array([True, False]))
    other_slot = pa.FixedSizeListArray.from_arrays(pa.array(np.full(6, 7, np.float32)), 3,
                                                   mask=pa.array([True, False]))

    def table(vec):
        return pa.table({ID: pa.array([1, 2], pa.uint64()), "vector": vec,
                         PAYLOAD: pa.array(["{}", "{}"])})

    zero_h, null_h, slot_h = (row_hashes(table(v))[0] for v in (ok, null_first, other_slot))
    assert (zero_h != null_h).all() and (null_h == slot_h).all()


def test_a_null_payload_is_an_empty_one():
    t = pa.table({ID: pa.array([1], pa.uint64()), PAYLOAD: pa.array([None], pa.string())})
    assert digest_of([t]).total == digest_of([t.set_column(1, PAYLOAD, pa.array(["{}"]))]).total


def test_golden_digest_pins_the_algorithm():
    """Changing the hash changes this digest: give it a new ``ALGORITHM`` tag too (stored
    digests of the old one must never compare equal to new ones)."""
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    t = _table(np.array([1, 2, 2**63], np.uint64), {"vector": vecs},
               [b"{}", '{"a":1,"t":"é"}'.encode(), b'{"x":[null,true]}'])
    assert ALGORITHM == "ml32x2-sm64-v1"
    assert digest_of([t]).hexdigest == "4725c6b54154d7ba4fb3f7f88ec4714a"
    ids, hashes = point_hashes(t)
    assert ids == [1, 2, 2**63] and len(set(hashes)) == 3


def test_a_digest_of_another_or_no_algorithm_never_equals():
    t = _table(*_random_parts(np.random.default_rng(1), 10, False))
    now = digest_of([t])
    for tag in (None, "blake2b"):
        old = Digest.from_dict({**now.to_dict(), "algorithm": tag})
        if tag is None:
            old = Digest.from_dict({k: v for k, v in now.to_dict().items() if k != "algorithm"})
        assert old.total == now.total and not old.same_as(now) and not now.same_as(old)
        assert now.differing_buckets(old) == list(range(64))
        with pytest.raises(ValueError, match="cannot merge"):
            now.merge(old)


@pytest.mark.parametrize("seed", range(20))
def test_strings_hash_the_same_through_the_padded_matrix_and_the_running_sums(seed,
                                                                              monkeypatch):
    """``_string_words`` takes the padded-matrix way for strings of similar lengths and the
    running-sum way otherwise: both give the same words, NUL bytes, multi-byte characters,
    empty strings, nulls, large strings and sliced arrays included."""
    import random

    import ray_migrate.checksum as cs

    rng = random.Random(seed)
    alphabet = ["a", "\x00", "é", "✓", "z", " "]
    for case in range(15):
        n, longest = rng.randint(0, 40), rng.choice([0, 1, 3, 12, 40])
        vals = [None if rng.random() < 0.2 else
                "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))
                for _ in range(n)]
        arr = pa.array(vals, pa.large_string() if case % 4 == 0 else pa.string())
        if n > 2 and case % 3 == 0:
            arr = arr.slice(1, n - 2)
        monkeypatch.setattr(cs, "PAD_AT_MOST", 10**9)
        padded = cs._string_words(arr, cs._K_MISC)
        monkeypatch.setattr(cs, "PAD_AT_MOST", -1)
        summed = cs._string_words(arr, cs._K_MISC)
        assert all(np.array_equal(a, b) for a, b in zip(padded, summed, strict=True)), \
            f"seed {seed} case {case}: {vals!r}"
