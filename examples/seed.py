"""Seed a sample source collection for the examples: synthetic multi-tenant documents.

    python examples/seed.py --kind qdrant --path examples/data/qdrant --collection docs \\
        --points 20000 --tenants 8 --dim 64
    python examples/seed.py --kind lancedb --uri examples/data/lance_src --table docs \\
        --points 20000 --tenants 8 --dim 64

The data is deterministic (one numpy seed): the same arguments give the same ids, vectors and
payloads. Each point has an integer id, one vector and a payload with ``tenant`` (tenants have
uneven sizes), ``title``, ``rank`` (int), ``tags`` (a list of strings) and ``meta`` (a nested
object); every 7th point has no ``rank`` and every 11th no ``meta``.

This script uses qdrant-client and lancedb directly, as an application would; it does not use
ray_migrate. A LanceDB table is made the way a LanceDB user makes one: ``id`` int64, ``vector``
fixed_size_list<float32>, and one plain column per payload key (missing keys are nulls).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

WORDS = ("vector", "search", "index", "migration", "tenant", "shard", "query", "embedding",
         "cluster", "replica", "payload", "filter", "recall", "latency", "batch", "snapshot")
TAGS = ("news", "docs", "blog", "faq", "legal", "support", "internal", "archive")
LANGS = ("en", "de", "fr", "es", "ja")


def tenant_names(n: int) -> list[str]:
    return [f"tenant-{i:02d}" for i in range(n)]


def generate(points: int, tenants: int, dim: int, seed: int,
             batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """Batches of (ids int64, vectors float32 (n, dim), payload dicts), deterministic."""
    rng = np.random.default_rng(seed)
    names = tenant_names(tenants)
    weights = 1.0 / np.arange(1, tenants + 1)  # uneven tenants, like real ones
    weights /= weights.sum()
    for start in range(0, points, batch_size):
        n = min(batch_size, points - start)
        ids = np.arange(start, start + n, dtype=np.int64)
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        tenant_idx = rng.choice(tenants, size=n, p=weights)
        words = rng.integers(0, len(WORDS), size=(n, 3))
        ranks = rng.integers(0, 1000, size=n)
        n_tags = rng.integers(0, 4, size=n)
        tag_idx = rng.integers(0, len(TAGS), size=(n, 3))
        scores = rng.random(n)
        langs = rng.integers(0, len(LANGS), size=n)
        payloads = []
        for i in range(n):
            pid = int(ids[i])
            p: dict[str, Any] = {
                "tenant": names[int(tenant_idx[i])],
                "title": " ".join(WORDS[int(w)] for w in words[i]) + f" #{pid}",
                "tags": sorted({TAGS[int(t)] for t in tag_idx[i, : int(n_tags[i])]}),
            }
            if pid % 7 != 0:
                p["rank"] = int(ranks[i])
            if pid % 11 != 0:
                p["meta"] = {"lang": LANGS[int(langs[i])], "score": round(float(scores[i]), 6),
                             "source": {"kind": "seed", "batch": start // batch_size}}
            payloads.append(p)
        yield ids, vectors, payloads


def seed_qdrant(args: argparse.Namespace) -> int:
    from qdrant_client import QdrantClient, models

    client = (QdrantClient(url=args.url, api_key=args.api_key) if args.url
              else QdrantClient(path=args.path))
    try:
        if client.collection_exists(args.collection):
            if not args.overwrite:
                sys.exit(f"collection {args.collection!r} exists; pass --overwrite to replace it")
            client.delete_collection(args.collection)
        distance = {"cosine": models.Distance.COSINE, "l2": models.Distance.EUCLID,
                    "dot": models.Distance.DOT}[args.distance]
        client.create_collection(
            args.collection, vectors_config=models.VectorParams(size=args.dim, distance=distance))
        for ids, vectors, payloads in generate(args.points, args.tenants, args.dim, args.seed,
                                               args.batch_size):
            client.upsert(args.collection, points=models.Batch(
                ids=ids.tolist(), vectors=vectors.tolist(), payloads=payloads), wait=True)
        # Filtering by tenant is what units by tenant do; index it as a real deployment would.
        if args.url:
            client.create_payload_index(args.collection, "tenant",
                                        field_schema=models.PayloadSchemaType.KEYWORD)
        return client.count(args.collection, exact=True).count
    finally:
        client.close()


def lance_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("id", pa.int64(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), dim)),
        pa.field("tenant", pa.string()),
        pa.field("title", pa.string()),
        pa.field("rank", pa.int64()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("meta", pa.struct([
            pa.field("lang", pa.string()),
            pa.field("score", pa.float64()),
            pa.field("source", pa.struct([pa.field("kind", pa.string()),
                                          pa.field("batch", pa.int64())])),
        ])),
    ])


def lance_batches(args: argparse.Namespace, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for ids, vectors, payloads in generate(args.points, args.tenants, args.dim, args.seed,
                                           args.batch_size):
        flat = pa.array(vectors.reshape(-1), pa.float32())
        cols = {
            "id": pa.array(ids, pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, args.dim),
        }
        for key in ("tenant", "title", "rank", "tags", "meta"):
            cols[key] = pa.array([p.get(key) for p in payloads], schema.field(key).type)
        yield pa.RecordBatch.from_pydict(cols, schema=schema)


def seed_lancedb(args: argparse.Namespace) -> int:
    import lancedb

    db = lancedb.connect(args.uri)
    schema = lance_schema(args.dim)
    reader = pa.RecordBatchReader.from_batches(schema, lance_batches(args, schema))
    mode = "overwrite" if args.overwrite else "create"
    try:
        table = db.create_table(args.table, data=reader, schema=schema, mode=mode)
    except (ValueError, OSError) as err:
        if "exist" in str(err).lower():
            sys.exit(f"table {args.table!r} exists; pass --overwrite to replace it")
        raise
    return table.count_rows()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("qdrant", "lancedb"), required=True)
    ap.add_argument("--path", help="Qdrant local-mode folder")
    ap.add_argument("--url", help="Qdrant server URL (instead of --path)")
    ap.add_argument("--api-key", default=None, help="Qdrant server API key")
    ap.add_argument("--collection", default="docs", help="Qdrant collection name")
    ap.add_argument("--uri", help="LanceDB database folder or object-store URI")
    ap.add_argument("--table", default="docs", help="LanceDB table name")
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--distance", choices=("cosine", "l2", "dot"), default="cosine",
                    help="Qdrant collection metric (LanceDB tables keep none)")
    ap.add_argument("--seed", type=int, default=42, help="numpy seed")
    ap.add_argument("--batch-size", type=int, default=1000, help="points per write")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing collection")
    args = ap.parse_args(argv)
    if args.kind == "qdrant" and bool(args.path) == bool(args.url):
        ap.error("--kind qdrant needs exactly one of --path or --url")
    if args.kind == "lancedb" and not args.uri:
        ap.error("--kind lancedb needs --uri")
    if args.points < 0 or args.tenants < 1 or args.dim < 1 or args.batch_size < 1:
        ap.error("--points must be >= 0; --tenants, --dim and --batch-size >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    count = seed_qdrant(args) if args.kind == "qdrant" else seed_lancedb(args)
    where = (args.path or args.url) if args.kind == "qdrant" else args.uri
    name = args.collection if args.kind == "qdrant" else args.table
    print(f"seeded {count} points into {args.kind} {where} / {name} "
          f"({args.tenants} tenants, dim {args.dim}) in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
