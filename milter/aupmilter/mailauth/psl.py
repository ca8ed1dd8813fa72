"""The Public Suffix List: organizational domains for DMARC-style relaxed alignment.

The alignment rules in `policy.alignment` are pure and take the lookup as an
argument; the stage passes `organizational_domain` from here. The list comes
from the `publicsuffixlist` package (it ships the list and is released as the
list changes); where only Debian's `python3-publicsuffix2` is installed, that
one is used with the system's list (`/usr/share/publicsuffix`, package
`publicsuffix`, kept current by Debian) when present. The list is parsed once
per process (~50 ms), so a newer list takes effect when the daemon next starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

SYSTEM_PSL = Path("/usr/share/publicsuffix/public_suffix_list.dat")


ORGANIZATIONAL_CACHE_SIZE = 8192


@functools.cache
def _registrable() -> Callable[[str], str | None]:
    """The PSL lookup, loaded once per process (parsing the list takes ~50 ms)."""
    try:
        from publicsuffixlist import PublicSuffixList
    except ImportError:
        return _publicsuffix2()
    psl = PublicSuffixList()
    return lambda domain: psl.privatesuffix(domain)


def _publicsuffix2() -> Callable[[str], str | None]:
    from publicsuffix2 import PublicSuffixList as DebianList

    psl = DebianList(psl_file=str(SYSTEM_PSL) if SYSTEM_PSL.exists() else None)

    def registrable(domain: str) -> str | None:
        found = psl.get_sld(domain, strict=False)
        labels = domain.split(".")
        if found and "." not in found and len(labels) >= 2:
            # An unlisted TLD: the PSL's default rule "*" makes it the public suffix.
            return ".".join(labels[-2:])
        return found if isinstance(found, str) and found else None

    return registrable


@functools.lru_cache(maxsize=ORGANIZATIONAL_CACHE_SIZE)
def organizational_domain(domain: str) -> str:
    """The registrable domain (public suffix + one label); the domain itself if it has none.

    Cached (ORGANIZATIONAL_CACHE_SIZE domains): the alignment rules ask it of the same
    few domains on every message, and the list lookup walks the labels in Python.
    """
    return _registrable()(domain) or domain
