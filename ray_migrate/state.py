"""Durable state under ``state_uri``: plan, checkpoints, reports, routing table.

Everything goes through ``pyarrow.fs``, so a local folder and an object-store URI
(``s3://``, ``gs://``) work the same. Each write replaces a whole small JSON document; on a
local folder it is written to a temporary name and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any
from urllib.parse import quote

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

TARGET_KEY = "target.json"  # present when this migration created the target


def safe_name(key: str) -> str:
    """A file name for any unit id (tenant values may hold '/', spaces, unicode)."""
    return quote(key, safe="")


class StateStore:
    """Small JSON documents under ``<state_uri>/<migration_id>/``."""

    def __init__(self, state_uri: str, migration_id: str):
        self.uri = state_uri
        self.migration_id = migration_id
        fs, root = pafs.FileSystem.from_uri(state_uri if "://" in state_uri
                                            else os.path.abspath(state_uri))
        self.fs = fs
        self.root = f"{root.rstrip('/')}/{migration_id}"
        self._local = isinstance(fs, pafs.LocalFileSystem)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def write(self, key: str, doc: Any) -> None:
        path = self._path(key)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        data = json.dumps(doc, indent=1, sort_keys=True, default=str).encode()
        if self._local:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            os.replace(tmp, path)
        else:
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
