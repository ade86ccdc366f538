"""The guarantee through the gateway, every part its own process: a `ray start` head,
`ray-migrate run` (Qdrant local to LanceDB, auto cutover in waves), `ray-migrate gateway
--detach` started as soon as the router exists, and the application (tests/mp_workload.py
with ``--gateway``) writing, deleting and searching with the real qdrant-client, REST and gRPC
calls in turn, through copy, catch-up and every cutover wave. Then both sides are read with the engines' own
clients and compared with the writer's acknowledged operations (tests/livecase.py): 0 client
errors, 0 lost, no deleted point back, every search hit alive and in its tenant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from gwserve import free_port
from livecase import Case, LiveRun, _ops_while, judged_or_fail, seed, write_config
from raycluster import ray_head

KEY = "live-key"
N_POINTS = 900
# The gateway is deployed once the router exists, which takes a CLI start and Serve's start
# (about 20 s on a loaded 2-core machine): the copy is slowed so that the writer writes
# through the gateway while units copy, catch up and are cut over.
COPY_POINTS_PER_S = 30


def start_gateway(live: LiveRun, table: dict[str, Any] | None) -> None:
    """on_poll: `ray-migrate gateway --detach` once the router has written its table."""
    if table is not None and "gateway" not in live.procs:
        live.cli("gateway", "--detach")


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
        "gateway": {"port": port, "grpc_port": grpc_port, "api_key": KEY, "num_cpus": 0},
        "copy": {"max_points_per_s": COPY_POINTS_PER_S}})
    mid = "mp-gw-q2l"
    initial = seed(case.source, tmp_path / "source", n=N_POINTS)
    cfg = write_config(tmp_path, mid, case)
    with ray_head(tmp_path, num_cpus=4) as head:
        live = LiveRun(head, tmp_path, mid, case, cfg, initial, writer_args=(
            "--gateway", f"http://127.0.0.1:{port}", "--gateway-key", KEY,
            "--gateway-grpc-port", str(grpc_port)))
        live.drive(start_gateway)
        assert live.procs["gateway"].wait(timeout=120) == 0, \
            (tmp_path / "gateway.out").read_text()[-3000:]
        stop_serve(live)
        j = judged_or_fail(live)
    assert _ops_while(j.exp, live.out, "copying") > 0, "the writer wrote while units copied"
