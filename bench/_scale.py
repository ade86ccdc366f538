"""What bench/router.py and bench/nodes.py share: the results file and percentiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import publish

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def commit() -> str:
    """The commit the figures were measured at (``+dirty`` when the tree has changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def command() -> str:
    return "python " + " ".join(["bench/" + Path(sys.argv[0]).name, *sys.argv[1:]])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def footer() -> list[str]:
    """The lines that end a results file: machine and load, commit, command."""
    import os

    from _common import machine

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [f"- machine: {machine()}; load average at the end {load} (1, 5, 15 min)",
            f"- commit: {commit()}", f"- command: `{command()}`", ""]


def write_result(script: str, text: str, write: bool) -> None:
    """Print the table; with ``write`` also into ``bench/results/<script>.md``."""
    publish(script, text, write, script)
