"""Compose BENCHMARKS.md from the latest result of every benchmark script.

    python bench/compose.py            # rewrite BENCHMARKS.md from bench/results/*.md

Each script's ``--write`` leaves its latest table in ``bench/results/<script>.md``: a section
with the machine, the commit and the exact command that made it. This puts one summary table
first (every row of those files that has a target: metric, value, target, pass, machine,
commit, command), then the method of each section (``bench/methods.md``), then the sections
themselves. The run-by-run history is in git, not here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ORDER = ["copy_lance", "copy_q2l", "verify", "whole", "live", "live_by_tenant", "router", "nodes", "gateway",
         "fragments", "conflicts"]


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``, as rows of cells (header first, rule left out)."""
    out: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            out.append(current)
            current = []
    return out


def summary_rows(name: str, text: str) -> list[list[str]]:
    """Rows with a target from the first table that has Target and Pass columns."""
    command = re.search(r"`(python bench/[^`]+)`", text)
    commit = re.search(r"[Cc]ommit:? `?([0-9a-f]{7,})", text)
    machine = re.search(r"^(?:- )?[Mm]achine: ([^,;]+)", text, re.M)
    where = [machine.group(1).strip() if machine else "?",
             commit.group(1) if commit else "?",
             f"`{command.group(1)}`" if command else f"bench/{name}.py"]
    for table in tables(text):
        head = [h.lower() for h in table[0]]
        if "target" in head and "pass" in head:
            col = {h: head.index(h) for h in ("metric", "value", "target", "pass") if h in head}
            rows = []
            for r in table[1:]:
                target = r[col["target"]]
                if target:
                    rows.append([r[col.get("metric", 0)], r[col.get("value", 1)], target,
                                 r[col["pass"]], *where])
            return rows
    return []


def compose() -> str:
    files = sorted(RESULTS.glob("*.md"), key=lambda p: (
        ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    texts = {p.stem: p.read_text() for p in files}
    head = ["Metric", "Value", "Target", "Pass", "Machine", "Commit", "Command"]
    rows = [r for name, text in texts.items() for r in summary_rows(name, text)]
    lines = ["# Benchmarks", "",
             "Written by `python bench/compose.py` from the latest `--write` run of each script "
             "(`bench/results/`). Every figure is a ratio against a baseline measured in the same "
             "run of the same script, on the machine named in its row; these machines are shared "
             "and noisy, so one run is one sample. The history of earlier runs is in git.", "",
             "## Summary", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    methods = ROOT / "bench" / "methods.md"
    if methods.exists():
        lines += ["", methods.read_text().strip()]
    for text in texts.values():
        lines += ["", text.strip()]
    return "\n".join(lines) + "\n"


def main() -> int:
    out = ROOT / "BENCHMARKS.md"
    out.write_text(compose())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
