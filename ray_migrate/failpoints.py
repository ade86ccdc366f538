"""Fail points: named places in the product where a test injects a fault (as FreeBSD's fail(9),
TiKV's fail-rs or gofail do). They do nothing unless ``RAY_MIGRATE_FAILPOINTS`` is set; it is
read once per process, at import, so an unset point costs one dict lookup on an empty dict.

    RAY_MIGRATE_FAILPOINTS='{"copy.batch_written": {"action": "kill", "unit": "tenant=t1",
                             "once": "/tmp/copy-killed"}}'

A point's spec (or a list of specs) says what to do when the point is hit:
- ``action``: ``kill`` (SIGKILL this process, as an OOM kill would), ``raise`` (``error``: a
  class of ``ray_migrate.errors`` or a builtin, with ``message``), ``sleep`` (``seconds``),
  ``wait`` (until the file ``path`` exists, at most ``seconds``, default 60: a test holds the
  code there until its own processes are ready, instead of hoping they are in time), or
  ``return`` (``hit`` answers ``value``, default True: the code takes another path);
- every other key (``unit``, ``method``, ...) must equal what the code passes with the hit;
- ``after``: let this many matching hits pass first (counted per process);
- ``once``: a marker file created with O_EXCL before acting: the point fires once over every
  process, so a restarted actor does not die again; the marker holds where it fired.
The points and where they are: docs/FAILPOINTS.md.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

ENV = "RAY_MIGRATE_FAILPOINTS"
ACTIONS = ("kill", "raise", "sleep", "wait", "return")
_CONTROL = ("action", "after", "once", "error", "message", "seconds", "value", "path")
WAIT_POLL_S = 0.05
_points: dict[str, list[dict[str, Any]]] = {}
_hits: dict[int, int] = {}  # id(spec) -> matching hits so far
_lock = threading.Lock()


def configure(text: str | None) -> None:
    """Parse a spec document (the environment variable's value); None or empty clears it."""
    doc = json.loads(text) if text else {}
    if not isinstance(doc, dict):
        raise ValueError(f"{ENV} must be a JSON object of point name -> spec, not {text!r}")
    points: dict[str, list[dict[str, Any]]] = {}
    for name, specs in doc.items():
        specs = specs if isinstance(specs, list) else [specs]
        for spec in specs:
            if not isinstance(spec, dict) or spec.get("action") not in ACTIONS:
                raise ValueError(f"{ENV}: point {name!r} needs an action, one of {ACTIONS}: "
                                 f"{spec!r}")
            if spec["action"] == "wait" and not isinstance(spec.get("path"), str):
                raise ValueError(f"{ENV}: point {name!r}: a wait needs the path of the file "
                                 f"it waits for: {spec!r}")
        points[name] = specs
    _hits.clear()
    _points.clear()
    _points.update(points)


def hit(name: str, **where: Any) -> Any:
    """The point ``name`` is reached, with ``where`` (unit=..., method=...) to match specs.
    Acts as its spec says; returns the spec's value for ``return``, else None."""
    specs = _points.get(name)
    if not specs:
        return None
    for spec in specs:
        if all(spec[k] == where.get(k) for k in spec if k not in _CONTROL) and _due(spec):
            return _act(name, spec, where)
    return None


def _due(spec: dict[str, Any]) -> bool:
    """Whether this matching hit fires: past ``after``, and first to create ``once``."""
    with _lock:
        n = _hits[id(spec)] = _hits.get(id(spec), 0) + 1
    if n <= spec.get("after", 0):
        return False
    marker = spec.get("once")
    if marker is None:
        return True
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}, f)
    return True


def _act(name: str, spec: dict[str, Any], where: dict[str, Any]) -> Any:
    action = spec["action"]
    log.warning("failpoint %s fired (%s) at %s in pid %d", name, action, where, os.getpid())
    if action == "kill":
        for handler in logging.getLogger().handlers:  # the line above reaches the log
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "sleep":
        time.sleep(float(spec.get("seconds", 1.0)))
    if action == "wait":
        _wait_for(spec["path"], float(spec.get("seconds", 60.0)))
    if action == "raise":
        from ray_migrate import errors

        cls = getattr(errors, spec.get("error", "TransientError"), None) or \
            getattr(builtins, spec["error"])
        raise cls(spec.get("message", f"failpoint {name}"))
    return spec.get("value", True) if action == "return" else None


def _wait_for(path: str, at_most_s: float) -> None:
    """Until ``path`` exists (polled: a file another process makes), or ``at_most_s``."""
    end = time.monotonic() + at_most_s
    while not os.path.exists(path):
        if time.monotonic() >= end:
            log.warning("failpoint wait: %s did not appear within %.0f s, going on", path,
                        at_most_s)
            return
        time.sleep(WAIT_POLL_S)  # polling a file another process makes


configure(os.environ.get(ENV))

__all__ = ["ENV", "configure", "hit"]
