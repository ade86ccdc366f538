"""The migration config: YAML in, validated pydantic models out.

Every model forbids unknown keys, so a typo is an error that names the key rather than a
setting that silently does nothing. ``load_config`` turns pydantic's errors into one
``ConfigError`` whose lines each name a field and say how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ray_migrate.config_checks import check_state_uri, check_waves, format_errors, yaml_message
from ray_migrate.errors import ConfigError
from ray_migrate.gateway.settings import GatewayConfig
from ray_migrate.state import S3_OPTIONS

# An option whose name says it is a credential: never stored where others read it (the router
# hands the config to every client), never printed.
SECRET_OPTION = re.compile(r"secret|token|key|password|passwd|credential|sas|signature|auth",
                           re.IGNORECASE)
PayloadType = Literal["bool", "int", "float", "string", "json"]
Distance = Literal["cosine", "l2", "dot", "manhattan"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QdrantEndpoint(_Model):
    """A Qdrant collection: local mode (``path``) or a server (``url`` and ``api_key``)."""

    kind: Literal["qdrant"]
    collection: str = Field(min_length=1)
    path: str | None = None
    url: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    prefer_grpc: bool = True
    timeout_s: float = 60.0

    @model_validator(mode="after")
    def _one_location(self) -> QdrantEndpoint:
        if bool(self.path) == bool(self.url):
            raise ValueError(
                "give exactly one of path (Qdrant local mode folder) or url (Qdrant server)"
            )
        if self.path and self.api_key:
            raise ValueError("api_key only applies to url; remove it for a local path")
        return self

    @property
    def location(self) -> str:
        return self.path or self.url or ""

    @property
    def name(self) -> str:
        return self.collection


class LanceEndpoint(_Model):
    """A LanceDB table in a folder or an object-store URI."""

    kind: Literal["lancedb"]
    uri: str = Field(min_length=1)
    table: str = Field(min_length=1)
    storage_options: dict[str, str] = Field(default_factory=dict, repr=False)
    distance: Distance | None = Field(
        default=None,
        description="Metric of a LanceDB source table that ray_migrate did not create "
        "(LanceDB keeps no metric in the table). Default: what the table records, else l2.",
    )

    @property
    def location(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.table


Endpoint = Annotated[QdrantEndpoint | LanceEndpoint, Field(discriminator="kind")]


class UnitsConfig(_Model):
    by: Literal["tenant", "id_range"] = "id_range"
    field: str | None = None
    count: int = Field(default=16, ge=1, le=100_000)

    @model_validator(mode="after")
    def _field_for_tenant(self) -> UnitsConfig:
        if self.by == "tenant" and not self.field:
            raise ValueError(
                "units.field is required when units.by is tenant: name the payload field "
                "that holds the tenant (for example field: tenant)"
            )
        return self


class WorkerResources(_Model):
    num_cpus: float = Field(default=1.0, ge=0)
    memory_mb: int | None = Field(default=None, ge=1)
    resources: dict[str, float] = Field(default_factory=dict)


class ThrottleConfig(_Model):
    """Adaptive throttling (``ray_migrate.throttle``): the copy and verify's scans pause
    between batches while the clients' recent write p99 is above its limit."""

    max_client_p99_ratio: float = Field(
        default=0, ge=0, description="pause while the clients' write p99 over the last "
        "window_s is above this many times its baseline (before the copy, else the best "
        "window since); 0: no ratio limit")
    max_client_p99_ms: float = Field(default=0, ge=0, description="pause while the clients' "
                                     "write p99 is above this many ms; 0: no ceiling")
    window_s: float = Field(default=5.0, gt=0, le=300)
    baseline_s: float = Field(default=30.0, gt=0, le=3600)
    min_requests: int = Field(default=10, ge=1, description="windows with fewer client "
                              "writes judge nothing")
    check_s: float = Field(default=1.0, gt=0, le=60)
    max_pause_s: float = Field(default=10.0, ge=0, description="longest pause per batch: "
                               "the migration still ends under a slow application")


class CopyConfig(_Model):
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    workers: int = Field(default=4, ge=1, le=1024)
    worker_resources: WorkerResources = WorkerResources()
    max_retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    max_points_per_s: float = Field(
        default=0, ge=0, description="the copy's rate limit for the whole migration, shared "
        "evenly by the workers, so the application keeps its share of the machine; 0: none")
    throttle: ThrottleConfig = ThrottleConfig()


