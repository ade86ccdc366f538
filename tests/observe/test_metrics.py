"""The metrics read back from Ray's export, and the run's progress lines, after a live run.

A head from `ray start` (its metrics agent exports Prometheus text on ``Head.metrics_port``),
`ray-migrate run` and the application as their own processes (tests/livecase.py). While the run
goes on and after it, the export is scraped (bounded): a series of a process that exited may
leave the export, so every scrape is kept and the latest value of each series wins. Then the
names, tags and values are checked against what the run did (``status --json``): points copied
per unit equal the unit's copied count, every unit frozen at least once per cutover, client
calls counted per op and side, the router's phase and lag gauges present for every unit.
The same run's output (not a terminal) holds the plain ``progress:`` lines.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from livecase import Case, LiveRun, judged_or_fail, seeded_head, status, write_config
from prometheus_client.parser import text_string_to_metric_families
from raycluster import Head

from ray_migrate.metrics import DEFINITIONS, PHASE_NUMBERS, exported_name

N = 1200
CASE = Case("metrics", "qdrant", n_points=N,
            config={"cutover": {"waves": [1, "100%"], "pause_s": 1}})
SCRAPE_EVERY_S = 1.0
AFTER_RUN_BOUND_S = 40.0
# Labels Ray adds; a series is (name, our tags, WorkerId): one process's value.
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "otel_scope_name",
              "otel_scope_schema_url", "otel_scope_version", "JobId", "le"}


class Scraper:
    """The export, scraped now and then; the latest value of every series seen."""

    def __init__(self, head: Head):
        self.url = head.metrics_url
        self.series: dict[tuple, float] = {}
        self.last = 0.0

    def scrape(self) -> None:
        self.last = time.monotonic()
        try:
            text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        except OSError:
            return
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if not s.name.startswith(exported_name("")) or "le" in s.labels:
                    continue
                tags = tuple(sorted((k, v) for k, v in s.labels.items()
                                    if k not in RAY_LABELS))
                self.series[(s.name, tags)] = s.value

    def maybe(self) -> None:
        if time.monotonic() - self.last >= SCRAPE_EVERY_S:
            self.scrape()

    def by(self, name: str, key: str, **match: str) -> dict[str, float]:
        """Sum over processes of ``name`` (as exported), per value of tag ``key``."""
        out: dict[str, float] = defaultdict(float)
        for (n, tags), v in self.series.items():
            t = dict(tags)
            if n == name and all(t.get(k) == val for k, val in match.items()):
                out[t.get(key, "")] += v
        return dict(out)

    def latest(self, name: str, key: str) -> dict[str, float]:
        """A gauge per value of ``key``, the last process's (the router: one)."""
        return {dict(t).get(key, ""): v for (n, t), v in self.series.items() if n == name}


def problems(sc: Scraper, mid: str, units: dict[str, dict[str, Any]]) -> list[str]:
    """What is not plausible yet (empty: all is)."""
    bad = []
    copied = sc.by(exported_name("points_copied", "_total"), "unit", migration=mid)
    want = {u: row["copied"] for u, row in units.items()}
    if copied != {u: float(n) for u, n in want.items()}:
        bad.append(f"points copied {copied} != status copied {want}")
    freezes = sc.by(exported_name("freeze_ms", "_count"), "unit", migration=mid)
    if any(freezes.get(u, 0) < 1 for u in units):
        bad.append(f"freeze histogram counts {freezes}: every unit was cut over")
    phases = sc.latest(exported_name("unit_phase"), "unit")
    if {u: phases.get(u) for u in units} != {u: PHASE_NUMBERS["done"] for u in units}:
        bad.append(f"unit phase gauges {phases}, not all done ({PHASE_NUMBERS['done']})")
    for gauge in ("catchup_lag_ids", "catchup_lag_s", "copy_points_per_s",
                  "verify_mismatches"):
        got = sc.latest(exported_name(gauge), "unit")
        if set(got) != set(units) or any(v < 0 for v in got.values()):
            bad.append(f"{gauge}: {got}")
    if any(sc.latest(exported_name("verify_mismatches"), "unit").values()):
        bad.append("verify mismatches in an equal run")
    requests = sc.by(exported_name("client_requests", "_total"), "backend", migration=mid)
    if not (requests.get("routed", 0) > 0 and requests.get("target", 0) > 0
            and requests.get("source", 0) > 0):
        bad.append(f"client requests per backend {requests}")
    ops = sc.by(exported_name("client_latency_ms", "_count"), "op", backend="routed")
    if not (ops.get("upsert", 0) > 0 and ops.get("search", 0) > 0):
        bad.append(f"client latency counts per op {ops}")
    if sc.latest(exported_name("units_total"), "migration").get(mid) != len(units):
        bad.append(f"units_total {sc.latest(exported_name('units_total'), 'migration')}")
    return bad


def check_names(sc: Scraper, mid: str) -> None:
    """Every series is one of ours, tagged with the migration and what its definition says."""
    known = {exported_name(n, suffix) for n in DEFINITIONS
             for suffix in ("", "_total", "_count", "_sum")}
    for name, tags in sc.series:
        t = dict(tags)
        assert name in known, name
        base = next(n for n in DEFINITIONS if name.startswith(exported_name(n)))
        assert set(DEFINITIONS[base][2]) <= set(t), (name, t)
        assert t["migration"] == mid, (name, t)


def test_metrics_from_a_live_run(tmp_path: Path) -> None:
    mid = "obs-metrics"
    cfg = write_config(tmp_path, mid, CASE)
    # Ray's processes report their metrics every second (10 s by default).
    with seeded_head(tmp_path, CASE.source, CASE.n_points, num_cpus=4,
                     env={"RAY_metrics_report_interval_ms": "1000"}) as (head, initial):
        sc = Scraper(head)
        live = LiveRun(head, tmp_path, mid, CASE, cfg, initial, run_args=("--progress-s", "1"))
        live.drive(lambda _live, _table: sc.maybe())
        units = status(cfg, head)
        deadline = time.monotonic() + AFTER_RUN_BOUND_S
        while problems(sc, mid, units) and time.monotonic() < deadline:
            time.sleep(SCRAPE_EVERY_S)  # the last reports reach the export
            sc.scrape()
        assert not problems(sc, mid, units), problems(sc, mid, units)
        check_names(sc, mid)
        out = (tmp_path / "run.out").read_text()
        judged_or_fail(live)
    lines = re.findall(r"progress: units (\d+)/(\d+) copied.*points (\d+)/(\d+)", out)
    assert len(lines) >= 2, out[-3000:]
    assert all(int(t) == len(units) for _c, t, _p, _pt in lines), lines
    copied = [int(p) for _c, _t, p, _pt in lines]
    assert copied == sorted(copied) and copied[-1] > 0, lines
    assert "ETA" in out and "points/s" in out
