"""SQL pieces of LanceDB filters: identifiers quoted, values written as literals."""

from __future__ import annotations

from typing import Any

from ray_migrate.errors import UnsupportedError


def quote_ident(name: str) -> str:
    """A column name as a LanceDB (DataFusion) identifier, backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def sql_literal(v: Any) -> str:
    """A filter value as an SQL literal; a type a filter cannot hold raises UnsupportedError."""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    raise UnsupportedError(f"cannot filter on a value of type {type(v).__name__}: {v!r}")
