"""The config's optional ``gateway:`` section: where the gateway listens, how many replicas,
the API key it asks for and the TLS files Ray Serve's HTTP proxy takes. Bad values are refused
when the config is read, naming the field."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ray_migrate.errors import ConfigError


class GatewayConfig(BaseModel):
    host: str = Field("127.0.0.1", min_length=1, description="Address Ray Serve's HTTP proxy binds "
                      "(0.0.0.0: every interface)")
    port: int = Field(6333, ge=1, le=65535, description="HTTP port (Qdrant's is 6333)")
    grpc_port: int | None = Field(None, ge=1, le=65535, description="gRPC port of Serve's "
                                  "gRPC proxy (Qdrant's is 6334); none: REST only")
    replicas: int = Field(1, ge=1, le=64, description="Serve replicas of the gateway")
    max_ongoing_requests: int = Field(8, ge=1, le=1000, description="Requests one replica "
                                      "handles at once")
    num_cpus: float = Field(0.25, ge=0, le=64, description="CPUs reserved per replica")
    collection: str | None = Field(None, min_length=1, description="The Qdrant collection "
                                   "name clients use (default: the source's collection/table)")
    api_key: str | None = Field(None, min_length=1, repr=False, description="The key clients "
                                "must send (api-key header or Bearer token); none: no auth")
    tls_cert: str | None = Field(None, description="PEM certificate file (with tls_key)")
    tls_key: str | None = Field(None, description="PEM private key file (with tls_cert)")

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _tls(self) -> GatewayConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("gateway.tls_cert and gateway.tls_key go together: give both "
                             "PEM files, or neither for plain HTTP")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"gateway.{name}: no file at {path!r}")
        return self


def with_flags(gw: GatewayConfig | None, **flags: Any) -> GatewayConfig:
    """The config's gateway section with the command line's ``--host``/``--port``/
    ``--replicas`` over it (None: not given), checked as the config is: ConfigError naming the
    flag and the fix."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return GatewayConfig(**{**(gw or GatewayConfig()).model_dump(), **given})
    except ValidationError as err:
        problems = "; ".join(f"--{'.'.join(map(str, e['loc']))} {e.get('input')!r}: {e['msg']}"
                             if e["loc"] and e["loc"][0] in given else f"gateway: {e['msg']}"
                             for e in err.errors())
        raise ConfigError(f"bad gateway setting: {problems}") from None


__all__ = ["GatewayConfig", "with_flags"]
