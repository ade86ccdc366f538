"""A LangChain ``QdrantVectorStore`` (langchain_qdrant) with a deterministic toy embedding adds
and searches documents through the gateway while a Qdrant-to-LanceDB migration is mid-way
(tenant t1 on the target): the store validates the collection as it would a Qdrant server's,
its documents land in the owners, and its searches (with a metadata filter) find them."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from gwserve import served
from langchain_core.embeddings import Embeddings  # langchain-qdrant is in the dev extra
from test_live import DIM, live_config, other_side, seed

from ray_migrate.driver import Migration
from ray_migrate.waves import switch_units


class ToyEmbeddings(Embeddings):
    """Each word adds a fixed pseudo-random vector: texts sharing words are near. Scaled to
    norm 10 so that, by dot product, a document outranks the collection's seeded points."""

    def _one(self, text: str) -> list[float]:
        v = np.zeros(DIM, np.float64)
        for word in text.lower().split():
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
            v += np.random.default_rng(seed).standard_normal(DIM)
        return (10 * v / (np.linalg.norm(v) or 1.0)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


DOCS = [("ray serve replicas answer requests", "serve"),
        ("lancedb stores columns in lance files", "lance"),
        ("qdrant filters payload with must and should", "qdrant"),
        ("a cutover flips one unit behind a short freeze", "routing"),
        ("leases fence writes while a unit flips", "routing")]


@pytest.fixture(scope="module")
def store(ray_cluster, tmp_path_factory) -> Any:
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import models

    root = tmp_path_factory.mktemp("lc")
    source, _ = seed("qdrant", root, n=120)
    cfg = live_config(root, f"lc-{root.name}", source, other_side("lancedb", root),
                      cutover={"mode": "manual"}, gateway={"num_cpus": 0},
                      payload_schema={"page_content": "string", "metadata": "json"})
    m = Migration(cfg)
    m.start()
    try:
        m.prepare_units()
        switch_units(m, ["tenant=t1"], "cutover")
        with served(cfg) as (client, url):
            yield QdrantVectorStore(client=client, collection_name="docs",
                                    embedding=ToyEmbeddings(), distance=models.Distance.DOT)
    finally:
        m.close()


def test_langchain_adds_and_searches_documents_through_the_gateway(store):
    from langchain_core.documents import Document
    from qdrant_client import models

    ids = store.add_documents([Document(page_content=text, metadata={"topic": topic})
                               for text, topic in DOCS], ids=list(range(9000, 9005)))
    assert ids == list(range(9000, 9005))
    for text, topic in DOCS:
        top = store.similarity_search(text, k=1)
        assert top[0].page_content == text and top[0].metadata["topic"] == topic
    only = models.Filter(must=[models.FieldCondition(key="metadata.topic",
                                                     match=models.MatchValue(value="routing"))])
    hits = store.similarity_search_with_score("a unit flips", k=5, filter=only)
    assert sorted(d.page_content for d, _ in hits) == sorted(t for t, c in DOCS if c == "routing")
    assert hits[0][1] >= hits[1][1]
    store.delete(ids=[9000])
    left = [d.metadata.get("topic") for d in store.similarity_search(DOCS[0][0], k=5)]
    assert "serve" not in left and "lance" in left
