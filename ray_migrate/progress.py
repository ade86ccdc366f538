"""What an operator watches: a run's progress, and ``status --watch``.

``RunProgress`` follows a run from the router's status (one call every ``interval_s``, from a
thread of the driver): units copied and on the target, points copied of the total, points/s and
an ETA. On a terminal it is a live ``rich`` display (a bar and one line per active unit);
otherwise (a job's log, a pipe) a plain ``progress:`` log line every ``interval_s``. The driver
also puts units done and total into the metrics (``metrics.run_units``).

``status_rows`` reads the state files only (never the actors): ``status`` and ``status --watch``
show it as a table, refreshed in place on a terminal, printed again otherwise.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray_migrate import metrics

log = logging.getLogger(__name__)

COPIED_PHASES = ("catching_up", "ready", "frozen", "target", "done", "rolled_back")
ON_TARGET = ("target", "done")
ACTIVE = ("capturing", "copying", "catching_up", "frozen")
RATE_WINDOW_S = 30.0  # points/s over about this long


@dataclass
class Snapshot:
    """The run at one moment, summed over its units."""

    units: int
    copied_units: int
    on_target: int
    failed: int
    points: int
    total: int
    active: list[dict[str, Any]]
    at: float

    @classmethod
    def of(cls, rows: list[dict[str, Any]], totals: dict[str, int], now: float) -> Snapshot:
        """From the router's status rows; ``totals``: the plan's estimate per unit."""
        def total(r: dict[str, Any]) -> int:
            return int(r.get("total") or totals.get(r["unit_id"], 0) or 0)

        return cls(units=len(rows),
                   copied_units=sum(r["phase"] in COPIED_PHASES for r in rows),
                   on_target=sum(r["phase"] in ON_TARGET for r in rows),
                   failed=sum(r["phase"] == "failed" for r in rows),
                   points=sum(int(r.get("copied") or 0) for r in rows),
                   total=sum(total(r) for r in rows),
                   active=[{**r, "total": total(r)} for r in rows if r["phase"] in ACTIVE],
                   at=now)


class Rate:
    """Points/s over the last ``window_s`` of snapshots, and the time left at that rate."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self.seen: list[tuple[float, int]] = []

    def add(self, snap: Snapshot) -> float:
        self.seen.append((snap.at, snap.points))
        while len(self.seen) > 2 and snap.at - self.seen[1][0] >= self.window_s:
            self.seen.pop(0)
        (t0, p0), (t1, p1) = self.seen[0], self.seen[-1]
        return max(p1 - p0, 0) / (t1 - t0) if t1 > t0 else 0.0

    @staticmethod
    def eta_s(snap: Snapshot, rate: float) -> float | None:
        left = max(snap.total - snap.points, 0)
        if left == 0:
            return 0.0
        return left / rate if rate > 0 else None


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def line(snap: Snapshot, rate: float) -> str:
    """The plain progress line of a job's log."""
    pct = 100.0 * snap.points / snap.total if snap.total else 100.0
    failed = f", {snap.failed} failed" if snap.failed else ""
    return (f"progress: units {snap.copied_units}/{snap.units} copied, {snap.on_target}/"
            f"{snap.units} on target{failed}; points {snap.points}/{snap.total} ({pct:.0f}%), "
            f"{rate:,.0f} points/s, ETA {fmt_s(Rate.eta_s(snap, rate))}")


