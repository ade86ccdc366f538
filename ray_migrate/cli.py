"""``ray-migrate``: plan, run, verify, status, cutover, rollback and demo. The one place that
prints.

Exit codes (``exit_code``): 0 success (and, for verify, equal); 1 a unit failed or differs, a
transient error stopped the command, or (run in auto mode) a unit is not on the target at the
end, e.g. rolled back during the run; 2 bad input (the config, the source or target it names,
found out before anything is written), or another driver runs the migration; 3 the cluster
could not run it: no Ray cluster at ``--address``, no node with the resources of
``copy.worker_resources``, or (cutover, rollback) no router, and no routing table under
``state_uri`` to start one from.

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
    from ray_migrate.plan import PLAN_KEY, load_or_make_plan, save_plan
    from ray_migrate.preflight import preflight
    from ray_migrate.state import StateStore

    cfg = load_config(args.config)
    store = StateStore.of(cfg)
    plan = preflight(cfg, store)  # the checks of run and verify, before anything is written
    if args.address:
        connect(args.address)
    if plan is None:  # a Qdrant local folder held by a running migration's store host
        plan = load_or_make_plan(cfg, open_backend(cfg.source), store)
    elif store.read(PLAN_KEY) is None:
        save_plan(plan, store)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=1, default=str))
        return 0
    info = plan.source_info
    vecs = ", ".join(f"{v.name}[{v.dim}, {v.distance}]" for v in info.vectors)
    print(f"migration {plan.migration_id}: {info.count} points, ids {info.id_type}, "
          f"vectors {vecs}")
    print(f"{'unit':<40} {'points':>10}")
    for u in plan.units:
        print(f"{u.unit_id:<40} {u.estimated_count:>10}")
    for w in plan.warnings:
        print(f"warning: {w}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ray_migrate.config import load_config
    from ray_migrate.driver import run_migration

    report = run_migration(load_config(args.config), address=args.address)
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
    from ray_migrate.lease import describe, running_driver
    from ray_migrate.routing.actor import CHANGES_KEY, ROUTING_KEY
    from ray_migrate.state import StateStore

    cfg = load_config(args.config)
    store = StateStore.of(cfg)
    driver = running_driver(store)
    table = store.read(ROUTING_KEY)
    if table is None:
        if driver:
            print(f"migration {cfg.migration_id} is starting; driver: {describe(driver)}")
            return 0
        print(f"migration {cfg.migration_id} has not started (no routing table in "
              f"{cfg.state_uri})", file=sys.stderr)
        return 1
    logs = store.read(CHANGES_KEY) or {}  # written at most every 0.2 s while running
    rows = []
    for unit_id, u in sorted(table["units"].items()):
        ckpt = store.load_checkpoint(unit_id) or {}
        copied = max(u.get("copied") or 0, ckpt.get("copied", 0))
        plan_n = next((p["estimated_count"] for p in (store.read("plan.json") or {}).get(
            "units", []) if p["unit_id"] == unit_id), None)
        rows.append({"unit": unit_id, "phase": u["phase"], "owner": u["owner"],
                     "copied": copied, "total": u.get("total") or plan_n, "lag": len(logs.get(unit_id, [])),
                     "longest_freeze_ms": round(u["longest_freeze_ms"], 1),
                     "needs_repair": u["needs_repair"], "last_error": u["last_error"]})
    if args.json:
        print(json.dumps({"migration_id": cfg.migration_id, "epoch": table["epoch"],
                          "driver": driver, "units": rows}, indent=1))
        return 0
    print(f"migration {cfg.migration_id}, routing epoch {table['epoch']}")
    print(f"driver: {describe(driver)}" if driver else "driver: none running")
    print(f"{'unit':<28} {'phase':<12} {'owner':<7} {'copied/total':>16} {'lag':>6} "
          f"{'freeze ms':>9}  last error")
    for r in rows:
        total = "?" if r["total"] is None else r["total"]
        print(f"{r['unit']:<28} {r['phase']:<12} {r['owner']:<7} "
              f"{str(r['copied']) + '/' + str(total):>16} {r['lag']:>6} "
              f"{r['longest_freeze_ms']:>9}  {r['last_error'] or ''}")
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
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("run", help="copy and verify every unit (resumes where it stopped)")
    sp.add_argument("config")
    sp.add_argument("--address", default=None, help="Ray cluster address (default: local)")
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
    sp.set_defaults(fn=cmd_status)

    for name, fn, what in (("cutover", cmd_cutover, "cut prepared units over to the target"),
                           ("rollback", cmd_rollback, "flip cut-over units back to the source")):
        sp = sub.add_parser(name, help=what)
        sp.add_argument("config")
        sp.add_argument("--units", nargs="+", default=None,
                        help="unit ids (default: every eligible unit)")
        sp.add_argument("--address", default=None)
        sp.set_defaults(fn=fn)

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
