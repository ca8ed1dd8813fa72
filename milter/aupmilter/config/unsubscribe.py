"""What bulk mail needs from the relay: `[unsubscribe]`, `[web]` and `[dkim]`.

The three travel together: the unsubscribe service's links point at the web
service, and the inserted List-Unsubscribe headers must be covered by a DKIM
signature made after insertion. The per-plan unsubscribe keys are read with
the plan files, in `aupmilter.config.plans`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from aupmilter.config.loader import (
    Section,
    domain_name,
    host_port,
    integer,
    ip_list,
    string,
    table,
)
from aupmilter.mailauth.dkimkeys import SigningKey, UnusableKey, load_signing_key
from aupmilter.policy.plans import UnsubscribeSettings
from aupmilter.policy.tokens import LONGEST_TOKEN
from aupmilter.store.keys import TENANT_ID

LOCAL_PART_ATOM = re.compile(r"^[A-Za-z0-9!#$&'*/=?^_`{|}~-]+(\.[A-Za-z0-9!#$&'*/=?^_`{|}~-]+)*$")
DNS_LABELS = re.compile(
    r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*$"
)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MIN_SECRET_LENGTH = 32
SECRET_FILE_FORBIDDEN_BITS = 0o077
LONGEST_MAILTO_LOCAL = 64 - 1 - LONGEST_TOKEN
"""RFC 5321 allows 64 octets of local part; `+TOKEN` is appended to this one."""


@dataclass(frozen=True, slots=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8895
    max_body_bytes: int = 2048
    rate_limit_per_minute: int = 30
    rate_limit_burst: int = 10
    trusted_proxies: tuple[str, ...] = ()
    """Peers whose X-Forwarded-For names the client (a reverse proxy in front)."""

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SigningIdentity:
    domain: str
    selector: str
    key: SigningKey


@dataclass(frozen=True, slots=True)
class DkimSettings:
    tenants: Mapping[str, SigningIdentity] = field(default_factory=dict)
    default: SigningIdentity | None = None
    """For tenants without their own entry; None: their mail is not signed."""

    def identity_for(self, tenant: str | None) -> SigningIdentity | None:
        if tenant is not None and tenant in self.tenants:
            return self.tenants[tenant]
        return self.default


def read_unsubscribe_sections(
    path: Path, root: Section, problems: list[str]
) -> tuple[UnsubscribeSettings | None, WebSettings, DkimSettings]:
    """[unsubscribe] (optional), [web] and [dkim]; problems are appended, never raised."""
    unsubscribe = None
    if "unsubscribe" in root.table:
        unsubscribe = _unsubscribe_section(path, root, problems)
    else:
        root.seen.add("unsubscribe")
    return unsubscribe, _web_section(path, root, problems), _dkim_section(path, root, problems)


def _unsubscribe_section(path: Path, root: Section, problems: list[str]) -> UnsubscribeSettings:
    section = Section(path, "unsubscribe", root.subtable("unsubscribe"), problems)
    url_base = section.get(
        "url_base",
        "",
        "'https://HOST[:PORT]' without a path ('http://' only for a loopback host)",
        _url_base,
    )
    mailto_local = section.get(
        "mailto_local",
        "unsubscribe",
        f"a dot-atom local part of at most {LONGEST_MAILTO_LOCAL} characters without '+'",
        lambda raw: (
            raw
            if isinstance(raw, str)
            and LOCAL_PART_ATOM.match(raw)
            and "+" not in raw
            and len(raw) <= LONGEST_MAILTO_LOCAL
            else None
        ),
    )
    mailto_domain = section.get(
        "mailto_domain", "", "a domain name such as unsub.relay.example", domain_name
    )
    secrets_text = section.get(
        "secrets_file", "", "a path to the secrets file (relative to this file)", string
    )
    lifetime = section.get("token_lifetime_days", 60, "whole days from 1 to 3650", integer(1, 3650))
    section.require("url_base", "mailto_domain", "secrets_file")
    section.reject_unknown()
    secrets_file = (path.parent / secrets_text).resolve() if secrets_text else Path()
    secrets: tuple[bytes, ...] = ()
    if secrets_text:
        secrets = _read_secrets(path, secrets_file, problems)
    return UnsubscribeSettings(
        url_base=url_base,
        mailto_local=mailto_local,
        mailto_domain=mailto_domain,
        secrets_file=secrets_file,
        token_lifetime_days=lifetime,
        secrets=secrets,
    )


def _read_secrets(path: Path, secrets_file: Path, problems: list[str]) -> tuple[bytes, ...]:
    """One secret per line (blank lines and # comments ignored); the first one signs."""
    where = f"{path}: key 'unsubscribe.secrets_file'"
    try:
        info = secrets_file.stat()
        if info.st_mode & SECRET_FILE_FORBIDDEN_BITS:
            problems.append(
                f"{where}: expected a file only its owner can access (chmod 600),"
                f" got mode {info.st_mode & 0o777:04o} on {secrets_file}"
            )
            return ()
        text = secrets_file.read_text("utf-8")
    except FileNotFoundError:
        problems.append(f"{where}: expected an existing file, got {str(secrets_file)!r}")
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{where}: cannot read {secrets_file}: {exc}")
        return ()
    secrets = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) < MIN_SECRET_LENGTH:
            problems.append(
                f"{where}: expected secrets of at least {MIN_SECRET_LENGTH} characters"
                f" (e.g. `openssl rand -hex 32`), got {len(line)} on line {number}"
                f" of {secrets_file}"
            )
            continue
        secrets.append(line.encode("utf-8"))
    if not secrets and not any(where in p for p in problems):
        problems.append(f"{where}: expected at least one secret line in {secrets_file}")
    return tuple(secrets)


