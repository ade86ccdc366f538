"""The guarantee through the gateway, every part its own process: a `ray start` head,
`ray-migrate run` (Qdrant local to LanceDB, auto cutover in waves), `ray-migrate gateway
--detach` started as soon as the router exists, and the application (tests/mp_workload.py
with ``--gateway``) writing, deleting and searching with the real qdrant-client, REST and gRPC
calls in turn, through copy, catch-up and every cutover wave. Then both sides are read with the engines' own
clients and compared with the writer's acknowledged operations (tests/livecase.py): 0 client
errors, 0 lost, no deleted point back, every search hit alive and in its tenant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gwserve import free_port
from livecase import Case, LiveRun, _ops_while, judged_or_fail, seeded_head, write_config
from mp_workload import SEARCH_EVERY

from ray_migrate import failpoints

KEY = "live-key"
N_POINTS = 900
# The gateway is deployed once the router exists, which takes a CLI start and Serve's start
# (about 20 s on a loaded 2-core machine): every unit's copy waits, after its first batch, until
# the writer has had writes (REST and gRPC in turn) and a search through the gateway answered
# (a fail point held until this file exists), so that the writer writes through the gateway
# while units copy, catch up and are cut over. (Before, the copy was slowed to 30 points/s to
# outlast the start, and it took ~30 s.)
COPIED_AFTER = "gateway-wrote"
WRITES_IN_COPY = 2 * SEARCH_EVERY  # acknowledged writes through the gateway, a copy held
HOLD_COPY_S = 240


def hold_copy(tmp: Path) -> dict[str, str]:
    """The head's environment: every copy batch waits until ``COPIED_AFTER`` exists."""
    return {failpoints.ENV: json.dumps({"copy.batch_written": {
        "action": "wait", "path": str(tmp / COPIED_AFTER), "seconds": HOLD_COPY_S}})}


class StartGateway:
    """on_poll: `ray-migrate gateway --detach` once the router has written its table; let
    the copies go on once, since the poll first saw a unit copying, the writer has had more
    than ``WRITES_IN_COPY`` writes and a search through the gateway answered."""

    def __init__(self) -> None:
        self.before: tuple[int, int] | None = None  # answered when a unit was first copying

    def __call__(self, live: LiveRun, table: dict[str, Any] | None) -> None:
        if table is not None and "gateway" not in live.procs:
            live.cli("gateway", "--detach")
        go = live.tmp / COPIED_AFTER
        if go.exists() or table is None:
            return
        answered = _answered(live.tmp / "ops.jsonl")
        if self.before is None:
            if any(r["phase"] == "copying" for r in table["units"].values()):
                self.before = answered
            return
        writes, searches = answered[0] - self.before[0], answered[1] - self.before[1]
        if writes > WRITES_IN_COPY and searches:
            live.out.notes.append(f"{writes} writes and {searches} searches through the "
                                  "gateway answered while every copy was held: they go on")
            go.touch()


def _answered(ops: Path) -> tuple[int, int]:
    """(acknowledged writes, answered searches) in the writer's ops log so far."""
    try:
        lines = ops.read_text().splitlines()
    except FileNotFoundError:
        return 0, 0
    ends = [d for d in map(json.loads, lines[:-1]) if d.get("phase") == "end" and d["ok"]]
    searches = sum(str(d["i"]).startswith("s") for d in ends)
    return len(ends) - searches, searches


def stop_serve(live: LiveRun) -> None:
    """Shut Serve down on the head, so its replicas' clients leave the router (the hosted
    Qdrant source is released as after any run) before the sides are read."""
    code = ("import ray; from ray import serve; "
            f"ray.init(address={live.head.address!r}, log_to_driver=False); serve.shutdown()")
    subprocess.run([sys.executable, "-c", code], env=live.head.env, cwd=live.tmp, timeout=120,
                   capture_output=True)


def test_a_live_migration_through_the_gateway_loses_nothing(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    case = Case("gw-q2l", "qdrant", n_points=N_POINTS, config={
        "gateway": {"port": port, "grpc_port": grpc_port, "api_key": KEY, "num_cpus": 0}})
    mid = "mp-gw-q2l"
    cfg = write_config(tmp_path, mid, case)
    with seeded_head(tmp_path, case.source, N_POINTS, num_cpus=4,
                     env=hold_copy(tmp_path)) as (head, initial):
        live = LiveRun(head, tmp_path, mid, case, cfg, initial, writer_args=(
            "--gateway", f"http://127.0.0.1:{port}", "--gateway-key", KEY,
            "--gateway-grpc-port", str(grpc_port)))
        live.drive(StartGateway())
        assert live.procs["gateway"].wait(timeout=120) == 0, \
            (tmp_path / "gateway.out").read_text()[-3000:]
        stop_serve(live)
        j = judged_or_fail(live)
    assert (tmp_path / COPIED_AFTER).exists(), "the writer never wrote through the gateway"
    assert _ops_while(j.exp, live.out, "copying") >= WRITES_IN_COPY, \
        "the writer wrote while units copied"
