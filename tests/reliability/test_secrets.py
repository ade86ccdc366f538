"""Planted credentials never show: not in CLI output (plain, --json, -v), the Ray session's
logs (driver, workers, router, raylet, GCS: every file), state files, reports, the bucket,
nor in what the router hands to clients.

Two planted secrets:
- an S3 secret key (``aws_secret_access_key``), the actual credential of every request to the
  package's moto S3 server (moto accepts any key pair), so of a real migration: Qdrant local
  -> LanceDB on S3, state on S3, with an application writing through ``RoutedCollection``
  (its credentials its own ``storage_options=``), the driver killed and run again, then
  ``status`` and ``verify``. That run is the package's ``q2l_on_s3``
  (tests/reliability/conftest.py), whose outcome test_object_store.py checks; its head is
  the package's, so its logs hold the other S3 tests' runs too;
- a Qdrant ``api_key`` on a ``url`` endpoint. No Qdrant server runs here: ``plan``, ``run``,
  ``verify`` and ``status`` meet an unreachable server within ``timeout_s`` (exit 1, the
  server named), so the key reaches the Qdrant client and every error path, but never a
  router: the router's hand-out is the same ``MigrationConfig.public_dump`` checked here on
  the S3 run end to end and on the api_key directly (``test_config_dumps``).
"""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from raycluster import Head, free_ports
from s3case import PLANTED_S3_SECRET, S3Run, cli, tail, write_config
from s3server import S3Server

from ray_migrate.config import parse_config
from ray_migrate.credentials import with_credentials
from ray_migrate.errors import ConfigError

S3_SECRET = PLANTED_S3_SECRET
API_KEY = "PLANTEDapi" + secrets.token_hex(12)
UNREACHABLE_S = 60.0  # plan/run/verify against a closed port, timeout_s 2: well within this


def api_endpoint(port: int, grpc: bool = False) -> dict[str, Any]:
    return {"kind": "qdrant", "collection": "docs", "url": f"http://127.0.0.1:{port}",
            "api_key": API_KEY, "timeout_s": 2, "prefer_grpc": grpc}


def test_config_dumps() -> None:
    """repr, str, model_dump of the public view, fingerprint and a validation error of a
    config that holds both secrets; a client without the api_key is told how to give it."""
    raw = {"migration_id": "dumps", "source": api_endpoint(9),
           "target": {"kind": "lancedb", "uri": "s3://b/t", "table": "docs",
                      "storage_options": {"aws_secret_access_key": S3_SECRET,
                                          "aws_endpoint": "http://127.0.0.1:9"}},
           "state_uri": "s3://b/state",
           "state_storage_options": {"aws_secret_access_key": S3_SECRET}}
    cfg = parse_config(raw)
    public = cfg.public_dump()
    for text in (repr(cfg), str(cfg), json.dumps(public), repr(cfg.source), repr(cfg.target)):
        assert S3_SECRET not in text and API_KEY not in text, text
    assert public["target"]["storage_options"] == {"aws_endpoint": "http://127.0.0.1:9"}
    assert cfg.redacted() == ["source.api_key", "target.storage_options.aws_secret_access_key"]
    rotated = parse_config({**raw, "source": {**raw["source"], "api_key": "another"},
                            "target": {**raw["target"], "storage_options": {
                                "aws_secret_access_key": "other",
                                "aws_endpoint": "http://127.0.0.1:9"}}})
    assert rotated.fingerprint() == cfg.fingerprint(), "a rotated key is the same migration"
    client = parse_config(public)
    with pytest.raises(ConfigError, match="QDRANT_API_KEY") as err:
        with_credentials(client, redacted=cfg.redacted())
    assert API_KEY not in str(err.value)
    mine = with_credentials(client, api_key=API_KEY,
                            storage_options={"aws_secret_access_key": S3_SECRET})
    assert mine.source.api_key == API_KEY
    assert mine.target.storage_options["aws_secret_access_key"] == S3_SECRET
    for bad in ({**raw, "source": {**raw["source"], "path": "/x"}},  # url and path
                {**raw, "target": {**raw["target"], "storage_options": {
                    "aws_secret_access_key": S3_SECRET, "allow_http": 1}}}):
        with pytest.raises(ConfigError) as err:
            parse_config(bad)
        assert S3_SECRET not in str(err.value) and API_KEY not in str(err.value)


def leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return [name for name, s in (("S3 secret", S3_SECRET), ("api_key", API_KEY)) if s in text]


def s3_outputs(run: S3Run, s3: S3Server) -> dict[str, str]:
    """Every command's output of the S3 run (the router's hand-out checked first), and every
    object in every bucket of the server: state, reports, tables."""
    described = run.out["router describe"]
    assert described.returncode == 0, described.stderr[-3000:]
    info = json.loads(described.stdout)
    assert "target.storage_options.aws_secret_access_key" in info["redacted"], info
    assert info["config"]["state_storage_options"] == {}, info["config"]
    assert run.rc == 0, tail(run.tmp, "run2", 6000)
    assert run.writer_rc == 0, tail(run.tmp, "writer")
    out = {}
    for name, res in run.out.items():
        assert res.returncode in (0, 1), res.stderr[-3000:]
        out[name] = res.stdout + res.stderr
    client = s3.client()
    for bucket in (b["Name"] for b in client.list_buckets()["Buckets"]):
        for key in s3.keys(bucket):
            out[f"s3://{bucket}/{key}"] = s3.get(bucket, key).decode(errors="replace")
    assert any(f"s3://{run.bucket}/state/" in k and k.endswith("report.json") for k in out)
    out[str(s3.log)] = s3.log.read_text(errors="replace")  # moto's request log
    return out


def api_key_paths(head: Head, tmp: Path, out: dict[str, str]) -> None:
    """The planted api_key against a Qdrant url that nothing listens on (REST; and gRPC, the
    default, for ``plan``)."""
    def config(mid: str, grpc: bool) -> str:
        return str(write_config(tmp, mid, api_endpoint(free_ports(1)[0], grpc),
                                {"kind": "lancedb", "uri": str(tmp / f"{mid}-lance"),
                                 "table": "docs"}, str(tmp / "api-state")))

    def timed(args: list[str]) -> tuple[list[str], Any, float]:
        t0 = time.monotonic()
        return args, cli(head, tmp, *args, timeout_s=UNREACHABLE_S), time.monotonic() - t0

    cfg, grpc = config("secret-api", False), config("secret-grpc", True)
    commands = (["plan", cfg], ["plan", cfg, "--json"], ["-v", "plan", cfg],
                ["-v", "plan", grpc],
                ["run", cfg, "--address", head.address],
                ["-v", "run", cfg, "--address", head.address],
                ["verify", cfg, "--address", head.address],
                ["verify", cfg, "--json", "--address", head.address],
                ["status", cfg], ["status", cfg, "--json"])
    with ThreadPoolExecutor(2) as pool:  # each mostly waits: starting up, on a closed port
        done = list(pool.map(timed, commands))
    for args, res, took in done:
        text = res.stdout + res.stderr
        # An unreachable url is bad input (2); status has no routing table to show (1).
        want = 1 if "status" in args else 2
        assert res.returncode == want and "Traceback" not in text, text[-3000:]
        if args[-1] != "--json" and "status" not in args:
            assert "127.0.0.1" in text, f"the unreachable server is not named: {text[-2000:]}"
        assert took < UNREACHABLE_S
        out[" ".join(args)] = text


def session_logs(head: Head) -> dict[str, str]:
    logs = Path(head.temp_dir) / "session_latest" / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any("worker" in p.name for p in files) and any("gcs" in p.name for p in files)
    return {str(p): p.read_bytes().decode(errors="replace") for p in files}


def local_files(tmp: Path) -> dict[str, str]:
    """Every file the test's processes wrote: outputs, state and report folders, ops logs;
    not the configs and the client's credential file, which hold the secrets on purpose."""
    kept = [p for p in tmp.rglob("*") if p.is_file() and p.suffix not in (".yaml",)
            and p.name != "client-storage.json"]
    return {str(p): p.read_bytes().decode(errors="replace") for p in kept}


def test_planted_secrets_never_show(s3: S3Server, head: Head, q2l_on_s3: S3Run,
                                    tmp_path: Path) -> None:
    out = s3_outputs(q2l_on_s3, s3)
    api_key_paths(head, tmp_path, out)
    out.update(session_logs(head))
    out.update(local_files(q2l_on_s3.tmp))
    out.update(local_files(tmp_path))
    found = {where: what for where, text in out.items() if (what := leaks(text))}
    assert not found, f"secrets found in: {found}"
