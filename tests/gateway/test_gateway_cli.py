"""``ray-migrate gateway``'s bad input: a bad ``gateway:`` section, a bad flag or a migration
with no router is refused with exit 2 and a message naming the field, and nothing is
deployed. The gateway's requests without Serve: ``routes.handle`` on a bare ``QdrantOps``."""

from __future__ import annotations

from typing import Any

import pytest
from truth import write_q2l_config

from ray_migrate.cli import main


@pytest.fixture
def deployed(monkeypatch) -> list[Any]:
    """Records every deploy instead of deploying."""
    import ray_migrate.gateway.app as app

    calls: list[Any] = []
    monkeypatch.setattr(app, "deploy", lambda *a, **k: calls.append((a, k)) or "http://x")
    return calls


@pytest.mark.parametrize("section, named", [
    ({"port": 70000}, "gateway.port"),
    ({"replicas": 0}, "gateway.replicas"),
    ({"prot": 6333}, "gateway.prot: unknown key"),
    ({"api_key": ""}, "gateway.api_key"),
    ({"tls_cert": "cert.pem"}, "tls_cert and gateway.tls_key go together"),
    ({"tls_cert": "cert.pem", "tls_key": "key.pem"}, "gateway.tls_cert: no file at"),
])
def test_a_bad_gateway_section_is_refused_naming_the_field(tmp_path, capsys, deployed,
                                                           section, named):
    cfg = write_q2l_config(tmp_path, "gw-bad", gateway=section)
    assert main(["gateway", str(cfg)]) == 2
    assert named in capsys.readouterr().err
    assert deployed == []


def test_tls_files_resolve_against_the_config_folder(tmp_path):
    from ray_migrate.config import load_config
    from ray_migrate.gateway.app import http_options

    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    cfg = load_config(write_q2l_config(tmp_path, "gw-tls", gateway={
        "tls_cert": "cert.pem", "tls_key": "key.pem", "port": 7443}))
    opts = http_options(cfg.gateway)
    assert opts["ssl_certfile"] == str(tmp_path / "cert.pem") and opts["port"] == 7443


@pytest.mark.parametrize("flags, named", [
    (["--port", "0"], "--port 0"),
    (["--replicas", "0"], "--replicas 0"),
    (["--host", ""], "--host ''"),
])
def test_bad_flags_are_refused_naming_the_flag(tmp_path, capsys, deployed, flags, named):
    cfg = write_q2l_config(tmp_path, "gw-flags")
    assert main(["gateway", str(cfg), *flags]) == 2
    assert named in capsys.readouterr().err
    assert deployed == []


def test_no_router_is_refused_before_anything_is_deployed(ray_cluster, tmp_path, capsys,
                                                          deployed):
    cfg = write_q2l_config(tmp_path, f"gw-none-{tmp_path.name}")
    assert main(["gateway", str(cfg), "--detach"]) == 2
    assert "no router for migration" in capsys.readouterr().err
    assert deployed == []


def test_the_routes_answer_in_qdrants_envelope_without_serve():
    from ray_migrate.gateway.routes import endpoints, handle

    status, out = handle(None, "k", "GET", "/", {}, None)
    assert status == 200 and out["title"] == "ray_migrate gateway"
    status, out = handle(None, "k", "GET", "/collections", {}, None)
    assert status == 401 and "API key" in out["status"]["error"]
    status, out = handle(None, "k", "GET", "/collections", {"api-key": "x"}, None)
    assert status == 403
    status, out = handle(None, None, "DELETE", "/collections/docs", {}, None)
    assert status == 404 and "DELETE /collections/docs is not supported" in \
        out["status"]["error"]
    assert "POST /collections/([^/]+)/points/query/batch" in endpoints()


def test_clients_never_get_the_gateway_section(tmp_path):
    """The router hands clients public_dump(): no gateway key, and no TLS paths that a client
    on another machine would fail to find when it validates the config."""
    from ray_migrate.config import MigrationConfig, load_config

    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    cfg = load_config(write_q2l_config(tmp_path, "gw-pub", gateway={
        "api_key": "s3cret", "tls_cert": "cert.pem", "tls_key": "key.pem"}))
    public = cfg.public_dump()
    assert public["gateway"] is None and "s3cret" not in str(public)
    (tmp_path / "cert.pem").unlink()  # as on another machine
    assert MigrationConfig.model_validate(public).gateway is None
