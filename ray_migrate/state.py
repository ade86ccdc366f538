"""Durable state under ``state_uri``: plan, checkpoints, reports, routing table.

Everything goes through ``pyarrow.fs``, so a local folder and an object-store URI
(``s3://``, ``gs://``) work the same. Each write replaces a whole small JSON document, and a
reader never sees half of one: on a local folder it is written to a temporary name and
renamed; on S3, which has no rename, it is one PUT (an object appears whole or not at all).

An ``s3://`` ``state_uri`` takes its endpoint and credentials from ``state_storage_options``
(LanceDB's ``storage_options`` names: ``aws_access_key_id``, ``aws_secret_access_key``,
``aws_endpoint``, ``aws_region``, ...), else from the standard AWS environment of the process
that opens it (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ..., or an instance role).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

TARGET_KEY = "target.json"  # present when this migration created the target

# state_storage_options key -> S3FileSystem argument (LanceDB's names, and short ones)
S3_OPTIONS = {
    "aws_access_key_id": "access_key", "access_key_id": "access_key",
    "aws_secret_access_key": "secret_key", "secret_access_key": "secret_key",
    "aws_session_token": "session_token", "session_token": "session_token",
    "aws_endpoint": "endpoint_override", "aws_endpoint_url": "endpoint_override",
    "endpoint": "endpoint_override", "endpoint_url": "endpoint_override",
    "aws_region": "region", "region": "region",
    "allow_http": "allow_http",
}
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


def safe_name(key: str) -> str:
    """A file name for any unit id (tenant values may hold '/', spaces, unicode)."""
    return quote(key, safe="")


def s3_filesystem(options: Mapping[str, str] | None = None) -> pafs.S3FileSystem:
    """pyarrow's S3 client from ``state_storage_options``; what they leave out comes from the
    process's AWS environment. Small documents go out as one PUT (``allow_delayed_open``:
    without it pyarrow starts a multipart upload for every file, three requests)."""
    kw: dict[str, Any] = {}
    for key, value in (options or {}).items():
        kw[S3_OPTIONS[key.lower()]] = value
    allow_http = str(kw.pop("allow_http", "")).lower() in ("1", "true", "yes")
    endpoint = kw.get("endpoint_override") or next(
        (os.environ[e] for e in ENDPOINT_ENV if os.environ.get(e)), None)
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else
                         f"{'http' if allow_http else 'https'}://{endpoint}")
        kw["endpoint_override"], kw["scheme"] = parts.netloc, parts.scheme
    return pafs.S3FileSystem(allow_delayed_open=True, **kw)


def open_filesystem(state_uri: str, options: Mapping[str, str] | None = None
                    ) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path) of a local folder or an object-store URI."""
    if state_uri.startswith("s3://") and "?" not in state_uri:  # a query: pyarrow's own
        parts = urlsplit(state_uri)
        return s3_filesystem(options), f"{parts.netloc}{parts.path}".rstrip("/")
    if "://" not in state_uri:
        state_uri = os.path.abspath(state_uri)
    return pafs.FileSystem.from_uri(state_uri)


class StateStore:
    """Small JSON documents under ``<state_uri>/<migration_id>/``. ``storage_options``: the
    config's ``state_storage_options`` (an ``s3://`` URI's endpoint and credentials)."""

    def __init__(self, state_uri: str, migration_id: str,
                 storage_options: Mapping[str, str] | None = None):
        self.uri = state_uri
        self.migration_id = migration_id
        fs, root = open_filesystem(state_uri, storage_options)
        self.fs = fs
        self.root = f"{root.rstrip('/')}/{migration_id}"
        self._local = isinstance(fs, pafs.LocalFileSystem)
        self._flat = type(fs).__name__ in ("S3FileSystem", "GcsFileSystem")

    @classmethod
    def of(cls, cfg: Any) -> StateStore:
        """The store of a ``MigrationConfig``."""
        return cls(cfg.state_uri, cfg.migration_id, cfg.state_storage_options)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def path_of(self, key: str) -> str:
        """Where a document is, as a user opens it: a local path, or ``s3://bucket/...``."""
        if self._local:
            return self._path(key)
        return f"{self.uri.split('://')[0]}://{self._path(key)}"

    def write(self, key: str, doc: Any) -> None:
        path = self._path(key)
        data = json.dumps(doc, indent=1, sort_keys=True, default=str).encode()
        if not self._flat:  # an object store has no folders to make
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if self._local:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            os.replace(tmp, path)
        else:  # one object, written whole
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def read(self, key: str, default: Any = None) -> Any:
        path = self._path(key)
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return default
        except OSError as err:
            if "not found" in str(err).lower() or "no such file" in str(err).lower():
                return default
            raise

    # --- the documents ------------------------------------------------------------------
    def checkpoint_key(self, unit_id: str) -> str:
        return f"checkpoints/{safe_name(unit_id)}.json"

    def load_checkpoint(self, unit_id: str) -> dict[str, Any] | None:
        return self.read(self.checkpoint_key(unit_id))

    def save_checkpoint(self, unit_id: str, checkpoint: dict[str, Any]) -> None:
        self.write(self.checkpoint_key(unit_id), checkpoint)
