"""A unit: the slice of a collection that moves as one (a tenant or an id range)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class UnitSpec:
    """A picklable description of one unit; workers get this, never a client handle.

    ``kind == "tenant"``: every point whose payload ``field`` equals ``value``; ``value`` None
    means the points where the field is absent or null. ``kind == "id_range"``: ids in
    ``[lo, hi)``, where None is an open end. ``kind == "all"``: the whole collection.
    """

    unit_id: str
    kind: Literal["tenant", "id_range", "all"]
    field: str | None = None
    value: Any = None
    lo: Any = None
    hi: Any = None
    estimated_count: int = 0

    def contains_id(self, pid: Any) -> bool:
        """For id ranges: is this id inside the range (ints numerically, strings as text)."""
        if self.kind != "id_range":
            raise ValueError("contains_id is only defined for id_range units")
        if self.lo is not None and pid < self.lo:
            return False
        return self.hi is None or pid < self.hi

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitSpec:
        return cls(**d)
