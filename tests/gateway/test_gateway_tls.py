"""The gateway over HTTPS, end to end, and ``ray-migrate gateway --stop``.

Serve's HTTP options (port, TLS files) are fixed once per Serve instance, so the HTTPS test has
a Ray head of its own (tests/raycluster.py): `ray-migrate run` (LanceDB to LanceDB, manual
cutover: it stops with every unit ready and the router alive), `ray-migrate gateway --detach`
with a certificate signed by a CA the test makes, then the real qdrant-client over https,
trusting that CA only, upserts, retrieves and searches, checked against LanceDB's own client;
plain HTTP and a client that does not trust the CA are refused; `gateway --stop` removes it,
and Ctrl-C of a gateway in the foreground does the same.
The other tests use the session cluster: a Serve that runs with other HTTP options is refused,
and `--stop` leaves other applications alone and names them when there is nothing to stop."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import select
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gwserve import free_port
from livecase import CLI, DIM, TENANTS, endpoint, seed
from raycluster import Head, ray_head, stop_group
from truth import read_side, write_q2l_config

from ray_migrate.cli import main

KEY = "tls-secret"
MID = "gw-tls"
N_POINTS = 120


def make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for 127.0.0.1 signed by it, server key) as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ray-migrate test CA")])

    def builder(subject: Any, public_key: Any) -> Any:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False))

    ca = (builder(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
                      key.public_key())
              .add_extension(x509.SubjectAlternativeName([
                  x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                  critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def write_config(tmp: Path, port: int) -> Path:
    """LanceDB to LanceDB by tenant, manual cutover, the gateway on ``port`` with TLS (the
    files relative to the config, as users write them)."""
    cfg = {"migration_id": MID, "source": endpoint("lancedb", tmp / "source"),
           "target": endpoint("lancedb", tmp / "target"),
           "units": {"by": "tenant", "field": "tenant"},
           "copy": {"batch_size": 200, "workers": 1}, "cutover": {"mode": "manual"},
           "state_uri": str(tmp / "state"),
           "gateway": {"port": port, "api_key": KEY, "num_cpus": 0,
                       "tls_cert": "cert.pem", "tls_key": "key.pem"}}
    path = tmp / "migration.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


def cli(head: Head, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """``ray-migrate ARGS --address HEAD`` as its own process; it must end within 180 s."""
    return subprocess.run([CLI, *args, "--address", head.address], env=head.env, cwd=tmp,
                          capture_output=True, text=True, timeout=180)


def said(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def lance_truth(uri: Path) -> dict[int, tuple[np.ndarray, dict[str, Any]]]:
    """id -> (vector, payload) read with LanceDB's own client (tests/truth.py)."""
    out = {}
    for pid, rows in read_side("lancedb", uri).items():
        assert len(rows) == 1, f"point {pid} stored {len(rows)} times"
        out[pid] = (np.frombuffer(rows[0][0], np.float32), rows[0][1])
    return out


