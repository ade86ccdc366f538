"""Every engine call retried on a transient error, at the one place all of them pass.

``open_backend`` hands out backends wrapped in ``RetryingBackend``, so the copy, the
followers' catch-up, verify, a cutover's drain, finalize and every ``RoutedCollection`` call
meet a blip (a timeout, a commit conflict, a lost reply) as a short, bounded, jittered wait
(``retry.BACKEND``) instead of an error. Only idempotent calls are retried: reads, upserts and
deletes by id (a write retried after its reply was lost writes the same values again). A scan
that breaks goes on from the cursor of the last batch it yielded. ``append`` (not idempotent:
the copy retries it as an upsert itself), ``create`` and ``maintain`` (the upkeep tries again
on its next round) are not retried here. A terminal error is never retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from ray_migrate.backends.base import Backend, Cursor, SearchHit
from ray_migrate.checksum import Digest
from ray_migrate.errors import TransientError
from ray_migrate.retry import BACKEND, RetryPolicy
from ray_migrate.schema import CollectionInfo
from ray_migrate.units import UnitSpec


class RetryingBackend(Backend):
    """Delegates to ``inner``; idempotent calls are retried per ``policy``."""

    def __init__(self, inner: Backend, policy: RetryPolicy = BACKEND,
                 sleep: Callable[[float], None] = time.sleep):
        self.inner, self.policy, self.sleep = inner, policy, sleep
        self.kind, self.capabilities = inner.kind, inner.capabilities

    def __getattr__(self, name: str) -> Any:  # what a backend has beyond the contract
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _retried(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.inner, method)
        return self.policy.call(lambda: fn(*args, **kwargs),
                                f"{self.inner.kind} {method}", sleep=self.sleep)

    def exists(self) -> bool:
        return self._retried("exists")

    def describe(self, sample_size: int = 1000) -> CollectionInfo:
        return self._retried("describe", sample_size)

    def create(self, info: CollectionInfo) -> None:
        self.inner.create(info)

    def check_compatible(self, info: CollectionInfo) -> None:
        self._retried("check_compatible", info)

    def tenant_counts(self, field: str) -> dict[Any, int]:
        return self._retried("tenant_counts", field)

    def id_boundaries(self, count: int) -> list[Any]:
        return self._retried("id_boundaries", count)

    def count(self, unit: UnitSpec) -> int:
        return self._retried("count", unit)

    def scan(self, unit: UnitSpec, batch_size: int, cursor: Cursor | None = None,
             raw: bool = False) -> Iterator[tuple[pa.Table, Cursor]]:
        """The inner scan; when it breaks, a new one from the last batch's cursor (each
        cursor resumes right after its batch). Failures in a row are bounded as for a call.
        ``raw``: the inner LanceDB table's own columns (``LanceBackend.scan``)."""
        at, failures = cursor, 0
        kw = {"raw": True} if raw else {}
        while True:
            try:
                for batch, nxt in self.inner.scan(unit, batch_size, at, **kw):
                    at, failures = nxt, 0
                    yield batch, nxt
                return
            except TransientError:
                failures += 1
                if failures >= self.policy.attempts:
                    raise
                self.sleep(self.policy.delay(failures))

    def list_units(self, units: Sequence[UnitSpec]) -> str | None:
        return self._retried("list_units", units)  # a second listing is as good as the first

    def fetch(self, ids: Sequence[Any]) -> pa.Table:
        return self._retried("fetch", ids)

    def fetch_values(self, ids: Sequence[Any], field: str) -> list[tuple[Any, Any]]:
        return self._retried("fetch_values", ids, field)

    def checksum(self, unit: UnitSpec, batch_size: int = 2000) -> Digest:
        return self._retried("checksum", unit, batch_size)

    def search(self, vector: Sequence[float], k: int, vector_name: str,
               unit: UnitSpec | None = None, within: Sequence[UnitSpec] | None = None,
               exact: bool = True) -> list[SearchHit]:
        return self._retried("search", vector, k, vector_name, unit, within, exact)

    def upsert(self, table: pa.Table,
               within: Sequence[UnitSpec] | None = None) -> list[Any] | None:
        if within is None:
            return self._retried("upsert", table)
        return self._retried("upsert", table, within)

    def update_in_place(self, table: pa.Table, field: str) -> bool | None:
        # Tried again after a lost reply, it replaces the same points with the same rows.
        return self._retried("update_in_place", table, field)

    def append(self, table: pa.Table) -> None:
        self.inner.append(table)

    def direct_from(self, source: Backend) -> Any:
        # Not through a wrapper that is no Backend (fault injection): its faults would be
        # bypassed.
        if not isinstance(self.inner, Backend):
            return None
        return self.inner.direct_from(getattr(source, "inner", source))

    def delete(self, ids: Sequence[Any], unit: UnitSpec | None = None) -> None:
        self._retried("delete", ids, unit)

    def delete_many(self, parts: Sequence[tuple[Sequence[Any], UnitSpec | None]]) -> None:
        self._retried("delete_many", parts)

    def stored_form(self, table: pa.Table) -> pa.Table:
        return self._retried("stored_form", table)

    def keeps_canonical(self) -> bool:
        return self._retried("keeps_canonical")

    def check_writable(self, table: pa.Table) -> None:
        self._retried("check_writable", table)

    def finalize(self, options: Any) -> dict[str, Any]:
        return self._retried("finalize", options)

    def maintain(self, options: Any, keep_versions: bool = False) -> dict[str, Any] | None:
        return self.inner.maintain(options, keep_versions)

    def close(self) -> None:
        self.inner.close()


__all__ = ["RetryingBackend"]
