"""Just enough TOML writing for the milter's config: merge overrides, dump tables.

Tests pass extra settings as TOML text; merging them into the generated
config (instead of appending text) lets them override a key of a table the
testbed already writes, which plain appending would turn into a duplicate
table error.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from typing import Any

Table = dict[str, Any]


def merged(base: Mapping[str, Any], extra_toml: str) -> Table:
    """``base`` with the tables and keys of ``extra_toml`` merged in (extra wins)."""
    try:
        extra = tomllib.loads(extra_toml)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"milter_config_extra is not valid TOML: {exc}") from None
    return _merge(dict(base), extra)


def _merge(base: Table, extra: Mapping[str, Any]) -> Table:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def dumps(document: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _dump_table(document, (), lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    subtables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if path and (scalars or not subtables):
        lines += ["", f"[{'.'.join(_key(p) for p in path)}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    for key, sub in subtables.items():
        _dump_table(sub, (*path, key), lines)


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