def check_the_client_over_https(url: str, ca: Path, source: Path) -> None:
    """The real qdrant-client over https, trusting the test's CA: an upsert lands on the
    owner (every unit is on the source before cutover) as written, a retrieve reads it back,
    a search is LanceDB's data's exact top 5 by dot product."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(url=url, api_key=KEY, timeout=60,
                          verify=ssl.create_default_context(cafile=str(ca)))
    rng = np.random.default_rng(7)
    points = [models.PointStruct(id=50_000 + i, vector=rng.standard_normal(DIM).tolist(),
                                 payload={"tenant": TENANTS[i % 2], "title": f"tls {i}",
                                          "rank": -i}) for i in range(6)]
    assert client.upsert("docs", points).status.value == "completed"
    truth = lance_truth(source)
    assert len(truth) == N_POINTS + len(points)
    for p in points:
        assert truth[p.id][1] == p.payload
        assert truth[p.id][0].tolist() == np.asarray(p.vector, np.float32).tolist()

    got = client.retrieve("docs", [p.id for p in points] + [999_999], with_vectors=True)
    assert sorted(r.id for r in got) == [p.id for p in points]
    for r in got:
        assert r.payload == truth[r.id][1] and np.allclose(r.vector, truth[r.id][0])

    ids = np.array(sorted(truth))
    matrix = np.stack([truth[i][0] for i in ids])
    q = rng.standard_normal(DIM).astype(np.float32)
    scores = matrix @ q
    best = np.argsort(-scores)[:5]
    hits = client.query_points("docs", query=q.tolist(), limit=5).points
    assert [h.id for h in hits] == ids[best].tolist()
    assert np.allclose([h.score for h in hits], scores[best], atol=1e-4)
    assert client.count("docs").count == len(truth)
    client.close()


def test_the_real_client_over_https_then_stop(tmp_path: Path) -> None:
    ca, _, _ = make_certs(tmp_path)
    seed("lancedb", tmp_path / "source", n=N_POINTS)
    port = free_port()
    cfg = write_config(tmp_path, port)
    url = f"https://127.0.0.1:{port}"
    with ray_head(tmp_path, num_cpus=2) as head:
        run = cli(head, tmp_path, "run", str(cfg), "--no-progress")
        assert run.returncode == 0, said(run)
        up = cli(head, tmp_path, "gateway", str(cfg), "--detach")
        assert up.returncode == 0 and url in up.stdout, said(up)

        check_the_client_over_https(url, ca, tmp_path / "source")
        with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port
            httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url, timeout=10)  # a client that does not trust the test's CA

        down = cli(head, tmp_path, "gateway", str(cfg), "--stop")
        assert down.returncode == 0, said(down)
        assert f"removed Serve application 'rm-gateway-{MID}'" in down.stdout, said(down)
        assert "shut Serve down" in down.stdout, said(down)
        with pytest.raises(httpx.ConnectError):  # Serve is gone, and its port is free
            httpx.get(url, verify=ssl.create_default_context(cafile=str(ca)), timeout=10)

        check_ctrl_c_stops_a_foreground_gateway(head, tmp_path, cfg, url, ca)


def check_ctrl_c_stops_a_foreground_gateway(head: Head, tmp: Path, cfg: Path, url: str,
                                            ca: Path) -> None:
    """`ray-migrate gateway` in the foreground answers until Ctrl-C, which stops it as
    ``--stop`` does: the port is free again for the next gateway's options."""
    proc = subprocess.Popen([CLI, "gateway", str(cfg), "--address", head.address],
                            env=head.env, cwd=tmp, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        seen = read_until(proc, url.encode(), timeout_s=120)
        assert url.encode() in seen, seen.decode(errors="replace")[-3000:]
        verify = ssl.create_default_context(cafile=str(ca))
        assert httpx.get(url, verify=verify, timeout=30).json()["title"] == "ray_migrate gateway"
        os.kill(proc.pid, signal.SIGINT)
        out = seen + proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
        assert b"shut Serve down" in out, out.decode(errors="replace")[-3000:]
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, verify=verify, timeout=10)
    finally:
        stop_group(proc, term_wait_s=5)


def read_until(proc: subprocess.Popen, wanted: bytes, timeout_s: float) -> bytes:
    """``proc``'s output until ``wanted`` shows (or it ends, or ``timeout_s`` passes)."""
    got, deadline = b"", time.monotonic() + timeout_s
    fd = proc.stdout.fileno()
    while wanted not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            break
        got += chunk
    return got


@pytest.fixture
def plain_serve(ray_cluster) -> Any:
    """Serve started on the session cluster over plain HTTP on a free port (as another
    gateway or application would have started it); shut down at the end."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()


def test_a_serve_running_with_other_http_options_is_refused(plain_serve, tmp_path):
    """Serve keeps the HTTP options it started with and only logs a warning for new ones: the
    gateway would have printed an https URL and answered in the clear. Refused, naming both."""
    from ray import serve

    from ray_migrate.config import load_config
    from ray_migrate.errors import ConfigError
    from ray_migrate.gateway.app import check_running_serve, deploy

    make_certs(tmp_path)
    cfg = load_config(write_q2l_config(tmp_path, f"gw-tls-other-{tmp_path.name}", gateway={
        "port": plain_serve, "tls_cert": "cert.pem", "tls_key": "key.pem"}))
    with pytest.raises(ConfigError, match=r"ssl_certfile: running None, asked '/.*cert\.pem'"):
        deploy(cfg)
    assert serve.status().applications == {}, "nothing deployed"
    check_running_serve({"host": "127.0.0.1", "port": plain_serve})  # the same options: joined


def test_stop_removes_only_that_gateway_and_names_what_runs_when_none(plain_serve, tmp_path,
                                                                      capsys):
    from ray import serve

    from ray_migrate.gateway.app import app_name

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    def hello(request: Any) -> str:
        return "hello"

    mid = f"gw-stop-{tmp_path.name}"
    cfg = write_q2l_config(tmp_path, mid)
    serve.run(hello.bind(), name=app_name(mid), route_prefix="/gw")  # stands for the gateway
    serve.run(hello.bind(), name="other-app", route_prefix="/other")

    assert main(["gateway", str(cfg), "--stop"]) == 0
    out = capsys.readouterr().out
    assert f"removed Serve application {app_name(mid)!r}" in out, out
    assert "Serve keeps running for other-app" in out, out
    assert sorted(serve.status().applications) == ["other-app"]

    assert main(["gateway", str(cfg), "--stop"]) == 2
    err = capsys.readouterr().err
    assert f"no gateway for migration {mid!r} runs" in err, err
    assert "Serve applications running: other-app" in err, err
