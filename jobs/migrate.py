"""The Ray job entrypoint of a migration.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        -- python jobs/migrate.py --config examples/qdrant_to_lance.yaml

Loads and validates the config, runs the migration on the cluster this job belongs to (or on
``--address``), prints the report table and exits as ``ray-migrate run`` does: 0 when every
unit succeeded, 1 when the run finished with failures (or a transient error stopped it), 2 when
the config does not validate or the run is refused, e.g. while another driver runs the
migration (the message names it), 3 when the cluster could not run it (``ClusterError``: no
node has the resources of ``copy.worker_resources``, say).
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2  # bad input, or refused (another driver runs the migration): as the CLI
EXIT_CLUSTER = 3  # the cluster could not run it: as the CLI

log = logging.getLogger("ray_migrate.job")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jobs/migrate.py",
        description="Run one ray_migrate migration as a Ray job.",
    )
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the migration YAML; relative paths in it resolve against its folder")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster to use (default: the job's own cluster, or RAY_ADDRESS)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )

    from ray_migrate.config import load_config
    from ray_migrate.driver import run_migration
    from ray_migrate.errors import ClusterError, RayMigrateError, TransientError
    from ray_migrate.progress import RunProgress

    try:
        config = load_config(args.config)
        log.info("migration %s: %s %s -> %s %s", config.migration_id, config.source.kind,
                 config.source.name, config.target.kind, config.target.name)
        with RunProgress(config.migration_id, tty=False) as progress:  # lines in the job's log
            report = run_migration(config, address=args.address, on_started=progress.attach)
    except RayMigrateError as err:  # e.g. DriverBusyError, or a plan that no longer matches
        print(f"error: {err}", file=sys.stderr)
        if isinstance(err, ClusterError):
            return EXIT_CLUSTER
        return EXIT_FAILED if isinstance(err, TransientError) else EXIT_CONFIG

    print(report.to_table(), flush=True)
    if report.ok:
        log.info("migration %s finished: ok", config.migration_id)
        return EXIT_OK
    log.error("migration %s finished with failures; rerun the same command to resume",
              config.migration_id)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
