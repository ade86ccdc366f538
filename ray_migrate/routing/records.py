"""The routing table's records: phases and their transitions, a unit's route, a lease, a
change-log entry.

``table`` holds the rules that change them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

Phase = Literal["source", "capturing", "copying", "catching_up", "ready", "frozen", "target",
                "rolled_back", "done", "failed"]
Owner = Literal["source", "target"]

# Phases that log the ids clients write: a unit's log always means "ids whose owner's value
# must be copied to the other side". A rolled-back unit keeps capturing, so its target stays a
# standby that a later cutover only has to catch up.
# Lease tokens and log seqs are ``incarnation << INCARNATION_SHIFT | n``, n counting from 1 in
# each incarnation of the router (each restore is a new one, persisted before it serves): so no
# number is issued twice across restarts, and a later incarnation's numbers exceed every earlier
# one's, which keeps the seq comparisons (``ack_changes``) meaningful.
INCARNATION_SHIFT = 40
CAPTURING: frozenset[str] = frozenset(
    {"capturing", "copying", "catching_up", "ready", "frozen", "target", "rolled_back"})
# Phases whose change log the workers' followers apply to the target; units on the target
# are followed back to the source (``follower.Follower``).
FOLLOWED: frozenset[str] = frozenset({"catching_up", "ready", "rolled_back"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "source": frozenset({"capturing", "failed"}),
    "capturing": frozenset({"copying", "failed", "source"}),
    "copying": frozenset({"catching_up", "failed", "source"}),
    "catching_up": frozenset({"ready", "frozen", "failed", "source"}),
    "ready": frozenset({"catching_up", "frozen", "failed", "source"}),
    "frozen": frozenset({"catching_up", "ready", "target", "rolled_back", "failed"}),
    "target": frozenset({"frozen", "done"}),
    "rolled_back": frozenset({"capturing", "source"}),
    "done": frozenset(),
    "failed": frozenset({"source", "capturing"}),
}


class TransitionError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One id in a unit's change log: its owner's value must be copied to the other side.

    ``token``: the lease of the client write that logged it, None for a repair entry (a
    verify found the id differing), which is settled at once."""

    seq: int
    id: Any
    token: int | None = None

    def to_list(self) -> list[Any]:
        """Compact, for JSON: [seq, id] or [seq, id, token]."""
        return [self.seq, self.id] if self.token is None else [self.seq, self.id, self.token]

    @classmethod
    def of(cls, entry: LogEntry | list[Any] | tuple[Any, ...]) -> LogEntry:
        """From either form, as stored (a list) or already typed."""
        if isinstance(entry, LogEntry):
            return entry
        return cls(entry[0], entry[1], entry[2] if len(entry) > 2 else None)


@dataclass
class UnitRoute:
    unit_id: str
    owner: Owner = "source"
    phase: Phase = "source"
    copied: int = 0
    total: int = 0
    last_error: str | None = None
    flips: int = 0  # how often the owner changed: a lease from an older flip is stale
    capture_epoch: int = 0  # the table epoch at which capture began
    needs_repair: bool = False  # the change log may have lost entries (router restarted)
    frozen_at: float | None = None
    cutover_at: float | None = None
    longest_freeze_ms: float = 0.0
    value: Any = None  # the tenant value of a unit first seen at run time
    sync_holder: str | None = None  # who applies this unit's log now (one at a time)
    sync_since: float = 0.0
    sync_background: bool = False  # the holder is a follower
    reserved_by: str | None = None  # a cutover or rollback about to run: followers yield
    reserved_at: float = 0.0
    log: list[LogEntry] = field(default_factory=list)  # not yet applied, in seq order
    marks: list[tuple[int, float]] = field(default_factory=list)  # (first seq, time) per write
    watches: dict[str, set[Any]] = field(default_factory=dict)  # verifies: ids logged since
    taken: list[int] = field(default_factory=list)  # seqs handed to the current applier
    acked_seq: int = 0

    def to_row(self, logs: bool) -> dict[str, Any]:
        """As a plain dict of what is durable (copying the log only when asked: it can be
        long)."""
        row = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("log", "taken", "marks", "watches")}
        if logs:
            row["log"], row["taken"] = [e.to_list() for e in self.log], list(self.taken)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UnitRoute:
        u = cls(**row)
        u.log = [LogEntry.of(e) for e in u.log]
        return u


@dataclass
class Lease:
    token: int
    unit_id: str
    epoch: int
    flips: int
    issued_at: float
    ids: list[Any] = field(default_factory=list)  # logged ids, while capturing
    fenced: bool = False  # ended after a flip: held open until the client's retry ends
    owner: str = ""  # the side the client writes under this lease (the owner at its grant)
    # Granted while no unit captured and every unit had one owner: its write may move points
    # between any units unlooked-up, so every unit's capture waits for it (P2a).
    wide: bool = False
