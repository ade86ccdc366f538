"""Helpers shared by the benchmark scripts: machine line, LanceDB source, Markdown table and
the BENCHMARKS.md section writer."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent


def _installed(dist: str) -> bool:
    try:
        return bool(md.version(dist))
    except md.PackageNotFoundError:
        return False


def machine() -> str:
    import psutil  # after `import ray`: ray puts its bundled psutil on sys.path

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor() or "?")
    ram = psutil.virtual_memory().total / 2**30
    vers = ", ".join(f"{p} {md.version(p)}" for p in
                     ("ray", "qdrant-client", "lancedb", "pyarrow", "numpy", "psutil")
                     if _installed(p))
    return (f"{os.cpu_count()} cores ({cpu}), {ram:.0f} GB RAM, {platform.system()}; "
            f"Python {platform.python_version()}, {vers}")


def lance_source(uri: Path, n: int, dim: int, tenants: int = 8, table: str = "src") -> None:
    """A LanceDB table (not made by ray_migrate) with the demo's payload shapes, columnar."""
    import lancedb

    db = lancedb.connect(str(uri))
    rng = np.random.default_rng(7)
    for lo in range(0, n, 50_000):
        i = np.arange(lo, min(n, lo + 50_000))
        vec = rng.standard_normal((len(i), dim), dtype=np.float32)
        t = pa.table({
            "id": pa.array(i, pa.uint64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), dim),
            "tenant": pa.array([f"t{x % tenants}" for x in i]),
            "title": pa.array([f"doc {x} ✓" for x in i]),
            "rank": pa.array(i * 7919 % 1000, pa.int64()),
            "tags": pa.array([["a", "b"][: x % 2 + 1] if x % 3 == 0 else None for x in i],
                             pa.list_(pa.string())),
        })
        if lo == 0:
            tbl = db.create_table(table, data=t)
        else:
            tbl.add(t)


def upsert_rows(ids: list[int], rng: np.random.Generator, dim: int) -> pa.Table:
    """Rows for a merge_insert into a ``lance_source`` table: random vectors, plain payload."""
    n = len(ids)
    return pa.table({
        "id": pa.array(ids, pa.uint64()),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.standard_normal(dim * n).astype(np.float32)), dim),
        "tenant": pa.array([f"t{x % 8}" for x in ids]), "title": pa.array(["x"] * n),
        "rank": pa.array([1] * n, pa.int64()), "tags": pa.array([None] * n, pa.list_(pa.string())),
    })


def md_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    return "\n".join("| " + " | ".join(r) + " |" for r in
                     [head, tuple("---" for _ in head), *rows])


def write_section(name: str, text: str) -> None:
    """Replace the ``## name`` section of BENCHMARKS.md with ``text``, or append it."""
    bm = ROOT / "BENCHMARKS.md"
    old = bm.read_text() if bm.exists() else "# Benchmarks\n"
    m = re.search(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", old, flags=re.M | re.S)
    new = old[:m.start()] + text + ("\n" if old[m.end():] else "") + old[m.end():] if m \
        else old.rstrip("\n") + "\n\n" + text
    bm.write_text(new)
    print(f"wrote the {name} section of {bm.name}")


def publish(name: str, text: str, write: bool) -> None:
    """Print a benchmark's section; with ``write``, also put it into BENCHMARKS.md."""
    print("\n" + text)
    if write:
        write_section(name, text)


def run_script(main: Any) -> None:
    """Run a benchmark's main; a measurement script says what failed and still exits 0."""
    try:
        sys.exit(main())
    except Exception as err:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        print(f"benchmark did not finish: {type(err).__name__}: {err}")
        sys.exit(0)
