"""A local S3 endpoint for the object-store tests: moto's server on 127.0.0.1, a free port.

It runs as its own process (``moto_server``), so Ray workers, the router, `ray-migrate` and
application subprocesses all reach it as they would reach S3, and the pytest process's GIL
never slows its answers. moto accepts any key pair: the keys a test plants are the actual
credentials of every request.

    with s3_server() as s3:
        s3.make_bucket("state")
        s3.storage_options   # LanceDB storage_options (and state_storage_options)
        s3.keys("state")     # every object in a bucket, by boto3
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raycluster import free_ports, stop_group

START_TIMEOUT_S = 60.0
REGION = "us-east-1"


@dataclass
class S3Server:
    """A running moto server: its endpoint and the credentials the test chose."""

    endpoint: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen
    log: Path

    @property
    def storage_options(self) -> dict[str, str]:
        """LanceDB's names for the endpoint and credentials (ray_migrate's
        ``state_storage_options`` takes the same)."""
        return {"aws_access_key_id": self.access_key,
                "aws_secret_access_key": self.secret_key,
                "aws_endpoint": self.endpoint, "aws_region": REGION, "allow_http": "true"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in ``bucket``."""
        out: list[str] = []
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
        for page in pages:
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def requests(self) -> list[str]:
        """Every request the server answered so far, as 'METHOD /bucket/key?query'."""
        text = self.log.read_text(errors="replace")
        return re.findall(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+ /\S*) HTTP/1\.1', text)

    def version(self) -> str:
        from importlib.metadata import version

        return version("moto")


def _wait_up(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)  # waiting for the server's socket to accept


@contextlib.contextmanager
def s3_server(log_dir: Path, secret_key: str | None = None) -> Iterator[S3Server]:
    """Start moto's S3 server on a free port of 127.0.0.1; stop it at the end. Its clients
    use ``secret_key`` (default: a random one)."""
    port = free_ports(1)[0]
    exe = Path(sys.executable).parent / "moto_server"
    log = log_dir / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        _wait_up(port, proc, log)
        yield S3Server(endpoint=f"http://127.0.0.1:{port}",
                       access_key="AKIA" + secrets.token_hex(8).upper(),
                       secret_key=secret_key or secrets.token_urlsafe(30), proc=proc, log=log)
    finally:
        stop_group(proc, term_wait_s=5)


__all__ = ["REGION", "S3Server", "s3_server"]