class TransformConfig(_Model):
    """Changes applied to every batch on its way to the target."""

    rename_fields: dict[str, str] = Field(default_factory=dict)
    drop_fields: list[str] = Field(default_factory=list)
    rename_vectors: dict[str, str] = Field(default_factory=dict)
    function: str | None = None
    inverse_function: str | None = None
    query_function: str | None = Field(
        default=None, description="module:function taking a query vector in the source's "
        "space (a 1-d float32 numpy array) and returning it in the target's: searches of "
        "units on the target embed the query with it when transform.function re-embeds")

    @field_validator("function", "inverse_function", "query_function")
    @classmethod
    def _module_function(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[\w.]+:[\w]+", v):
            raise ValueError(f"{v!r} is not module:function (for example my_pkg.embed:reembed)")
        return v

    @model_validator(mode="after")
    def _no_clash(self) -> TransformConfig:
        dropped = set(self.drop_fields) & set(self.rename_fields)
        if dropped:
            raise ValueError(f"fields {sorted(dropped)} are both renamed and dropped; keep one")
        targets = list(self.rename_fields.values())
        if len(set(targets)) != len(targets):
            raise ValueError("two fields in rename_fields are renamed to the same name")
        if self.query_function and not self.function:
            raise ValueError("query_function embeds queries for a target whose vectors "
                             "transform.function changes; set transform.function (the "
                             "re-embedding) or remove query_function")
        return self

    @property
    def is_identity(self) -> bool:
        return not (self.rename_fields or self.drop_fields or self.rename_vectors or self.function)

    @property
    def invertible(self) -> bool:
        """Renames invert themselves; a function needs its declared inverse; a drop never does."""
        return not self.drop_fields and (self.function is None or self.inverse_function is not None)


class LanceTargetOptions(_Model):
    compact: bool = True
    cleanup_older_than_s: float = Field(
        default=600.0, ge=0, description="after compaction, delete table versions older than "
        "this; clients may be reading the newer ones, so never 0 during a live migration")
    index_min_rows: int = Field(default=100_000, ge=1)
    index_type: Literal["IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT"] = "IVF_PQ"
    compact_min_fragments: int = Field(
        default=32, ge=0, description="while units wait and after cutover, merge the target's "
        "small fragments whenever it holds this many (every catch-up or client write adds one, "
        "and each slows later reads, writes and the cutover's drain); the bulk load's large "
        "fragments are left to finalize; 0 turns it off")
    compact_source: bool = Field(
        default=False, description="with a LanceDB source, merge its small fragments too, at "
        "the same moments (the application's writes to units still on the source pile them up "
        "and slow its own writes and the migration's reads); no version of the source is "
        "removed. Off by default: ray_migrate alters a source only when asked")


class ParityConfig(_Model):
    """Query parity (``ray_migrate.parity``): recall@k of both sides against brute force."""

    queries: int = Field(default=50, ge=1, le=10_000, description="points sampled from each "
                         "unit and searched on both sides")
    k: int = Field(default=10, ge=1, le=1000)
    vector: str | None = Field(default=None, description="the source vector searched "
                               "(default: the first)")


class VerifyConfig(_Model):
    enabled: bool = True
    max_repair_rounds: int = Field(default=3, ge=0)
    parity: ParityConfig | None = Field(default=None, description="measure query parity of "
                                        "every unit before its cutover (off by default)")


class GatesConfig(_Model):
    """What a unit or a wave must meet to go on. ``min_recall`` is applied before each unit's
    cutover (needs ``verify.parity``); the other two after each wave, over its pause (and the
    last wave over the rollback window): a breach rolls the wave back (``slo``, ``waves``)."""

    min_recall: float | None = Field(default=None, ge=0, le=1)
    max_p95_ratio: float | None = Field(default=None, gt=0)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    min_shadow_overlap: float | None = Field(
        default=None, ge=0, le=1, description="after each wave, the mean overlap@k of the "
        "shadow reads of its units (needs reads.shadow_percent) must reach this")


class CutoverConfig(_Model):
    """Rolling cutover: waves of units, each behind a short write freeze."""

    mode: Literal["auto", "manual"] = "auto"
    waves: list[int | str] = Field(default_factory=lambda: [1, "25%", "100%"])
    pause_s: float = Field(default=10.0, ge=0)
    max_freeze_ms: int = Field(default=500, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    ready_lag: int = Field(default=100, ge=0, description="a unit is ready for cutover when "
                           "at most this many changed ids wait for catch-up")
    write_lease_s: float = Field(default=30.0, gt=0)
    concurrency: int = Field(default=1, ge=1, description="units cut over at the same time; "
                             "one at a time keeps each freeze short on a small cluster")
    gates: GatesConfig = GatesConfig()

    @field_validator("waves")
    @classmethod
    def _waves(cls, v: list[int | str]) -> list[int | str]:
        return check_waves(v)


class ReadsConfig(_Model):
    """How client reads are observed (``ray_migrate.shadow``)."""

    shadow_percent: float = Field(
        default=0, ge=0, le=100, description="share of client searches of units on the "
        "target (or ready on the source) also run on the other side, to compare answers; "
        "the client always returns the owner's")


class RollbackConfig(_Model):
    window_s: float = Field(default=0.0, ge=0, description="how long after the last cutover "
                            "writes to the target are synced back to the source")


class MigrationConfig(_Model):
    migration_id: str
    source: Endpoint
    target: Endpoint
    units: UnitsConfig = UnitsConfig()
    copy_: CopyConfig = Field(default=CopyConfig(), alias="copy")
    transform: TransformConfig = TransformConfig()
    payload_schema: dict[str, PayloadType] = Field(
        default_factory=dict,
        description="Declared column types for payload keys in a LanceDB target "
        "(otherwise inferred from a sample of the source).",
    )
    lance: LanceTargetOptions = LanceTargetOptions()
    verify: VerifyConfig = VerifyConfig()
    cutover: CutoverConfig = CutoverConfig()
    rollback: RollbackConfig = RollbackConfig()
    reads: ReadsConfig = ReadsConfig()
    gateway: GatewayConfig | None = None  # ``ray-migrate gateway`` (ray_migrate.gateway)
    state_uri: str
    state_storage_options: dict[str, str] = Field(
        default_factory=dict, repr=False, description="Endpoint and credentials of an s3:// "
        "state_uri, in LanceDB's storage_options names (aws_access_key_id, "
        "aws_secret_access_key, aws_endpoint, aws_region, allow_http); default: the AWS "
        "environment of each process that opens the state")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("migration_id")
    @classmethod
    def _id_chars(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError(
                f"{v!r} is not a valid migration_id: use letters, digits, '-', '_' or '.' "
                "(it names Ray actors and the state folder)"
            )
        return v

    @model_validator(mode="after")
    def _state_options(self) -> MigrationConfig:
        opts = self.state_storage_options
        if opts and not self.state_uri.startswith("s3://"):
            raise ValueError("state_storage_options: only an s3:// state_uri takes options; "
                             "remove them or point state_uri at s3://bucket/prefix")
        unknown = sorted(k for k in opts if k.lower() not in S3_OPTIONS)
        if unknown:
            raise ValueError(f"state_storage_options: unknown option(s) {unknown}; use "
                             f"{', '.join(sorted(set(S3_OPTIONS)))}")
        return self

    @model_validator(mode="after")
    def _not_same(self) -> MigrationConfig:
        s, t = self.source, self.target
        if s.kind == t.kind and s.location == t.location and s.name == t.name:
            raise ValueError(
                "source and target are the same collection; point target at another "
                "collection or table"
            )
        return self

    @model_validator(mode="after")
    def _rollback_needs_inverse(self) -> MigrationConfig:
        if self.rollback.window_s > 0 and not self.transform.invertible:
            raise ValueError(
                "rollback.window_s: the transform cannot be inverted (it drops fields or has "
                "a function without transform.inverse_function), so target writes cannot be "
                "synced back; set rollback.window_s: 0 or declare the inverse")
        return self

    @model_validator(mode="after")
    def _wave_gates_need_inverse(self) -> MigrationConfig:
        g = self.cutover.gates
        wave_gates = (g.max_p95_ratio, g.max_error_rate, g.min_shadow_overlap)
        if any(x is not None for x in wave_gates) and not self.transform.invertible:
            raise ValueError(
                "cutover.gates: a breach of max_p95_ratio, max_error_rate or min_shadow_overlap "
                "rolls the wave back, "
                "but the transform cannot be inverted (it drops fields or has a function "
                "without transform.inverse_function); declare the inverse or remove those gates")
        return self

    @model_validator(mode="after")
    def _recall_needs_parity(self) -> MigrationConfig:
        if self.cutover.gates.min_recall is not None and self.verify.parity is None:
            raise ValueError(
                "cutover.gates.min_recall: recall is measured by query parity, which is off; "
                "add verify: {parity: {queries: 50, k: 10}} or remove min_recall")
        if self.cutover.gates.min_shadow_overlap is not None and self.reads.shadow_percent == 0:
            raise ValueError(
                "cutover.gates.min_shadow_overlap: overlap is measured by shadow reads, which "
                "are off; add reads: {shadow_percent: 10} or remove min_shadow_overlap")
        return self

    @property
    def copy_cfg(self) -> CopyConfig:
        return self.copy_

    def fingerprint(self) -> str:
        """A hash of what decides the plan; a resumed run must match the stored plan's.
        Credentials are left out: a rotated key is not another migration (and a hash of a
        short key could be searched for)."""
        keys = {"source", "target", "units", "transform", "payload_schema"}
        data = self.model_dump(mode="json", include=keys)
        data["transform"].pop("query_function", None)  # reads only: not part of the plan
        for side in ("source", "target"):
            data[side] = public_endpoint(data[side])
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def public_dump(self) -> dict[str, Any]:
        """The config as JSON without credentials: ``api_key``, the secret entries of
        ``storage_options`` and every ``state_storage_options``. This is what the router keeps
        and hands to clients (``RoutedCollection.connect``), which take credentials from their
        own arguments or environment."""
        data = self.model_dump(mode="json", by_alias=True)
        for side in ("source", "target"):
            data[side] = public_endpoint(data[side])
        data["state_storage_options"] = {}
        # Clients need no gateway settings: its key stays with whoever runs it, and its TLS
        # files need not exist where a client validates the config.
        data["gateway"] = None
        return data

    def redacted(self) -> list[str]:
        """The credentials ``public_dump`` leaves out, by name (``source.api_key``,
        ``target.storage_options.aws_secret_access_key``), so a client can say what it lacks."""
        out = []
        for side in ("source", "target"):
            ep = getattr(self, side)
            if isinstance(ep, QdrantEndpoint) and ep.api_key:
                out.append(f"{side}.api_key")
            if isinstance(ep, LanceEndpoint):
                out += [f"{side}.storage_options.{k}" for k in ep.storage_options
                        if SECRET_OPTION.search(k)]
        return out


def public_endpoint(ep: dict[str, Any]) -> dict[str, Any]:
    """An endpoint's JSON without its credentials (``api_key``, secret storage options)."""
    ep = dict(ep)
    if ep.get("api_key") is not None:
        ep["api_key"] = None
    if "storage_options" in ep:
        ep["storage_options"] = {k: v for k, v in ep["storage_options"].items()
                                 if not SECRET_OPTION.search(k)}
    return ep


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make local paths relative to the config file's folder, not to the current directory."""

    def local(p: Any) -> Any:
        if isinstance(p, str) and "://" not in p and not os.path.isabs(p) and p != ":memory:":
            return str((base / p).resolve())
        return p

    out = dict(raw)
    for side in ("source", "target"):
        if isinstance(out.get(side), dict):
            ep = dict(out[side])
            for key in ("path", "uri"):
                if key in ep:
                    ep[key] = local(ep[key])
            out[side] = ep
    if "state_uri" in out:
        out["state_uri"] = local(out["state_uri"])
    if isinstance(out.get("gateway"), dict):  # its TLS files too
        out["gateway"] = {k: local(v) if k in ("tls_cert", "tls_key") else v
                          for k, v in out["gateway"].items()}
    return out


def parse_config(raw: dict[str, Any], base_dir: str | Path = ".") -> MigrationConfig:
    """Validate a config given as a dict (relative paths are taken from ``base_dir``)."""
    if not isinstance(raw, dict):
        raise ConfigError("invalid migration config: the top level must be a mapping of keys")
    try:
        cfg = MigrationConfig.model_validate(_resolve_paths(raw, Path(base_dir)))
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None
    check_state_uri(cfg.state_uri)
    return cfg


def load_config(path: str | Path) -> MigrationConfig:
    """Read and validate a YAML config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(yaml_message(str(path), err)) from None
    if raw is None:
        raise ConfigError(f"config file {str(path)!r} is empty; write the migration in it "
                          "(migration_id, source, target, state_uri: see examples/)")
    return parse_config(raw, p.parent)
