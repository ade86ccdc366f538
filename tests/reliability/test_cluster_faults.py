"""What the cluster does to a live migration: a node lost, and another migration beside it.

Both run as users run them (tests/livecase.py): `ray-migrate run CONFIG --address` and the
application (tests/mp_workload.py) as processes of their own, the outcome read with the
engines' own clients and compared with the application's acknowledged writes.

- A worker node of a 3-node ``ray.cluster_utils.Cluster`` (tests/reliability/cluster_nodes.py,
  a process of its own) is removed while the unit workers on it copy units; the units finish
  on the remaining node (their copy resumes from its checkpoint), the run exits 0, nothing is
  lost. Unit workers ask for a resource only the two worker nodes have, so they run there.
- Two migrations with different ids run side by side in one cluster (LanceDB -> LanceDB and
  LanceDB -> Qdrant, one state_uri), each with its own writer; both complete, each judged
  against its own writer's log, and neither's actors, state or stores are the other's.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livecase import Case, Judged, LiveRun, judged_or_fail, routing, seed, tail, write_config
from raycluster import Head, head_env, kill_matching, stop_group

from ray_migrate.state import StateStore

HERE = Path(__file__).resolve().parent
SLOT = "unit_slot"  # a resource only the worker nodes have
START_TIMEOUT_S = 120.0


# --- a node lost ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LanceToLance(Case):
    @property
    def target(self) -> str:
        return "lancedb"


class Nodes:
    """The cluster_nodes.py process: its address, and commands answered in JSON lines."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"cluster_nodes.py ended before answering {command!r}"
        return json.loads(line)


@contextlib.contextmanager
def three_nodes(tmp: Path) -> Iterator[tuple[Head, Nodes]]:
    """A head and two worker nodes (``SLOT``: 2 each) run by cluster_nodes.py, token auth on."""
    temp_dir = tempfile.mkdtemp(prefix="rmcl-")  # short: Ray's socket paths have a limit
    token = secrets.token_hex(32)
    env = {**head_env(token), "RAY_TMPDIR": temp_dir}
    log_path = tmp / "cluster.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "cluster_nodes.py"), "--temp-dir", temp_dir,
             "--node-resource", f"{SLOT}=2"], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    nodes = Nodes(proc)
    head_env_ = {k: v for k, v in env.items() if k != "RAY_TMPDIR"}
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"cluster_nodes.py did not start:\n{log_path.read_text()[-3000:]}")
        address = json.loads(line)["address"]
        yield Head(address=address, env=head_env_, token=token, dashboard_url=None, proc=proc,
                   log_path=log_path, temp_dir=temp_dir), nodes
    finally:
        with contextlib.suppress(Exception):
            nodes.proc.stdin.write("stop\n")  # type: ignore[union-attr]
            nodes.proc.stdin.flush()  # type: ignore[union-attr]
            proc.wait(timeout=60)
        stop_group(proc, term_wait_s=5)
        kill_matching(temp_dir)


NODE_CASE = LanceToLance("node-loss-l2l", "lancedb", n_points=3000, config={
    # Throttled so that the copy lasts a while and both workers hold a unit when the node goes.
    "copy": {"workers": 2, "batch_size": 100, "max_points_per_s": 300,
             "worker_resources": {"num_cpus": 1, "resources": {SLOT: 1}}},
    # A follower's hold on a log lapses after a lease time: the removed one's, sooner.
    "cutover": {"pause_s": 1, "write_lease_s": 5},
})


class RemoveNode:
    """on_poll: once both workers are copying a unit and each has written some of it, remove
    a worker node holding a worker (and not the router)."""

    def __init__(self, nodes: Nodes):
        self.nodes, self.answer = nodes, None
        self.held: dict[str, int] = {}  # unit -> points copied, when the node went

    def __call__(self, live: LiveRun, table: dict[str, Any] | None) -> None:
        if self.answer is not None or table is None:
            return
        store = StateStore(str(live.tmp / "state"), live.mid)
        busy = {u: (store.load_checkpoint(u) or {}).get("copied", 0)
                for u, r in table["units"].items() if r["phase"] == "copying"}
        if len(busy) < 2 or not all(busy.values()):
            return
        self.held = busy
        self.answer = self.nodes.ask(f"remove {live.mid}")
        live.out.notes.append(f"units being copied {busy}; node removal: {self.answer}")


def test_a_worker_node_removed_while_its_workers_hold_units(tmp_path: Path) -> None:
    mid = "node-loss"
    initial = seed("lancedb", tmp_path / "source", NODE_CASE.n_points)
    cfg = write_config(tmp_path, mid, NODE_CASE)
    with three_nodes(tmp_path) as (head, nodes):
        live = LiveRun(head, tmp_path, mid, NODE_CASE, cfg, initial)
        remover = RemoveNode(nodes)
        live.drive(remover)
        judged_or_fail(live, extra=lambda j: node_was_lost(live, remover))


def node_was_lost(live: LiveRun, remover: RemoveNode) -> list[str]:
    """The node went while its workers held units, and a unit's copy went on elsewhere."""
    answer = remover.answer or {}
    if not answer.get("removed"):
        return [f"no worker node was removed: {answer or 'the copy never had two units'}"]
    out = tail(live.tmp, "run", 1_000_000)
    if "resuming after" not in out:
        return ["no unit's copy resumed from its checkpoint after the node went"]
    return []


