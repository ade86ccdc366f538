"""Helpers shared by the benchmark scripts: machine line, LanceDB source, Markdown table and
the writer of a script's result file."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
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


def write_result(stem: str, name: str, text: str) -> None:
    """Put a benchmark's section (``## name``) into ``bench/results/<stem>.md``, from which
    ``bench/compose.py`` writes BENCHMARKS.md."""
    out = ROOT / "bench" / "results" / f"{stem}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = text if text.lstrip().startswith("## ") else f"## {name}\n\n{text}"
    out.write_text(body.rstrip("\n") + "\n")
    print(f"wrote {out.relative_to(ROOT)}; `python bench/compose.py` puts it into BENCHMARKS.md")


def publish(name: str, text: str, write: bool, stem: str) -> None:
    """Print a benchmark's section; with ``write``, also keep it in ``bench/results``."""
    print("\n" + text)
    if write:
        write_result(stem, name, text)


def copy_window(cfg: Any, rep: Any) -> tuple[float, Any]:
    """The copy phase of a finished run: first unit's start to last unit's end, from the run
    report and the units' final checkpoints (Ray start and planning are out); and the run's
    state store. Raises if a unit was not copied."""
    from ray_migrate.state import StateStore

    bad = [u.unit_id for u in rep.units if u.status != "copied"]
    if bad:
        raise RuntimeError(f"units not copied: {bad}")
    store = StateStore(cfg.state_uri, cfg.migration_id)
    ends = {u.unit_id: store.load_checkpoint(u.unit_id)["updated_at"] for u in rep.units}
    return max(ends.values()) - min(ends[u.unit_id] - u.seconds for u in rep.units), store


def run_script(main: Any) -> None:
    """Run a benchmark's main; a measurement script says what failed and still exits 0."""
    try:
        sys.exit(main())
    except Exception as err:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        print(f"benchmark did not finish: {type(err).__name__}: {err}")
        sys.exit(0)
