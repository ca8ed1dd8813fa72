"""The Public Suffix List lookup (mailauth/psl.py): organizational domains, both backends."""

from __future__ import annotations

import pytest

from aupmilter.mailauth import psl
from aupmilter.mailauth.psl import organizational_domain


@pytest.mark.parametrize(
    ("domain", "organizational"),
    [
        ("acme.example", "acme.example"),
        ("mail.acme.example", "acme.example"),
        ("a.b.co.uk", "b.co.uk"),
        ("shop.example.com", "example.com"),
        ("user.github.io", "user.github.io"),  # a private-section suffix
        ("co.uk", "co.uk"),
    ],
)
def test_organizational_domain_by_the_psl(domain: str, organizational: str) -> None:
    assert organizational_domain(domain) == organizational


@pytest.mark.parametrize(
    "domain",
    ["acme.example", "mail.acme.example", "a.b.co.uk", "shop.example.com", "user.github.io"],
)
def test_debian_psl_backend_agrees(domain: str) -> None:
    """Where only python3-publicsuffix2 is installed (the Debian package), the answers agree."""
    debian = psl._publicsuffix2()
    assert (debian(domain) or domain) == organizational_domain(domain)