def _web_section(path: Path, root: Section, problems: list[str]) -> WebSettings:
    section = Section(path, "web", root.subtable("web"), problems)
    defaults = WebSettings()
    host, port = section.get(
        "listen",
        (defaults.host, defaults.port),
        "'HOST:PORT' or '[IPv6]:PORT'",
        host_port,
    )
    settings = WebSettings(
        host=host,
        port=port,
        max_body_bytes=section.get(
            "max_body_bytes", defaults.max_body_bytes, "bytes from 64 to 65536", integer(64, 65536)
        ),
        rate_limit_per_minute=section.get(
            "rate_limit_per_minute",
            defaults.rate_limit_per_minute,
            "requests per minute from 1 to 100000",
            integer(1, 100_000),
        ),
        rate_limit_burst=section.get(
            "rate_limit_burst",
            defaults.rate_limit_burst,
            "requests from 1 to 10000",
            integer(1, 10_000),
        ),
        trusted_proxies=section.get("trusted_proxies", (), "a list of IP addresses", ip_list),
    )
    section.reject_unknown()
    return settings


def _dkim_section(path: Path, root: Section, problems: list[str]) -> DkimSettings:
    section = Section(path, "dkim", root.subtable("dkim"), problems)
    tenants_table = section.subtable("tenant", "a table of tenants, [dkim.tenant.ID]")
    default_table = section.get("default", cast(dict[str, Any] | None, None), "a table", table)
    section.reject_unknown()
    tenants: dict[str, SigningIdentity] = {}
    for tenant_id, body in tenants_table.items():
        if not TENANT_ID.match(tenant_id):
            problems.append(
                f"{path}: key 'dkim.tenant.{tenant_id}': expected a tenant id of 1-64"
                " lower-case letters, digits, '.', '-' or '_'"
            )
            continue
        identity = _signing_identity(path, f"dkim.tenant.{tenant_id}", body, problems)
        if identity is not None:
            tenants[tenant_id] = identity
    default = None
    if default_table is not None:
        default = _signing_identity(path, "dkim.default", default_table, problems)
    return DkimSettings(tenants=tenants, default=default)


def _signing_identity(
    path: Path, name: str, body: Any, problems: list[str]
) -> SigningIdentity | None:
    section = Section(path, name, body, problems)
    domain = section.get("domain", "", "a domain name (the signature's d=)", domain_name)
    selector = section.get(
        "selector",
        "",
        "a selector of DNS labels (the signature's s=)",
        lambda raw: raw if isinstance(raw, str) and DNS_LABELS.match(raw) else None,
    )
    key_text = section.get(
        "key_file", "", "a path to the private key (relative to this file)", string
    )
    section.require("domain", "selector", "key_file")
    section.reject_unknown()
    if not (domain and selector and key_text):
        return None
    key_path = (path.parent / key_text).resolve()
    try:
        key = load_signing_key(key_path)
    except UnusableKey as exc:
        problems.append(
            f"{path}: key '{name}.key_file': expected an RSA (>= 2048 bits) or Ed25519 private"
            f" key readable only by the daemon, got {str(key_path)!r}: {exc}"
        )
        return None
    return SigningIdentity(domain=domain, selector=selector.lower(), key=key)


def _url_base(raw: Any) -> str | None:
    if not isinstance(raw, str):
        return None
    parts = urlsplit(raw)
    if parts.path not in ("", "/") or parts.query or parts.fragment or not parts.hostname:
        return None
    if parts.username or parts.password:
        return None
    try:
        _ = parts.port
    except ValueError:
        return None
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        return f"{parts.scheme}://{parts.netloc}"
    return None
