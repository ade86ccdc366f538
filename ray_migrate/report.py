"""The run report: one row per unit, saved as JSON under ``state_uri`` and shown as a table."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

UnitStatus = Literal["copied", "skipped", "failed", "pending"]
DONE_PHASES = ("target", "done")


class UnitReport(BaseModel):
    unit_id: str
    status: UnitStatus = "pending"
    copied: int = 0
    copied_now: int = 0
    seconds: float = 0.0
    points_per_s: float = 0.0
    source_count: int | None = None
    target_count: int | None = None
    source_checksum: str | None = None
    target_checksum: str | None = None
    equal: bool | None = None
    differing_buckets: list[int] = Field(default_factory=list)
    missing_ids: list[Any] = Field(default_factory=list)
    extra_ids: list[Any] = Field(default_factory=list)
    changed_ids: list[Any] = Field(default_factory=list)
    pending: int = 0
    phase: str | None = None
    owner: str | None = None
    freeze_ms: float | None = None
    cutover_how: str | None = None  # "quiet", "fenced N writes under way" or "freeze"
    cutover_attempts: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed" and self.equal is not False


class RunReport(BaseModel):
    migration_id: str
    command: str = "run"
    started_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    units: list[UnitReport] = Field(default_factory=list)
    finalize: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    expect_cutover: bool = False  # auto mode: every unit must end on the target

    @property
    def ok(self) -> bool:
        if not all(u.ok and u.equal is not None for u in self.units):
            return False
        return not self.expect_cutover or all(u.phase in DONE_PHASES for u in self.units)

    @property
    def total_copied_now(self) -> int:
        return sum(u.copied_now for u in self.units)

    def to_table(self) -> str:
        head = ("unit", "status", "copied", "points/s", "source", "target", "checksum",
                "phase", "freeze ms", "note")
        rows = [head]
        for u in self.units:
            check = {True: "equal", False: "DIFFERENT", None: "-"}[u.equal]
            note = u.error or ""
            if u.equal and not note and (u.pending or u.source_checksum != u.target_checksum):
                # verified while writes went on: the counts shown may differ; say why
                note = "writes during the verify, since caught up" + (
                    f" ({u.pending} ids)" if u.pending else "")
            if u.equal is False:
                note = (f"missing {len(u.missing_ids)}, extra {len(u.extra_ids)}, "
                        f"changed {len(u.changed_ids)}; e.g. "
                        f"{(u.missing_ids + u.extra_ids + u.changed_ids)[:3]}")
            rows.append((u.unit_id, u.status, str(u.copied), f"{u.points_per_s:,.0f}",
                         _n(u.source_count), _n(u.target_count), check, u.phase or "-",
                         "-" if u.freeze_ms is None else f"{u.freeze_ms:.0f}", note[:80]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        elapsed = (self.finished_at or time.time()) - self.started_at
        rate = self.total_copied_now / elapsed if elapsed > 0 else 0.0
        verdict = "OK" if self.ok else "NOT OK"
        lines.append(f"{len(self.units)} units, {self.total_copied_now} points copied in "
                     f"{elapsed:.1f}s ({rate:,.0f} points/s overall): {verdict}")
        return "\n".join(lines)


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)
