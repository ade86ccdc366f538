"""The two roots of errors: terminal (stop, report) and transient (retry with backoff); and
``ClusterError``, for a cluster that could not run the command at all.

Adapters convert SDK errors at their boundary. Every exception here is picklable, because Ray
re-raises them in another process: they keep their message in ``args``.
"""

from __future__ import annotations


class RayMigrateError(Exception):
    """Base of every error raised by ray_migrate."""


class TerminalError(RayMigrateError):
    """An error that retrying cannot fix: the unit (or the run) stops and it is reported."""


class TransientError(RayMigrateError):
    """An error that may go away (a timeout, a commit conflict): retried with bounded backoff."""


class ConfigError(TerminalError):
    """The configuration does not validate. The message names the field and the fix."""


class IncompatibleTargetError(TerminalError):
    """An existing target cannot hold the source (dimension, distance, vector name, column type)."""


class InvalidDataError(TerminalError):
    """A point cannot be written: NaN in a vector, wrong dimension, an id the target cannot hold."""


class UnsupportedError(TerminalError):
    """A feature of the source that ray_migrate does not move (for example sparse vectors)."""


class InvalidPointError(InvalidDataError, ValueError):
    """A point given to ``RoutedCollection`` cannot be written (wrong dimension, NaN, an id the
    collection cannot hold). Raised to the application before anything is written to either
    side; a ``ValueError`` too, as the application's own argument checks would be."""


class ClusterError(RayMigrateError):
    """The Ray cluster could not run the command: none listens at ``--address``, no node has
    the resources the unit workers need, or no router runs (the CLI exits 3)."""
