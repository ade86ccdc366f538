"""Checks of the config that are not one field's type: the state_uri, the waves, and the
messages of YAML and pydantic errors. Each message names the field or value at fault and says
how to fix it; nothing here touches a store (``preflight`` does, before anything is written)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ray_migrate.errors import ConfigError

# What pyarrow.fs.FileSystem.from_uri opens (StateStore goes through it).
STATE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"),
           "less_than_equal": ("le", "<="), "less_than": ("lt", "<")}


def check_waves(waves: list[int | str]) -> list[int | str]:
    """Each wave is how many units (or what share of them) are cut over by its end: counts
    and shares must each grow from wave to wave, and no share exceeds 100%."""
    if not waves:
        raise ValueError("give at least one wave, for example [1, \"25%\", \"100%\"]")
    for w in waves:
        if isinstance(w, int) and not isinstance(w, bool) and w >= 1:
            continue
        if isinstance(w, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?%", w):
            if 0 < float(w[:-1]) <= 100:
                continue
            raise ValueError(f"wave {w!r} is not a share of the units: give more than 0% "
                             "and at most \"100%\"")
        raise ValueError(f"wave {w!r} must be a unit count (1, 2, ...) or a share of the "
                         "units (\"25%\")")
    for kind, key in ((int, int), (str, lambda s: float(s[:-1]))):
        seq = [key(w) for w in waves if isinstance(w, kind)]
        if any(b <= a for a, b in zip(seq, seq[1:], strict=False)):
            raise ValueError(
                f"waves {waves} are not cumulative: each wave is how many units are cut over "
                "by its end, so each count (and each share) must be larger than the one "
                "before, for example [1, \"25%\", \"100%\"]")
    return waves


def check_state_uri(uri: str) -> None:
    """Refuse, before anything is written, a state_uri whose scheme pyarrow cannot open, or a
    local one that lies under a regular file (the state's writes would fail half-way)."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if scheme:
        if scheme.group(1).lower() not in STATE_SCHEMES:
            raise ConfigError(
                f"invalid migration config:\n  state_uri: scheme {scheme.group(1)!r} (in "
                f"{uri!r}) is not supported; use a local folder or one of: "
                f"{', '.join(s + '://' for s in STATE_SCHEMES)}")
        return
    p = Path(uri)
    for at in (p, *p.parents):
        if at.exists():
            if not at.is_dir():
                raise ConfigError(f"invalid migration config:\n  state_uri: {str(at)!r} is a "
                                  "file, not a folder; point state_uri at a folder (it is "
                                  "created if missing)")
            return


def yaml_message(path: str, err: yaml.YAMLError) -> str:
    """'config file 'm.yaml' is not valid YAML at line 3, column 7: <problem>': where to look."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    context = getattr(err, "context", None)
    cmark = getattr(err, "context_mark", None)
    began = (f" ({context} that began at line {cmark.line + 1}, column {cmark.column + 1})"
             if context and cmark else "")
    return (f"config file {path!r} is not valid YAML{where}: {problem}{began}; fix the "
            "syntax there")


def format_errors(err: ValidationError) -> str:
    """pydantic's errors, one line each: the field's dotted path, the value and the fix."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged")))
        loc = loc.replace("copy_", "copy")
        lines.append(f"{loc}: {_message(e)}" if loc else _message(e))
    return "invalid migration config:\n  " + "\n  ".join(lines)


def _message(e: Any) -> str:
    ctx = e.get("ctx") or {}
    if e["type"] == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    if e["type"] == "missing":
        return "is required"
    if e["type"] == "union_tag_invalid":
        return (f"kind {ctx.get('tag')!r} is not supported; kind must be one of: qdrant, "
                "lancedb")
    if e["type"] == "union_tag_not_found":
        return "kind is required; kind must be one of: qdrant, lancedb"
    if e["type"] in _BOUNDS:
        key, op = _BOUNDS[e["type"]]
        return f"{e['input']!r} is out of range; set it {op} {ctx.get(key)}"
    return e["msg"].removeprefix("Value error, ")
