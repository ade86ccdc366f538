"""The run's report folder: ``<state_uri>/<migration_id>/report/`` with ``report.json`` (the
run report, the time series and the events), ``report.md`` (a summary to read) and
``report.png`` (``report_plot``).

The series come from the router (``routing.client_stats``): clients' requests, errors and
latency, and copy throughput from the workers' progress. The events are the driver's (waves,
each cutover with its freeze) and the switch records of commands run meanwhile (an operator's
rollback). A failure here is logged, never fatal: the run's outcome is in ``report.json``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_migrate.migration import Migration

log = logging.getLogger(__name__)

REPORT_DIR = "report"
JSON_KEY, MD_KEY, PNG_KEY = (f"{REPORT_DIR}/report.{ext}" for ext in ("json", "md", "png"))


def write_report_files(m: Migration) -> str | None:
    """Write the report folder of a finished run; its summary's location, None if not."""
    try:
        doc = build(m)
        from ray_migrate.report_plot import render_png

        m.store.write_bytes(PNG_KEY, render_png(doc))
        m.store.write_bytes(MD_KEY, markdown(doc).encode())
        m.store.write(JSON_KEY, doc)
    except Exception as err:  # noqa: BLE001 - the run's outcome is written already
        log.warning("the report folder was not written: %s: %s", type(err).__name__, err)
        return None
    where = m.store.uri_of(MD_KEY)
    log.info("report: %s", where)
    return where


def build(m: Migration) -> dict[str, Any]:
    """The report document: the run report, the router's series over the run, the events."""
    report = m.report
    since, until = report.started_at, report.finished_at or time.time()
    client = m.router.call("client_stats", since=since) if m.router is not None else {}
    events = sorted(m.events + switch_events(m, since, until), key=lambda e: e["t"])
    return {
        "report": report.model_dump(mode="json"), "ok": report.ok,
        "why_not_ok": report.why_not_ok(), "since": since, "until": until,
        "copy": client.get("copy", []), "copied_by_unit": client.get("copied_by_unit", {}),
        "client": {k: client.get(k) for k in ("series", "totals", "by_op", "units", "clients")},
        "shadow": client.get("shadow"),
        "events": events,
        "files": {k: m.store.uri_of(key) for k, key in
                  (("json", JSON_KEY), ("md", MD_KEY), ("png", PNG_KEY))},
    }


def switch_events(m: Migration, since: float, until: float) -> list[dict[str, Any]]:
    """Cutovers and rollbacks that commands of other processes made during the run."""
    from ray_migrate.migration import _switch_key

    out = []
    for uid in m.rows:
        rec = m.store.read(_switch_key(uid))
        if rec and since <= rec["at"] <= until:
            out.append({"t": rec["at"], "kind": rec["method"], "unit": uid, "ok": rec["ok"],
                        "reason": rec.get("reason"),
                        "by": f"ray-migrate {rec['command']} (pid {rec['pid']})"})
    return out


def markdown(doc: dict[str, Any]) -> str:
    """The summary: verdict, totals, a table of units, the events and the plot."""
    r, totals = doc["report"], doc["client"].get("totals") or {}
    elapsed = doc["until"] - doc["since"]
    copied = sum(u["copied_now"] for u in r["units"])
    lines = [
        f"# Migration `{r['migration_id']}`: {'OK' if doc['ok'] else 'NOT OK'}", "",
        *([f"- not OK: {'; '.join(doc['why_not_ok'])}"] if not doc["ok"] else []),
        f"- started {_clock(doc['since'])}, took {elapsed:.1f} s",
        f"- {len(r['units'])} units, {copied} points copied "
        f"({copied / elapsed if elapsed > 0 else 0:,.0f} points/s overall)",
        f"- clients: {totals.get('requests', 0)} requests, {totals.get('errors', 0)} errors, "
        f"p50 {_ms(totals.get('p50_ms'))}, p95 {_ms(totals.get('p95_ms'))}, "
        f"p99 {_ms(totals.get('p99_ms'))}",
        *_shadow_line(doc.get("shadow")), "",
        "![copy throughput, client latency and errors](report.png)", "",
        "| unit | status | copied | points/s | check | phase | freeze ms | note |",
        "|---|---|---:|---:|---|---|---:|---|",
    ]
    for u in r["units"]:
        note = (u.get("error") or u.get("note") or "").replace("|", "/")[:120]
        lines.append(f"| {u['unit_id']} | {u['status']} | {u['copied']} | "
                     f"{u['points_per_s']:,.0f} | {u.get('check') or '-'} | "
                     f"{u.get('phase') or '-'} | {_num(u.get('freeze_ms'))} | {note} |")
    lines += ["", "## Client requests by op", "",
              "| op | requests | errors | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    for op, s in (doc["client"].get("by_op") or {}).items():
        lines.append(f"| {op} | {s['requests']} | {s['errors']} | {_num(s['p50_ms'])} | "
                     f"{_num(s['p95_ms'])} | {_num(s['p99_ms'])} |")
    lines += ["", "## Events", ""]
    for e in doc["events"]:
        lines.append(f"- +{e['t'] - doc['since']:.1f} s: {_event(e)}")
    return "\n".join(lines) + "\n"


def _shadow_line(s: dict[str, Any] | None) -> list[str]:
    """The shadow reads' line (``reads.shadow_percent``), none when there were none."""
    if not s or not (s.get("reads") or s.get("skipped")):
        return []
    overlap = "-" if s.get("overlap_at_k") is None else f"{s['overlap_at_k']:.3f}"
    return [f"- shadow reads: {s['reads']} ({s['errors']} failed, {s['skipped']} skipped), "
            f"mean overlap@k {overlap}, p95 owner {_ms(s.get('p95_ms_owner'))}, "
            f"shadow {_ms(s.get('p95_ms_shadow'))}"]


def _event(e: dict[str, Any]) -> str:
    if e["kind"] == "wave":
        return f"wave {e['wave']}: {', '.join(e['units'])}"
    if e["kind"] == "gate":  # an SLO check after a wave (``slo``)
        verdict = "passed" if e.get("ok", True) else "BREACHED, rolled back"
        return f"SLO gate after wave {e['wave']} ({', '.join(e['units'])}) {verdict}" + (
            f": {e['reason']}" if e.get("reason") else "")
    what = f"{e['kind']} of {e.get('unit')}"
    if not e.get("ok", True):
        return f"{what} did not happen: {e.get('reason')}"
    freeze = f", froze writes {e['freeze_ms']:.0f} ms" if e.get("freeze_ms") else ""
    return what + freeze + (f", by {e['by']}" if e.get("by") else "")


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


__all__ = ["JSON_KEY", "MD_KEY", "PNG_KEY", "REPORT_DIR", "build", "markdown",
           "write_report_files"]
