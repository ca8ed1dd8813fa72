"""RDAP over HTTPS: the registry's service for a domain (IANA bootstrap), and its answer.

RFC 9224: the IANA bootstrap file (https://data.iana.org/rdap/dns.json)
lists, per top-level domain (or longer suffix), the base URLs of the
registry's RDAP service; `find_service` picks the longest matching suffix.
`lookup` then GETs `<base>domain/<name>` (RFC 9082) with
`Accept: application/rdap+json`, and, when the registry's answer names no
registrant but links to the registrar's RDAP server (rel "related", thin
registries), follows that one link.

Bounded: every request waits at most `[onboarding] rdap_timeout` seconds
and reads at most `MAX_DOCUMENT_BYTES`; one bootstrap fetch and at most two
RDAP requests per lookup. Every failure (no service for the TLD, a timeout,
a refused connection, an HTTP error other than 404, a document that is not
RDAP) is an `RdapAnswer` with `found=False` and the reason, never an
exception: the command reports `unknown`. A 404 is the registry saying the
domain is not registered: a `fail`.

The bootstrap may be a URL (http(s)) or a local file: tests and offline
relays point it at their own copy.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aupmilter.policy.onboarding import CheckName, Finding, Status
from aupmilter.policy.registration import NotRdap, Registration, judge_registration, parse_domain

IANA_BOOTSTRAP = "https://data.iana.org/rdap/dns.json"
MAX_DOCUMENT_BYTES = 1 << 20
"""A domain object or the bootstrap file (about 30 KB today) is far smaller."""
USER_AGENT = "aup-milter verify-domain"


@dataclass(frozen=True, slots=True)
class RdapSettings:
    """`[onboarding]` of the config file: where the bootstrap file is and how long to wait."""

    bootstrap: str = IANA_BOOTSTRAP
    """An http(s) URL or a file path."""
    timeout: float = 10.0
    """Seconds for each request (connect and read)."""


class RdapFailure(Exception):
    """What could not be learnt; the text says why."""


@dataclass(frozen=True, slots=True)
class RdapAnswer:
    status: Status
    """pass/fail/unknown as far as the fetch goes: unknown when nothing could be learnt."""
    detail: str
    registration: Registration | None = None
    source: str = ""
    """The URL that answered."""


def find_service(bootstrap: object, domain: str) -> str | None:
    """The first base URL for the longest suffix of `domain` in the bootstrap's services."""
    if not isinstance(bootstrap, dict) or not isinstance(bootstrap.get("services"), list):
        raise RdapFailure("the bootstrap file has no 'services' list")
    labels = domain.lower().rstrip(".").split(".")
    best: tuple[int, str] | None = None
    for service in bootstrap["services"]:
        if not isinstance(service, list) or len(service) != 2:
            continue
        suffixes, urls = service
        if not isinstance(suffixes, list) or not isinstance(urls, list) or not urls:
            continue
        texts = [u for u in urls if isinstance(u, str)]
        https = [u for u in texts if u.startswith("https://")]
        if not texts:
            continue
        url = (https or texts)[0]
        for suffix in suffixes:
            if not isinstance(suffix, str):
                continue
            parts = suffix.lower().strip(".").split(".")
            if labels[-len(parts) :] == parts and (best is None or len(parts) > best[0]):
                best = (len(parts), url)
    return best[1] if best is not None else None


class RdapClient:
    """One per command run; the bootstrap file is read once."""

    def __init__(self, settings: RdapSettings) -> None:
        self.settings = settings
        self._bootstrap: object | None = None

    def bootstrap(self) -> object:
        if self._bootstrap is None:
            source = self.settings.bootstrap
            if source.startswith(("http://", "https://")):
                code, body = self._get(source, "application/json")
                if code != 200:
                    raise RdapFailure(f"bootstrap {source}: HTTP {code}")
            else:
                try:
                    body = Path(source).read_bytes()[:MAX_DOCUMENT_BYTES]
                except OSError as exc:
                    raise RdapFailure(f"bootstrap {source}: {exc.strerror or exc}") from None
            self._bootstrap = _json(body, f"bootstrap {source}")
        return self._bootstrap

    def lookup(self, domain: str) -> RdapAnswer:
        """The registration of `domain` (the registrable domain, not a subdomain)."""
        try:
            base = find_service(self.bootstrap(), domain)
            if base is None:
                return RdapAnswer(Status.UNKNOWN, f"no RDAP service for {domain} in the bootstrap")
            url = urllib.parse.urljoin(base if base.endswith("/") else base + "/", "domain/")
            url += urllib.parse.quote(domain)
            code, body = self._get(url, "application/rdap+json")
            if code == 404:
                return RdapAnswer(Status.FAIL, f"{url}: the registry does not know {domain}",
                                  source=url)  # fmt: skip
            if code != 200:
                return RdapAnswer(Status.UNKNOWN, f"{url}: HTTP {code}", source=url)
            registration = parse_domain(_json(body, url))
            if not registration.has_registrant and registration.related:
                related = registration.related[0]
                code, body = self._get(related, "application/rdap+json")
                if code == 200:
                    registration = parse_domain(_json(body, related))
                    url = related
        except RdapFailure as exc:
            return RdapAnswer(Status.UNKNOWN, str(exc))
        except NotRdap as exc:
            return RdapAnswer(Status.UNKNOWN, f"not an RDAP domain object: {exc}")
        return RdapAnswer(Status.PASS, "answered", registration, url)

    def _get(self, url: str, accept: str) -> tuple[int, bytes]:
        """(HTTP status, body) of a GET; RdapFailure when no answer came in time."""
        if not url.startswith(("http://", "https://")):
            raise RdapFailure(f"{url}: not an http(s) URL")
        request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                return int(response.status), response.read(MAX_DOCUMENT_BYTES)
        except urllib.error.HTTPError as exc:
            return int(exc.code), b""
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RdapFailure(f"{url}: {reason}") from None


def rdap_finding(answer: RdapAnswer) -> Finding:
    """The `rdap` finding of an answer: the registrant judged, or why there is none."""
    if answer.registration is not None:
        return judge_registration(answer.registration, answer.source)
    fix = "try again later (the registry's RDAP service did not answer)"
    if answer.status is Status.FAIL:
        fix = "register the domain (or check its spelling), then verify again"
    return Finding(CheckName.RDAP, answer.status, answer.detail, fix, {"source": answer.source})


def _json(body: bytes, what: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RdapFailure(f"{what}: not JSON ({exc})") from None
