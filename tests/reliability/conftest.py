"""What the object-store and secrets tests share: one moto S3 server whose secret key is the
planted one, one `ray start` head, and one live Qdrant -> LanceDB-on-S3 migration killed and
resumed (``q2l_on_s3``): test_object_store.py checks its outcome, test_secrets.py that the
planted secret shows in none of its outputs, logs, state or objects. One live S3 run, one head
and one S3 server for both (each costs from seconds to a minute)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from raycluster import Head, ray_head
from s3case import PLANTED_S3_SECRET, S3Run, q2l_killed_and_resumed
from s3server import S3Server, s3_server


@pytest.fixture(scope="package")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server; the planted secret is every request's credential."""
    with s3_server(tmp_path_factory.mktemp("moto"), secret_key=PLANTED_S3_SECRET) as server:
        yield server


@pytest.fixture(scope="package")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """A head with no AWS variables: the run's processes get S3 from the config only."""
    with ray_head(tmp_path_factory.mktemp("head"), num_cpus=4) as h:
        seen = [k for k in h.env if re.match(r"AWS_(ACCESS|SECRET|SESSION|ENDPOINT)", k)]
        assert not seen, f"the head must take S3 credentials from the config only: {seen}"
        yield h


@pytest.fixture(scope="package")
def q2l_on_s3(s3: S3Server, head: Head, tmp_path_factory: pytest.TempPathFactory) -> S3Run:
    return q2l_killed_and_resumed(s3, head, tmp_path_factory.mktemp("q2l-s3"))


