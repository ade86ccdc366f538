"""A client's rows cross Ray as Arrow IPC bytes, not as a ``pyarrow.Table``: Ray pickles a table
column by column in Python, on the client's write path and again from the router to the
applier (bench/router.py measured the router at 0.35-0.5x a no-op actor under capture). Real
Ray, router, LanceDB on both sides; the client's router calls watched, not changed."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from test_live import DIM, live_config, other_side, seed

from ray_migrate import RoutedCollection
from ray_migrate.backends.lancedb import LanceBackend
from ray_migrate.catchup import settled_by_clients
from ray_migrate.config import LanceEndpoint
from ray_migrate.driver import Migration
from ray_migrate.routing.client_rows import decode_rows, encode_rows


def test_rows_round_trip_through_the_ipc_encoding_and_a_table_passes_as_is():
    t = pa.table({"id": pa.array([1, 2], pa.uint64()), "title": ["doc ✓", None],
                  "tags": pa.array([["a"], None], pa.list_(pa.string()))})
    data = encode_rows(t)
    assert not isinstance(data, pa.Table)
    assert decode_rows(data).equals(t)
    assert decode_rows(bytes(data)).equals(t), "as plain bytes too"
    assert decode_rows(t) is t, "rows a client handed in as a table are still read"


def test_a_capturing_write_hands_its_rows_in_as_ipc_and_the_applier_reads_them(
        ray_cluster, tmp_path):
    source, _ = seed("lancedb", tmp_path, n=40)
    mid = f"wire-{tmp_path.name}"
    m = Migration(live_config(tmp_path, mid, source, other_side("lancedb", tmp_path),
                              cutover={"mode": "manual"}))
    m.start()
    coll = None
    try:
        m.prepare_units()
        m.router.call("pause_followers", 120.0)  # the log stays for this test to take
        coll = RoutedCollection.connect(mid)
        sent: list[tuple[Any, ...]] = []
        real_call = coll.router.call

        def watching(method: str, *args: Any, **kwargs: Any) -> Any:
            if method == "end_writes":
                sent.append(args)
            return real_call(method, *args, **kwargs)

        coll.router.call = watching  # type: ignore[method-assign]
        point = {"id": 9001, "vector": [0.5] * DIM, "payload": {"tenant": "t1", "v": 7}}
        coll.upsert([point])
        handed = [rows for args in sent if len(args) > 1 for rows, _n in args[1].values()]
        assert [kind for kind, _ in handed] == ["upsert"], "the capturing unit's rows go along"
        assert not isinstance(handed[0][1], pa.Table), "as IPC bytes, not a table"
        ids, _seq, carried = m.router.call("take_changes", "tenant=t1", 100)
        assert ids == [9001] and carried, "the router hands the rows on with the log"
        owner = LanceBackend(LanceEndpoint(**source))
        known, rows = settled_by_clients(carried, owner)
        assert known == [9001] and rows is not None
        assert rows.column("id").to_pylist() == [9001]
        assert rows.column("vector").to_pylist() == [[0.5] * DIM]
    finally:
        if coll is not None:
            coll.close()
        m.close()
