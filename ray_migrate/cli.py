"""``ray-migrate``: plan, run, verify, status, cutover, rollback, gateway and demo. The one place
that prints.

Exit codes (``exit_code``): 0 success (and, for verify, equal); 1 a unit failed or differs, a
transient error stopped the command, or (run in auto mode) a unit is not on the target at the
end, e.g. rolled back during the run; 2 bad input (the config, the source or target it names,
found out before anything is written), or another driver runs the migration, or (``gateway
--stop``) no gateway of the migration runs; 3 the cluster could not run it: no Ray cluster at
``--address``, no node with the resources of ``copy.worker_resources``, or (cutover, rollback)
no router, and no routing table under ``state_uri`` to start one from.

One driver per migration: ``run`` holds the migration's driver lease (``lease``) and owns the
unit workers; a second ``run`` while it lives exits 2, naming it. The other verbs never start,
stop or restart a running migration's actors: ``status`` reads the state files only;
``verify``, ``cutover`` and ``rollback`` work in their own process, through the running
router, so they are allowed during a run (a rollback in the run's rollback window leaves the
unit rolled back, and the run's report says by whom).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ray_migrate.errors import RayMigrateError


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_plan(args: argparse.Namespace) -> int:
    from ray_migrate.backends import open_backend
    from ray_migrate.config import load_config
    from ray_migrate.driver import connect
    from ray_migrate.estimate import ESTIMATE_KEY, estimate_run
    from ray_migrate.plan import PLAN_KEY, load_or_make_plan, save_plan
    from ray_migrate.preflight import preflight
    from ray_migrate.progress import fmt_s
    from ray_migrate.state import StateStore

    cfg = load_config(args.config)
    store = StateStore.of(cfg)
    plan = preflight(cfg, store)  # the checks of run and verify, before anything is written
    if args.address:
        connect(args.address)
    source = open_backend(cfg.source)
    try:
        if plan is None:  # a Qdrant local folder held by a running migration's store host
            plan = load_or_make_plan(cfg, source, store)
        elif store.read(PLAN_KEY) is None:
            save_plan(plan, store)
        est = None if args.no_estimate else estimate_run(cfg, plan, source, args.estimate_s)
    finally:
        source.close()
    if est is not None:  # beside the plan: the run's report shows it next to the actual
        store.write(ESTIMATE_KEY, est.to_dict())
    if args.json:
        doc = {**plan.to_dict(), "estimate": est.to_dict() if est else None}
        print(json.dumps(doc, indent=1, default=str))
        return 0
    info = plan.source_info
    vecs = ", ".join(f"{v.name}[{v.dim}, {v.distance}]" for v in info.vectors)
    print(f"migration {plan.migration_id}: {info.count} points, ids {info.id_type}, "
          f"vectors {vecs}")
    print(f"{'unit':<40} {'points':>10}")
    for u in plan.units:
        print(f"{u.unit_id:<40} {u.estimated_count:>10}")
    if est is not None:
        print(f"estimated duration: {fmt_s(est.seconds)} (read {est.read_points_per_s:,.0f} "
              f"points/s, write {est.write_points_per_s:,.0f} points/s, from "
              f"{est.sampled_points} sampled points, {est.parallel} workers at once)")
    for w in plan.warnings:
        print(f"warning: {w}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ray_migrate.config import load_config
    from ray_migrate.driver import run_migration
    from ray_migrate.progress import RunProgress

    cfg = load_config(args.config)
    with RunProgress(cfg.migration_id, interval_s=args.progress_s,
                     enabled=not args.no_progress) as progress:
        report = run_migration(cfg, address=args.address, on_started=progress.attach)
    print(report.to_table())
    return 0 if report.ok else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from ray_migrate.config import load_config
    from ray_migrate.driver import verify_migration

    report = verify_migration(load_config(args.config), address=args.address,
                              parity=args.parity)
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=1))
    else:
        print(report.to_table())
    return 0 if report.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from ray_migrate.config import load_config
    from ray_migrate.progress import status_rows, status_text, watch_status
    from ray_migrate.state import StateStore

    cfg = load_config(args.config)
    store = StateStore.of(cfg)
    if args.watch:  # until Ctrl-C, or --count times
        watch_status(lambda: status_rows(cfg, store), args.interval, args.count,
                     sys.stdout.isatty(), out=sys.stdout)
        return 0
    doc = status_rows(cfg, store)
    if doc["units"] is None and not doc["driver"]:
        print(f"migration {cfg.migration_id} has not started (no routing table in "
              f"{cfg.state_uri})", file=sys.stderr)
        return 1
    if args.json and doc["units"] is not None:
        print(json.dumps(doc, indent=1))
    else:
        print(status_text(doc))
    return 0


def _switch(args: argparse.Namespace, method: str) -> int:
    from ray_migrate.config import load_config
    from ray_migrate.driver import Migration
    from ray_migrate.errors import ClusterError
    from ray_migrate.routing.actor import ROUTING_KEY
    from ray_migrate.state import StateStore
    from ray_migrate.waves import switch_units

    cfg = load_config(args.config)
    if StateStore.of(cfg).read(ROUTING_KEY) is None:
        # A router writes its table before it serves: none was ever started on this state.
        raise ClusterError(
            f"no router runs for migration {cfg.migration_id!r} and none can be started: no "
            f"routing table under state_uri {cfg.state_uri!r}; run `ray-migrate run "
            f"{args.config}` first (with cutover.mode: manual it stops when the units are ready)")
    # No lease and no workers: the switch runs here, through the router, so it works while a
    # run goes on (in its rollback window, say) without disturbing it.
    m = Migration(cfg, args.address, command=method)
    try:
        m.start(workers=False)
        results = switch_units(m, args.units, method)
    finally:
        m.close()  # TODO(store-lifetime): keep stores that a running driver still uses
    for unit_id, res in results.items():
        verdict = "ok" if res["ok"] else f"NOT done: {res['reason']}"
        print(f"{unit_id}: {method} {verdict} (freeze {res['freeze_ms']:.0f} ms, "
              f"{res['drained']} ids drained)")
    if not results:
        print(f"no unit to {method}")
    return 0 if all(r["ok"] for r in results.values()) else 1


def cmd_cutover(args: argparse.Namespace) -> int:
    return _switch(args, "cutover")


def cmd_rollback(args: argparse.Namespace) -> int:
    return _switch(args, "rollback")


def cmd_gateway(args: argparse.Namespace) -> int:
    """Serve the Qdrant REST API of the migration's collection (``ray_migrate.gateway``) until
    Ctrl-C, or return once it is up (``--detach``; ``--stop`` removes it later)."""
    import time

    from ray_migrate.config import load_config
    from ray_migrate.gateway.settings import with_flags
    from ray_migrate.migration import connect
    from ray_migrate.routing.actor import get_router

    cfg = load_config(args.config)
    if args.stop:
        return _stop_gateway(cfg.migration_id, args.address)
    gw = with_flags(cfg.gateway, host=args.host, port=args.port, replicas=args.replicas)
    cfg = cfg.model_copy(update={"gateway": gw})
    connect(args.address)
    get_router(cfg.migration_id)  # no router: say so before anything is deployed
    from ray_migrate.gateway.app import collection_name, deploy

    url = deploy(cfg)
    print(f"gateway for migration {cfg.migration_id}: {url} (collection "
          f"{collection_name(cfg)!r}, {gw.replicas} replicas, api key "
          f"{'required' if gw.api_key else 'none'})", flush=True)
    if args.detach:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _stop_gateway(cfg.migration_id, args.address, gone_ok=True)
    return 0


def _stop_gateway(migration_id: str, address: str | None, gone_ok: bool = False) -> int:
    """``gateway --stop`` (and Ctrl-C of a gateway in the foreground): remove the migration's
    gateway from the cluster, and Serve when nothing else runs on it; exit 2 naming what runs
    when there is none (``gone_ok``: say so and exit 0, as after a ``--stop`` elsewhere)."""
    from ray_migrate.errors import TerminalError
    from ray_migrate.gateway.app import stop
    from ray_migrate.migration import connect

    connect(address)
    try:
        print(stop(migration_id))
    except TerminalError as err:
        if not gone_ok:
            raise
        print(f"gateway already stopped: {err}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ray_migrate.demo import run_demo

    workdir = Path(args.workdir).resolve()
    print(f"seeding a Qdrant local source of {args.points} points over {args.tenants} tenants "
          f"in {workdir} ...")
    report, traffic = run_demo(workdir, args.points, args.tenants, args.dim,
                               traffic_s=args.traffic_s)
    print(report.to_table())
    print()
    print(traffic.table())
    for err in traffic.errors[:5]:
        print(f"  {err}")
    freezes = {u.unit_id: u.freeze_ms for u in report.units}
    longest = max((f for f in freezes.values() if f is not None), default=0.0)
    print(f"longest freeze: {longest:.0f} ms (per unit in the table's 'freeze ms' column)")
    print(f"LanceDB target: {workdir / 'lance'} (table docs); state and reports: "
          f"{workdir / 'state'}")
    folder = workdir / "state" / report.migration_id / "report"
    print(f"run report: {folder / 'report.md'} (plot: {folder / 'report.png'}, data: "
          f"{folder / 'report.json'})")
    return 0 if report.ok and not traffic.errors else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ray-migrate", description="Zero-downtime migration of vector collections "
        "between Qdrant and LanceDB, unit by unit, on Ray.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("plan", help="show the units of a migration and their sizes")
    sp.add_argument("config")
    sp.add_argument("--address", default=None, help="Ray cluster address (default: none)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--no-estimate", action="store_true",
                    help="skip the sampled read and write rates and the duration estimate")
    sp.add_argument("--estimate-s", type=float, default=3.0,
                    help="at most this long sampling the read and write rates")
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("run", help="copy and verify every unit (resumes where it stopped)")
    sp.add_argument("config")
    sp.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    sp.add_argument("--progress-s", type=float, default=5.0,
                    help="seconds between progress lines when stdout is not a terminal")
    sp.add_argument("--no-progress", action="store_true", help="no progress display")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("verify", help="compare counts and checksums of every unit")
    sp.add_argument("config")
    sp.add_argument("--address", default=None)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--parity", action="store_true", help="also measure query parity: recall@k "
                    "of both sides against brute force, overlap, latency (verify.parity)")
    sp.set_defaults(fn=cmd_verify)

    sp = sub.add_parser("status", help="units, phases, owners, progress and lag")
    sp.add_argument("config")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    sp.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    sp.add_argument("--count", type=int, default=None, help="stop after this many refreshes")
    sp.set_defaults(fn=cmd_status)

    for name, fn, what in (("cutover", cmd_cutover, "cut prepared units over to the target"),
                           ("rollback", cmd_rollback, "flip cut-over units back to the source")):
        sp = sub.add_parser(name, help=what)
        sp.add_argument("config")
        sp.add_argument("--units", nargs="+", default=None,
                        help="unit ids (default: every eligible unit)")
        sp.add_argument("--address", default=None)
        sp.set_defaults(fn=fn)

    sp = sub.add_parser("gateway", help="serve Qdrant's REST API for the migrating collection")
    sp.add_argument("config")
    sp.add_argument("--address", default=None, help="Ray cluster address of the migration")
    sp.add_argument("--host", default=None, help="bind address (default: gateway.host)")
    sp.add_argument("--port", type=int, default=None, help="HTTP port (default: gateway.port)")
    sp.add_argument("--replicas", type=int, default=None,
                    help="Serve replicas (default: gateway.replicas)")
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--detach", action="store_true", help="return once the gateway is up")
    how.add_argument("--stop", action="store_true",
                     help="remove this migration's gateway from the cluster (and Serve, when "
                     "nothing else runs on it)")
    sp.set_defaults(fn=cmd_gateway)

    sp = sub.add_parser("demo", help="seed a local Qdrant source and migrate it to LanceDB")
    sp.add_argument("--workdir", default="ray-migrate-demo")
    sp.add_argument("--points", type=int, default=20_000)
    sp.add_argument("--tenants", type=int, default=8)
    sp.add_argument("--dim", type=int, default=64)
    sp.add_argument("--traffic-s", type=float, default=5.0,
                    help="seconds of client traffic before and after the migration")
    sp.set_defaults(fn=cmd_demo)
    return p


def exit_code(err: RayMigrateError) -> int:
    """3 the cluster could not run it, 1 a transient error stopped it, 2 any other (bad
    input, or refused: another driver runs the migration). The Ray job exits alike."""
    from ray_migrate.errors import ClusterError, TransientError

    if isinstance(err, ClusterError):
        return 3
    return 1 if isinstance(err, TransientError) else 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except RayMigrateError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
