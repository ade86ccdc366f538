"""A seeded wrapper around a real backend that fails some calls, for live chaos runs.

Installed through the product's hook (``ray_migrate.backends.open_backend``):

    RAY_MIGRATE_BACKEND_WRAPPER=reliability.flaky_backend:wrap

in the environment of the cluster (so of every worker and hosted store's caller), the driver
and the clients. Every call of the engine contract goes to the real backend, but:

- ``RM_FLAKY_RATE`` of the calls (and of the batches of a scan) raise ``TransientError``; for
  a write (upsert, delete, append), every other one of those (the first included) after the
  real write committed: the reply is lost, the caller cannot tell whether it went through.
  Alternating, not a coin: with a coin, a run's few failed writes all failed before writing
  now and then (8 of them in one CI run), and no reply was lost;
- ``RM_FLAKY_SLOW`` of the calls first sleep 50 to 200 ms;
- every ``scan`` of the tenant ``RM_FLAKY_TERMINAL`` (a value of the units' field) raises
  ``TerminalError``: copy and verify read with scans, clients never do, so that unit fails
  in the workers while clients go on writing it.

Each process appends what it injected to ``RM_FLAKY_DIR/<pid>.jsonl`` (one JSON line per
fault, written at once), so a test can see that its faults really happened (``counts``).
The random choices are seeded from ``RM_FLAKY_SEED``, the process and the side.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ray_migrate.errors import TerminalError, TransientError

WRAPPER = "reliability.flaky_backend:wrap"
INJECTED = ("exists", "describe", "check_compatible", "tenant_counts", "id_boundaries",
            "count", "fetch", "fetch_values", "checksum", "search", "upsert", "update_in_place", "append",
            "delete", "delete_many", "stored_form", "finalize", "maintain")
WRITES = ("upsert", "update_in_place", "append", "delete", "delete_many")


def env(dir_: Path, rate: float = 0.05, slow: float = 0.05, seed: int = 7,
        terminal: str | None = None) -> dict[str, str]:
    """The environment that turns the wrapper on."""
    out = {"RAY_MIGRATE_BACKEND_WRAPPER": WRAPPER, "RM_FLAKY_DIR": str(dir_),
           "RM_FLAKY_RATE": str(rate), "RM_FLAKY_SLOW": str(slow), "RM_FLAKY_SEED": str(seed)}
    if terminal is not None:
        out["RM_FLAKY_TERMINAL"] = terminal
    return out


def counts(dir_: Path) -> Counter:
    """What every process injected: (kind, method) -> how many times."""
    total: Counter = Counter()
    for path in dir_.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                doc = json.loads(line)
                total[(doc["kind"], doc["method"])] += 1
    return total


class _Faults:
    """The process's dice and its record of what was injected."""

    def __init__(self, side: str):
        self.rate = float(os.environ.get("RM_FLAKY_RATE", "0.05"))
        self.slow = float(os.environ.get("RM_FLAKY_SLOW", "0"))
        self.terminal = os.environ.get("RM_FLAKY_TERMINAL")
        seed = os.environ.get("RM_FLAKY_SEED", "7")
        self.rng = random.Random(f"{seed}:{os.getpid()}:{side}")
        self.lock = threading.Lock()
        self.failed_writes = 0
        folder = Path(os.environ["RM_FLAKY_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{os.getpid()}.jsonl"

    def record(self, kind: str, method: str, side: str) -> None:
        with self.lock, open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "method": method, "side": side,
                                "t": time.time()}) + "\n")

    def roll(self) -> tuple[bool, bool]:
        """(sleep first, fail)."""
        with self.lock:
            r = self.rng.random(), self.rng.random()
        return r[0] < self.slow, r[1] < self.rate

    def lose_reply(self) -> bool:
        """Whether a failing write fails after it committed: the first, third, ... do."""
        with self.lock:
            self.failed_writes += 1
            return self.failed_writes % 2 == 1


class FlakyBackend:
    """Delegates everything to ``real``; the contract's calls may sleep or fail first."""

    def __init__(self, real: Any, side: str):
        self.real, self.side = real, side
        self.faults = _Faults(side)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name not in INJECTED:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            slow, fail = self.faults.roll()
            if slow:
                self.faults.record("slow", name, self.side)
                time.sleep(self.faults.rng.uniform(0.05, 0.2))
            if fail and name in WRITES and self.faults.lose_reply():
                attr(*args, **kwargs)
                self.faults.record("lost_reply", name, self.side)
                raise TransientError(f"injected: reply of {name} lost after it committed")
            if fail:
                self.faults.record("transient", name, self.side)
                raise TransientError(f"injected: {name} timed out")
            return attr(*args, **kwargs)

        return call

    def scan(self, unit: Any, batch_size: int, cursor: Any = None) -> Any:
        if self.faults.terminal is not None and unit.kind == "tenant" \
                and unit.value == self.faults.terminal:
            self.faults.record("terminal", "scan", self.side)
            raise TerminalError(f"injected: tenant {unit.value!r} cannot be read "
                                "(a corrupt segment)")
        for item in self.real.scan(unit, batch_size, cursor):
            slow, fail = self.faults.roll()
            if slow:
                self.faults.record("slow", "scan", self.side)
                time.sleep(self.faults.rng.uniform(0.05, 0.2))
            if fail:
                self.faults.record("transient", "scan", self.side)
                raise TransientError("injected: scan connection reset")
            yield item


def wrap(backend: Any, endpoint: Any) -> FlakyBackend:
    """The hook's function: ``backend`` (opened for ``endpoint``) made flaky."""
    where = getattr(endpoint, "path", None) or getattr(endpoint, "uri", None) or ""
    side = f"{endpoint.kind}:{os.path.basename(str(where))}"
    return FlakyBackend(backend, side)