class RunProgress:
    """Shows a run's progress while it runs: ``attach(migration)`` once its router is up
    (``driver.run_migration``'s ``on_started``), ``close()`` at the end (or use ``with``)."""

    def __init__(self, migration_id: str, tty: bool | None = None, interval_s: float = 5.0,
                 enabled: bool = True):
        self.migration_id = migration_id
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.interval_s = min(interval_s, 1.0) if self.tty else interval_s
        self.enabled = enabled
        self.rate = Rate()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, m: Any) -> None:
        totals = {u.unit_id: u.estimated_count for u in (m.plan.units if m.plan else [])}
        router = m.router
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rm-progress",
                                        args=(lambda: router.call("status")["units"], totals))
        self._thread.start()

    def _snapshot(self, read: Callable[[], list[dict[str, Any]]],
                  totals: dict[str, int]) -> Snapshot | None:
        try:
            snap = Snapshot.of(read(), totals, time.monotonic())
        except Exception as err:  # noqa: BLE001 - progress is shown, never in the way
            log.debug("progress: router status unavailable: %s", err)
            return None
        metrics.run_units(self.migration_id, snap.units, snap.copied_units, snap.on_target)
        return snap

    def _loop(self, read: Callable[[], list[dict[str, Any]]], totals: dict[str, int]) -> None:
        if self.tty and self.enabled:
            return self._live(read, totals)
        while True:
            snap = self._snapshot(read, totals)
            if snap is not None and self.enabled:
                log.info("%s", line(snap, self.rate.add(snap)))
            if self._stop.wait(self.interval_s):
                return None

    def _live(self, read: Callable[[], list[dict[str, Any]]], totals: dict[str, int]) -> None:
        from rich.live import Live

        with Live(render(None, 0.0), refresh_per_second=4, transient=True) as live:
            while not self._stop.wait(self.interval_s):
                snap = self._snapshot(read, totals)
                if snap is not None:
                    live.update(render(snap, self.rate.add(snap)))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def render(snap: Snapshot | None, rate: float) -> Any:
    """The live display: an overall bar, then one line per active unit."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    if snap is None:
        return Text("starting: planning, router and workers ...")
    grid = Table.grid(padding=(0, 1))
    grid.add_row(ProgressBar(total=max(snap.total, 1), completed=min(snap.points, snap.total),
                             width=40), Text(line(snap, rate).removeprefix("progress: ")))
    for r in snap.active[:12]:
        grid.add_row(ProgressBar(total=max(r["total"], 1), completed=min(
            int(r.get("copied") or 0), max(r["total"], 1)), width=40),
            Text(f"{r['unit_id']}: {r['phase']}, {r.get('copied') or 0}/{r['total']}, "
                 f"lag {r.get('lag', 0)}"))
    return Group(grid)


# --- status, and status --watch ------------------------------------------------------------
def status_rows(cfg: Any, store: Any) -> dict[str, Any] | None:
    """The status document from the state files (None: no routing table yet)."""
    from ray_migrate.lease import running_driver
    from ray_migrate.routing.actor import CHANGES_KEY, ROUTING_KEY

    table = store.read(ROUTING_KEY)
    driver = running_driver(store)
    if table is None:
        return {"migration_id": cfg.migration_id, "driver": driver, "units": None}
    logs = store.read(CHANGES_KEY) or {}  # written at most every 0.2 s while running
    plan = {p["unit_id"]: p["estimated_count"]
            for p in (store.read("plan.json") or {}).get("units", [])}
    rows = []
    for unit_id, u in sorted(table["units"].items()):
        ckpt = store.load_checkpoint(unit_id) or {}
        rows.append({"unit": unit_id, "phase": u["phase"], "owner": u["owner"],
                     "copied": max(u.get("copied") or 0, ckpt.get("copied", 0)),
                     "total": u.get("total") or plan.get(unit_id),
                     "lag": len(logs.get(unit_id, [])),
                     "longest_freeze_ms": round(u["longest_freeze_ms"], 1),
                     "needs_repair": u["needs_repair"], "last_error": u["last_error"]})
    return {"migration_id": cfg.migration_id, "epoch": table["epoch"], "driver": driver,
            "units": rows}


def status_text(doc: dict[str, Any]) -> str:
    """The plain status table."""
    from ray_migrate.lease import describe

    driver = doc["driver"]
    if doc["units"] is None:
        return f"migration {doc['migration_id']} is starting; driver: {describe(driver)}"
    lines = [f"migration {doc['migration_id']}, routing epoch {doc['epoch']}",
             f"driver: {describe(driver)}" if driver else "driver: none running",
             f"{'unit':<28} {'phase':<12} {'owner':<7} {'copied/total':>16} {'lag':>6} "
             f"{'freeze ms':>9}  last error"]
    for r in doc["units"]:
        total = "?" if r["total"] is None else r["total"]
        lines.append(f"{r['unit']:<28} {r['phase']:<12} {r['owner']:<7} "
                     f"{str(r['copied']) + '/' + str(total):>16} {r['lag']:>6} "
                     f"{r['longest_freeze_ms']:>9}  {r['last_error'] or ''}")
    return "\n".join(lines)


def watch_status(read: Callable[[], dict[str, Any] | None], interval_s: float,
                 count: int | None, tty: bool, out: Any = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """Show ``read()`` every ``interval_s`` until Ctrl-C, or ``count`` times: in place on a
    terminal (rich Live), else each one written to ``out`` (the CLI's stdout) after a time
    stamp."""
    out = out or sys.stdout
    n = 0

    def shown() -> str:
        doc = read()
        return status_text(doc) if doc else "no routing table yet"

    try:
        if tty:
            from rich.live import Live
            from rich.text import Text

            with Live(Text(shown()), refresh_per_second=4, auto_refresh=False) as live:
                n = 1
                while count is None or n < count:
                    sleep(interval_s)
                    live.update(Text(shown()), refresh=True)
                    n += 1
            return
        while count is None or n < count:
            if n:
                sleep(interval_s)
            out.write(f"--- {time.strftime('%H:%M:%S')}\n{shown()}\n")
            out.flush()
            n += 1
    except KeyboardInterrupt:
        return


__all__ = ["Rate", "RunProgress", "Snapshot", "line", "status_rows", "status_text",
           "watch_status"]