# --- two migrations side by side ------------------------------------------------------------
# Q->L and L->Q: a hosted Qdrant store in each. Here a client write under way on the Qdrant
# source when its run ended was held 10-17 s once: the store was released under it (see
# test_store_lifetime.py::test_a_release_waits_for_a_write_under_way_on_the_store).
TWINS = [Case("twin-q2l", "qdrant", n_points=1500, config={"cutover": {"pause_s": 1}}),
         Case("twin-l2q", "lancedb", n_points=1500, config={"cutover": {"pause_s": 1}})]
SNAPSHOT = """
import json, sys, ray
from ray._private.state import actors
ray.init(address=sys.argv[1], namespace="ray_migrate", log_to_driver=False)
names = sorted(a["Name"] for a in actors().values() if a["State"] == "ALIVE" and a["Name"])
configs = {}
from ray_migrate.routing.actor import get_router
for n in names:
    if n.endswith(":router"):
        configs[n] = get_router(n.split(":")[1]).call("describe")["config"]
print(json.dumps({"actors": names, "configs": configs}, default=str))
"""


class Snapshot:
    """on_poll (of both migrations): once both runs copy or catch up a unit, list the
    cluster's live actors and what each router serves, from a process of its own (this one
    runs the session's in-process Ray)."""

    def __init__(self, lives: list[LiveRun]):
        self.lives = lives
        self.doc: dict[str, Any] | None = None
        self.lock = threading.Lock()

    def __call__(self, live: LiveRun, table: dict[str, Any] | None) -> None:
        if self.doc is not None or not self.lock.acquire(blocking=False):
            return
        try:
            if self.doc is None and all(self._going(o) for o in self.lives):
                self.doc = self._take(live.head)
        finally:
            self.lock.release()

    @staticmethod
    def _going(live: LiveRun) -> bool:
        table = routing(live.tmp, live.mid)
        run = live.procs.get("run")
        # Early in the copy: the snapshot's own process needs a few seconds to connect, and
        # a small migration's workers end with its run.
        return bool(table) and run is not None and run.poll() is None and any(
            r["phase"] in ("copying", "catching_up") for r in table["units"].values())

    @staticmethod
    def _take(head: Head) -> dict[str, Any]:
        res = subprocess.run([sys.executable, "-c", SNAPSHOT, head.address], env=head.env,
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            return {"error": res.stderr[-2000:]}
        return json.loads(res.stdout.strip().splitlines()[-1])


def test_two_migrations_side_by_side_with_clients_on_both(tmp_path: Path) -> None:
    from raycluster import ray_head

    lives: list[LiveRun] = []
    for case in TWINS:
        (tmp_path / case.name).mkdir()
    # The sources are seeded while `ray start` (processes of its own) boots.
    seeding = ThreadPoolExecutor(len(TWINS), thread_name_prefix="seed")
    seeded = [seeding.submit(seed, case.source, tmp_path / case.name / "source", case.n_points)
              for case in TWINS]
    with seeding, ray_head(tmp_path, num_cpus=6) as head:
        for case, initial in zip(TWINS, (f.result() for f in seeded), strict=True):
            tmp = tmp_path / case.name
            if lives:  # one state_uri for both: the first one's, seen from here too
                (tmp / "state").symlink_to(lives[0].tmp / "state")
            shared = {**case.config, "state_uri": str(tmp_path / TWINS[0].name / "state")}
            cfg = write_config(tmp, case.name, type(case)(case.name, case.source, config=shared))
            lives.append(LiveRun(head, tmp, case.name, case, cfg, initial,
                                 writer_args=("--seed", str(11 + len(lives)))))
        snap = Snapshot(lives)
        with ThreadPoolExecutor(len(lives)) as pool:
            runs = [pool.submit(live.drive, snap) for live in lives]
            for run in runs:
                run.result()
        problems = {}
        for live in lives:
            try:
                judged_or_fail(live, extra=lambda j, live=live: apart(live, lives, snap, j))
            except pytest.fail.Exception as err:
                problems[live.mid] = str(err)
        assert not problems, "\n\n".join(f"{m}: {p}" for m, p in problems.items())


def apart(live: LiveRun, lives: list[LiveRun], snap: Snapshot, j: Judged) -> list[str]:
    """The migration's actors, state and stores are its own."""
    bad = []
    doc = snap.doc or {}
    if "actors" not in doc:
        return [f"no snapshot of the cluster's actors was taken: {doc}"]
    mine = [a for a in doc["actors"] if a.startswith(f"rm:{live.mid}:")]
    if f"rm:{live.mid}:router" not in mine or not any(":worker:" in a for a in mine):
        bad.append(f"{live.mid}: its router and workers were not all alive together with the "
                   f"other's: {doc['actors']}")
    cfg = doc["configs"].get(f"rm:{live.mid}:router", {})
    paths = {str(cfg.get("source", {}).get(k)) for k in ("path", "uri")} | \
        {str(cfg.get("target", {}).get(k)) for k in ("path", "uri")}
    if not {str(live.tmp / "source"), str(live.tmp / "target")} <= paths:
        bad.append(f"{live.mid}: its router serves other stores: {cfg}")
    state = lives[0].tmp / "state"
    folders = sorted(p.name for p in state.iterdir() if p.is_dir())
    if folders != sorted(o.mid for o in lives):
        bad.append(f"the shared state_uri holds {folders}")
    report = json.loads((state / live.mid / "report.json").read_text())
    if report["migration_id"] != live.mid:
        bad.append(f"{live.mid}'s report is {report['migration_id']}'s")
    return bad
