"""The run report: one row per unit, saved as JSON under ``state_uri`` and shown as a table.

A unit's check is ``equal``, ``DIFFERENT`` or ``unverified`` (``equal`` is null: verify is off
and no earlier run left a verdict); an unverified unit does not make the report fail. In auto
mode the report is OK only when every unit is on the target: a unit rolled back during the run
(``ray-migrate rollback`` in the rollback window) makes it NOT OK, and the last line says so.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

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
    missing_count: int = 0  # every differing id is counted; the lists may be cut (ids_file)
    extra_count: int = 0
    changed_count: int = 0
    ids_file: str | None = None  # the full lists, when longer than verify.INLINE_IDS
    parity: dict[str, Any] | None = None  # query parity (``ray_migrate.parity``), if measured
    phase: str | None = None
    owner: str | None = None
    freeze_ms: float | None = None
    cutover_how: str | None = None  # "quiet", "fenced N writes under way" or "freeze"
    cutover_attempts: int = 0
    error: str | None = None
    unverified: bool = False  # never verified: verify.enabled is false (equal stays None)
    note: str | None = None  # not an error: e.g. who rolled the unit back, and when

    @computed_field  # type: ignore[prop-decorator]
    @property
    def check(self) -> str | None:
        """equal, DIFFERENT, unverified, or None while the unit was not looked at."""
        if self.equal is not None:
            return "equal" if self.equal else "DIFFERENT"
        return "unverified" if self.unverified else None

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
    estimate: dict[str, Any] | None = None  # ``ray-migrate plan``'s (``estimate.Estimate``)
    gates: list[dict[str, Any]] = Field(default_factory=list)  # SLO checks (``slo``)
    stopped: str | None = None  # why the rollout stopped: an SLO gate's breach

    @computed_field  # type: ignore[prop-decorator]
    @property
    def seconds(self) -> float | None:
        """The actual duration, beside ``estimate.seconds``."""
        return None if self.finished_at is None else round(self.finished_at - self.started_at, 2)

    @property
    def ok(self) -> bool:
        if not all(u.ok and (u.equal is not None or u.unverified) for u in self.units):
            return False
        if self.stopped:
            return False
        return not self.expect_cutover or all(u.phase in DONE_PHASES for u in self.units)

    def why_not_ok(self) -> list[str]:
        """What makes the report NOT OK, for its last line."""
        def named(us: list[UnitReport]) -> str:
            more = f" and {len(us) - 3} more" if len(us) > 3 else ""
            return ", ".join(u.unit_id for u in us[:3]) + more

        why = [f"the rollout stopped: {self.stopped}"] if self.stopped else []
        failed = [u for u in self.units if u.status == "failed"]
        differ = [u for u in self.units if u.equal is False and u.status != "failed"]
        unknown = [u for u in self.units
                   if u.ok and u.equal is None and not u.unverified]
        back = [u for u in self.units if u.phase == "rolled_back"] if self.expect_cutover \
            else []
        left = [u for u in self.units if u.phase not in DONE_PHASES and u.ok
                and u.phase != "rolled_back"] if self.expect_cutover else []
        for us, what in ((failed, "failed"), (differ, "differ"), (unknown, "not checked")):
            if us:
                why.append(f"{len(us)} {what} ({named(us)})")
        if back:
            why.append(f"{len(back)} rolled back during the run ({named(back)}): not every "
                       "unit is on the target, so the run exits 1; `ray-migrate run` again "
                       "cuts them over")
        if left:
            why.append(f"{len(left)} not on the target ({named(left)})")
        return why

    @property
    def total_copied_now(self) -> int:
        return sum(u.copied_now for u in self.units)

    def to_table(self) -> str:
        head = ("unit", "status", "copied", "points/s", "source", "target", "checksum",
                "phase", "freeze ms", "note")
        rows = [head]
        for u in self.units:
            check = u.check or "-"
            note = u.error or u.note or ""
            if u.equal and not note and (u.pending or u.source_checksum != u.target_checksum):
                # verified while writes went on: the counts shown may differ; say why
                note = "writes during the verify, since caught up" + (
                    f" ({u.pending} ids)" if u.pending else "")
            if u.equal is False:
                note = (f"missing {u.missing_count}, extra {u.extra_count}, "
                        f"changed {u.changed_count}; e.g. "
                        f"{(u.missing_ids + u.extra_ids + u.changed_ids)[:3]}")
            rows.append((u.unit_id, u.status, str(u.copied), f"{u.points_per_s:,.0f}",
                         _n(u.source_count), _n(u.target_count), check, u.phase or "-",
                         "-" if u.freeze_ms is None else f"{u.freeze_ms:.0f}", note[:80]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        # The reason a unit failed, whole: the note column shows its first 80 characters.
        lines += [f"{u.unit_id} failed: {u.error}" for u in self.units
                  if u.status == "failed" and u.error and len(u.error) > 80]
        lines += [_parity_line(u.unit_id, u.parity) for u in self.units if u.parity]
        lines += [f"{g['reason']}: rolled back {', '.join(g['units'])}; later waves did not run"
                  for g in self.gates if not g["ok"]]
        lines += [f"{u.unit_id}: every differing id ({u.missing_count} missing, "
                  f"{u.extra_count} extra, {u.changed_count} changed) is in {u.ids_file}"
                  for u in self.units if u.ids_file]
        elapsed = (self.finished_at or time.time()) - self.started_at
        rate = self.total_copied_now / elapsed if elapsed > 0 else 0.0
        verdict = "OK" if self.ok else "NOT OK: " + "; ".join(self.why_not_ok())
        if self.estimate:
            lines.append(f"took {elapsed:.0f}s; `ray-migrate plan` estimated "
                         f"{self.estimate['seconds']:.0f}s")
        lines.append(f"{len(self.units)} units, {self.total_copied_now} points copied in "
                     f"{elapsed:.1f}s ({rate:,.0f} points/s overall): {verdict}")
        return "\n".join(lines)


def _parity_line(unit_id: str, p: dict[str, Any]) -> str:
    return (f"{unit_id}: parity over {p['queries']} queries: recall@{p['k']} source "
            f"{p['recall_at_k_source']:.3f}, target {p['recall_at_k_target']:.3f}; overlap "
            f"{p['overlap_at_k']:.3f}; p95 {p['p95_ms_source']:.1f} ms source, "
            f"{p['p95_ms_target']:.1f} ms target")


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)
