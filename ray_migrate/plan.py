"""Plan a migration: describe the source, split it into units, describe the target.

The plan is saved under ``state_uri`` with the config's fingerprint. A re-run reuses it, so unit
ids (and with them checkpoints) stay stable whatever the number of workers.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from ray_migrate.backends.base import Backend
from ray_migrate.config import MigrationConfig
from ray_migrate.errors import ConfigError, TerminalError
from ray_migrate.schema import CollectionInfo
from ray_migrate.state import StateStore
from ray_migrate.transform import Transform
from ray_migrate.units import UnitSpec

log = logging.getLogger(__name__)

PLAN_KEY = "plan.json"


@dataclass
class Plan:
    migration_id: str
    fingerprint: str
    source_info: CollectionInfo
    target_info: CollectionInfo
    units: list[UnitSpec]
    warnings: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    def unit(self, unit_id: str) -> UnitSpec:
        for u in self.units:
            if u.unit_id == unit_id:
                return u
        known = ", ".join(u.unit_id for u in self.units[:10])
        raise ConfigError(f"unknown unit {unit_id!r}; units are: {known}"
                          + (" ..." if len(self.units) > 10 else ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "fingerprint": self.fingerprint,
            "source_info": self.source_info.to_dict(),
            "target_info": self.target_info.to_dict(),
            "units": [u.to_dict() for u in self.units],
            "warnings": self.warnings,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(
            migration_id=d["migration_id"],
            fingerprint=d["fingerprint"],
            source_info=CollectionInfo.from_dict(d["source_info"]),
            target_info=CollectionInfo.from_dict(d["target_info"]),
            units=[UnitSpec.from_dict(u) for u in d["units"]],
            warnings=list(d.get("warnings", [])),
            created_at=d.get("created_at", 0.0),
        )


def _is_uuid(value: Any) -> bool:
    try:
        return str(uuid.UUID(str(value))) == value
    except ValueError:
        return False


def label(value: Any) -> str:
    return "<none>" if value is None else str(value)


def plan_units(cfg: MigrationConfig, source: Backend, info: CollectionInfo) -> list[UnitSpec]:
    """Tenant units from the distinct values of ``units.field``; id ranges from sampled ids."""
    if cfg.units.by == "tenant":
        fld = cfg.units.field or ""
        counts = source.tenant_counts(fld)
        if set(counts) == {None} or not counts:
            raise ConfigError(f"units.field: no point of the source has the payload field "
                              f"{fld!r}; name a field that holds the tenant, or use "
                              "units.by: id_range")
        units = [UnitSpec(f"{fld}={label(v)}", "tenant", field=fld, value=v, estimated_count=n)
                 for v, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, str(kv[0])))]
        total = sum(counts.values())
        if total != info.count:
            raise ConfigError(f"units.field: the tenant units hold {total} points but the source "
                              f"has {info.count}; {fld!r} must hold one scalar value per point")
        return units
    bounds = source.id_boundaries(cfg.units.count) if info.count else []
    edges = [None, *bounds, None]
    units = []
    for i in range(len(edges) - 1):
        unit = UnitSpec(f"range-{i:04d}", "id_range", lo=edges[i], hi=edges[i + 1])
        units.append(UnitSpec(unit.unit_id, "id_range", lo=unit.lo, hi=unit.hi,
                              estimated_count=source.count(unit)))
    return units


def make_plan(cfg: MigrationConfig, source: Backend) -> Plan:
    """Step 1 of a run: describe, split, and work out the target's description."""
    info = source.describe()
    if not info.vectors:
        raise ConfigError(f"source.collection: {info.name!r} has no dense vector to migrate")
    if info.count == 0:
        raise ConfigError(f"source: {cfg.source.name!r} at {cfg.source.location!r} is empty "
                          "(0 points), so there is nothing to migrate; check source's "
                          "collection or table and its path, url or uri")
    check_renames(cfg, info)
    transform = Transform(cfg.transform)
    sample = next((b for b, _ in source.scan(UnitSpec("sample", "all"), 64)), None)
    try:
        target_info = transform.target_info(info, sample) if sample is not None else info
    except TerminalError as err:  # before anything is written: the config names a bad function
        raise ConfigError(f"{err} (on a sample of the source, while planning); fix the "
                          "function or its input before running") from None
    if cfg.payload_schema:
        target_info = replace(target_info, payload_schema={
            **target_info.payload_schema, **cfg.payload_schema})
    if (cfg.units.by == "id_range" and cfg.target.kind == "qdrant" and info.id_type == "str"
            and sample is not None and not all(_is_uuid(i) for i in sample.column("id").to_pylist())):
        raise ConfigError(
            "units.by: id_range cannot split string ids that are not UUIDs for a Qdrant target "
            "(Qdrant holds them as uuid5 of the original, in another order); use units.by: "
            "tenant")
    units = plan_units(cfg, source, info)
    warnings = []
    if not cfg.transform.invertible:
        why = ("drops fields" if cfg.transform.drop_fields
               else "has a function without inverse_function")
        warnings.append(f"transform {why}: a rollback window (syncing target writes back to the "
                        "source) will be refused for this migration")
    for w in warnings:
        log.warning("%s", w)
    return Plan(cfg.migration_id, cfg.fingerprint(), info, target_info, units, warnings)


def check_renames(cfg: MigrationConfig, info: CollectionInfo) -> None:
    """A rename onto a name the source already uses would merge two fields (or vectors) into
    one: refuse it before anything is written. ``info.payload_schema`` holds the keys of a
    sample of the source."""
    t = cfg.transform
    for kind, renames, names in (("rename_fields", t.rename_fields, set(info.payload_schema)),
                                 ("rename_vectors", t.rename_vectors, set(info.vector_names))):
        kept = names - set(renames) - (set(t.drop_fields) if kind == "rename_fields" else set())
        for old, new in sorted(renames.items()):
            if new in kept:
                what = "field" if kind == "rename_fields" else "vector"
                raise ConfigError(
                    f"transform.{kind}: {old!r} -> {new!r}, but the source already has a "
                    f"{what} {new!r}; rename onto a name the source does not use, or also "
                    f"rename{' or drop' if what == 'field' else ''} {new!r}")


def stored_plan(cfg: MigrationConfig, store: StateStore) -> Plan | None:
    """The plan stored by an earlier command, if any; refuse a config changed since then."""
    stored = store.read(PLAN_KEY)
    if stored is None:
        return None
    plan = Plan.from_dict(stored)
    if plan.fingerprint != cfg.fingerprint():
        raise ConfigError(
            f"the config changed since migration {cfg.migration_id!r} was planned "
            f"(state in {store.uri}): source, target, units, transform or payload_schema "
            "differ. Use a new migration_id, or delete that migration's state folder to "
            "start over.")
    return plan


def load_or_make_plan(cfg: MigrationConfig, source: Backend, store: StateStore,
                      save: bool = True) -> Plan:
    """Reuse the stored plan when the config still matches it; refuse a changed config.

    ``save=False`` leaves a new plan unsaved: the driver saves it once the target is ready,
    so a refused target leaves nothing behind."""
    plan = stored_plan(cfg, store)
    if plan is not None:
        return plan
    plan = make_plan(cfg, source)
    if save:
        save_plan(plan, store)
    return plan


def save_plan(plan: Plan, store: StateStore) -> None:
    store.write(PLAN_KEY, plan.to_dict())
