"""The run report's plot: copy throughput, client latency and client requests and errors over
the run, with every wave, cutover (its freeze shaded) and rollback marked.

matplotlib with the Agg backend (no display needed), imported only here: a run that never
writes a report never loads it.
"""

from __future__ import annotations

import io
from typing import Any

WIDTH_IN, HEIGHT_IN, DPI = 10.0, 8.0, 100  # a 1000 x 800 PNG
MARKS = {"wave": ("0.5", ":"), "cutover": ("tab:green", "-"), "rollback": ("tab:red", "-"),
         "cutover_failed": ("tab:orange", "--"), "gate": ("tab:blue", ":"),
         "gate_failed": ("tab:red", "--")}


def render_png(doc: dict[str, Any]) -> bytes:
    """The plot of a report document (``report_files.build``), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    t0 = doc["since"]
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    copy_ax, lat_ax, req_ax = fig.subplots(3, 1, sharex=True)
    _copy(copy_ax, doc["copy"], t0)
    _latency(lat_ax, doc["client"]["series"], t0)
    _requests(req_ax, doc["client"]["series"], t0)
    for ax in (copy_ax, lat_ax, req_ax):
        _mark(ax, doc["events"], t0, label=ax is copy_ax)
        ax.grid(True, alpha=0.3)
    req_ax.set_xlabel("seconds since the run started")
    fig.suptitle(f"migration {doc['report']['migration_id']}: "
                 f"{'OK' if doc['ok'] else 'NOT OK'}")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _copy(ax: Any, copy: list[dict[str, Any]], t0: float) -> None:
    xs = [p["t"] - t0 for p in copy]
    ax.bar(xs, [p["points"] / p["span_s"] for p in copy], width=[p["span_s"] for p in copy],
           align="edge", color="tab:blue")
    ax.set_ylabel("copied points/s")
    if not copy:
        ax.text(0.5, 0.5, "nothing copied in this run", transform=ax.transAxes, ha="center")


def _latency(ax: Any, series: list[dict[str, Any]], t0: float) -> None:
    xs = [p["t"] - t0 for p in series]
    for key, style in (("p50_ms", "tab:blue"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red")):
        ax.plot(xs, [p[key] for p in series], color=style, label=key[:3], lw=1)
    ax.set_ylabel("client latency, ms")
    if series:
        ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no client requests", transform=ax.transAxes, ha="center")


def _requests(ax: Any, series: list[dict[str, Any]], t0: float) -> None:
    xs = [p["t"] - t0 for p in series]
    ax.step(xs, [p["requests"] / p["span_s"] for p in series], where="post",
            color="tab:blue", label="requests/s")
    ax.step(xs, [p["errors"] / p["span_s"] for p in series], where="post",
            color="tab:red", label="errors/s")
    ax.set_ylabel("client requests/s")
    ax.legend(loc="upper right", fontsize="small")


def _mark(ax: Any, events: list[dict[str, Any]], t0: float, label: bool) -> None:
    """A vertical line per event; a cutover's freeze shaded before it; names on top."""
    for e in events:
        kind = e["kind"] if e.get("ok", True) else f"{e['kind']}_failed"
        color, style = MARKS.get(kind, ("0.3", "-."))
        x = e["t"] - t0
        ax.axvline(x, color=color, ls=style, lw=1)
        if e.get("freeze_ms") and e.get("ok", True):
            ax.axvspan(x - e["freeze_ms"] / 1000, x, color=color, alpha=0.3)
        if label:
            name = f"wave {e['wave']}" if kind == "wave" else \
                f"{kind} {e.get('unit', '')}" + (
                    f" ({e['freeze_ms']:.0f} ms)" if e.get("freeze_ms") else "")
            ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=6, color=color)


__all__ = ["render_png"]
