"""``ray-migrate``: plan, run, verify and demo. The one place that prints.

Exit codes: 0 success (and, for verify, equal); 1 a unit failed or differs; 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
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
    from ray_migrate.plan import load_or_make_plan
    from ray_migrate.state import StateStore

    cfg = load_config(args.config)
    if args.address:
        connect(args.address)
    plan = load_or_make_plan(cfg, open_backend(cfg.source), StateStore(cfg.state_uri,
                                                                       cfg.migration_id))
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

    report = verify_migration(load_config(args.config), address=args.address)
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=1))
    else:
        print(report.to_table())
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from ray_migrate.demo import prepare_demo
    from ray_migrate.driver import run_migration

    workdir = Path(args.workdir).resolve()
    t0 = time.perf_counter()
    cfg = prepare_demo(workdir, args.points, args.tenants, args.dim)
    print(f"seeded {args.points} points over {args.tenants} tenants in "
          f"{time.perf_counter() - t0:.1f}s: Qdrant local source at {cfg.source.location}")
    report = run_migration(cfg)
    print(report.to_table())
    print(f"LanceDB target: {cfg.target.location} (table {cfg.target.name}); "
          f"state and report: {cfg.state_uri}")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-migrate", description=__doc__.splitlines()[0])
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
    sp.set_defaults(fn=cmd_verify)

    sp = sub.add_parser("demo", help="seed a local Qdrant source and migrate it to LanceDB")
    sp.add_argument("--workdir", default="ray-migrate-demo")
    sp.add_argument("--points", type=int, default=20_000)
    sp.add_argument("--tenants", type=int, default=8)
    sp.add_argument("--dim", type=int, default=64)
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except RayMigrateError as err:
        print(f"error: {err}", file=sys.stderr)
        from ray_migrate.errors import TransientError

        return 1 if isinstance(err, TransientError) else 2


if __name__ == "__main__":
    sys.exit(main())
