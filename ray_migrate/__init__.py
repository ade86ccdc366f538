"""ray_migrate: move live vector collections between Qdrant and LanceDB on Ray."""

from ray_migrate.config import MigrationConfig, load_config, parse_config
from ray_migrate.errors import (
    ConfigError,
    IncompatibleTargetError,
    InvalidDataError,
    RayMigrateError,
    TerminalError,
    TransientError,
)

__all__ = [
    "RoutedCollection",
    "ConfigError",
    "IncompatibleTargetError",
    "InvalidDataError",
    "MigrationConfig",
    "RayMigrateError",
    "TerminalError",
    "TransientError",
    "load_config",
    "parse_config",
]
__version__ = "0.1.0"


def __getattr__(name: str):  # RoutedCollection pulls in Ray: import it only when asked
    if name == "RoutedCollection":
        from ray_migrate.client import RoutedCollection

        return RoutedCollection
    raise AttributeError(name)
