"""Reading TOML tables: the section reader, its error type and the value converters.

Every section module reads its keys through `Section.get` with one of the
converters here, so that every problem has the same form (file, key, expected
form, the value found) and all of them are collected before one `ConfigError`
is raised: an operator fixes the whole file in one pass, not one key per
restart.

A converter takes the raw TOML value and returns the converted value, or None
when the value does not have the expected form; raising TypeError or
ValueError counts as None.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from aupmilter.policy.tenancy import normalize_domain

T = TypeVar("T")

MAX_PATTERN_LENGTH = 500


class ConfigError(Exception):
    """One or more problems, each naming file, key and the expected form."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Section:
    """Reads one TOML table, collecting problems instead of stopping at the first."""

    def __init__(self, file: Path, name: str, table: Any, problems: list[str]) -> None:
        self.file = file
        self.name = name
        self.problems = problems
        self.seen: set[str] = set()
        if not isinstance(table, dict):
            self.fail(None, "a table", table)
            table = {}
        self.table: dict[str, Any] = table

    def key_path(self, key: str | None) -> str:
        if key is None:
            return self.name
        return f"{self.name}.{key}" if self.name else key

    def fail(self, key: str | None, expected: str, got: Any) -> None:
        self.problems.append(
            f"{self.file}: key '{self.key_path(key)}': expected {expected}, got {got!r}"
        )

    def get(
        self,
        key: str,
        default: T,
        expected: str,
        convert: Callable[[Any], T | None],
    ) -> T:
        self.seen.add(key)
        if key not in self.table:
            return default
        raw = self.table[key]
        try:
            value = convert(raw)
        except (TypeError, ValueError):
            value = None
        if value is None:
            self.fail(key, expected, raw)
            return default
        return value

    def subtable(self, key: str, expected: str = "a table") -> dict[str, Any]:
        return self.get(key, cast(dict[str, Any], {}), expected, table)

    def require(self, *keys: str) -> None:
        """Keys without a sensible default: their absence is a problem, not a fallback."""
        for key in keys:
            if key not in self.table:
                self.fail(key, "a value (the key is required)", None)

    def reject_unknown(self) -> None:
        for key in sorted(set(self.table) - self.seen):
            self.problems.append(
                f"{self.file}: key '{self.key_path(key)}': unknown key"
                f" (known: {', '.join(sorted(self.seen))})"
            )


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; ConfigError names the file and why it cannot be read or parsed."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied while reading"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not valid UTF-8"]) from None


# --- converters --------------------------------------------------------------------------


def choice(*options: str) -> Callable[[Any], str | None]:
    return lambda raw: raw if isinstance(raw, str) and raw in options else None


def number(low: float, high: float) -> Callable[[Any], float | None]:
    def convert(raw: Any) -> float | None:
        # TOML booleans are Python bools, which are ints: `true` is not 1 second.
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return None
        return float(raw) if low <= raw <= high else None

    return convert


def integer(low: int, high: int) -> Callable[[Any], int | None]:
    def convert(raw: Any) -> int | None:
        if isinstance(raw, bool) or not isinstance(raw, int):
            return None
        return raw if low <= raw <= high else None

    return convert


def string(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and raw.strip() else None


def boolean(raw: Any) -> bool | None:
    return raw if isinstance(raw, bool) else None


def table(raw: Any) -> dict[str, Any] | None:
    return raw if isinstance(raw, dict) else None


def ip_list(raw: Any) -> tuple[str, ...] | None:
    if not isinstance(raw, list):
        return None
    try:
        return (
            tuple(str(ipaddress.ip_address(x)) for x in raw if isinstance(x, str))
            if all(isinstance(x, str) for x in raw)
            else None
        )
    except ValueError:
        return None


def host_name(raw: Any) -> str | None:
    """A host name with at least two labels, in lower-case A-label form."""
    if not isinstance(raw, str):
        return None
    name = normalize_domain(raw)
    return name if name and "." in name else None


def domain_name(raw: Any) -> str | None:
    """A domain written with at least one inner dot, in lower-case A-label form."""
    if not isinstance(raw, str) or "." not in raw.strip("."):
        return None
    return normalize_domain(raw)


def domain_set(raw: Any) -> frozenset[str] | None:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        return None
    names = [normalize_domain(x) for x in raw]
    if any(n is None for n in names):
        return None
    return frozenset(n for n in names if n is not None)


def patterns(raw: Any) -> tuple[re.Pattern[str], ...] | None:
    """Case-insensitive regular expressions, bounded in length: they run on every subject."""
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        return None
    if any(not x or len(x) > MAX_PATTERN_LENGTH for x in raw):
        return None
    try:
        return tuple(re.compile(x, re.IGNORECASE) for x in raw)
    except re.error:
        return None


def host_port(raw: Any) -> tuple[str, int] | None:
    """`HOST:PORT` or `[IPv6]:PORT`."""
    if not isinstance(raw, str):
        return None
    host, sep, port_text = raw.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536 or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address needs brackets
    return host, int(port_text)
