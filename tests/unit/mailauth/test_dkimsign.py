"""DKIM signing after the header edits: dkimpy verifies what we sign.

The public key is handed to dkimpy's verifier directly here; the DNS path
(a real DNS server on loopback) is exercised end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from aupmilter.config import SigningIdentity
from aupmilter.mailauth.dkimkeys import load_signing_key
from aupmilter.mailauth.dkimsign import header_list, render, sign
from aupmilter.policy.actions import InsertHeader
from aupmilter.policy.headers import HeaderField as H
from testbed.dkimkeys import KeyPair, make_key

# As the MTA passes them with leading space kept; the subject folded with LF.
HEADERS = [
    H("Received", b" from client by relay; Tue, 14 Nov 2023 22:13:20 +0000"),
    H("From", b" News <news@acme.example>"),
    H("To", b" x@example.net"),
    H("Subject", b" Autumn\n\tnews"),
    H("Date", b" Tue, 14 Nov 2023 22:13:20 +0000"),
    H("Message-ID", b" <1@acme.example>"),
    H("MIME-Version", b" 1.0"),
    H("Content-Type", b" text/plain; charset=utf-8"),
    H("List-Unsubscribe", b" <https://unsub.relay.example/u/abc>, <mailto:u+abc@unsub.example>"),
    H("List-Unsubscribe-Post", b" List-Unsubscribe=One-Click"),
]
BODY = b"Hello,\r\nnews.\r\n\r\n\r\n"


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def key(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key(tmp_path_factory.mktemp("dkim"), "sel", request.param)


def identity(pair: KeyPair) -> SigningIdentity:
    return SigningIdentity("acme.example", "sel", load_signing_key(pair.private_key))


def verify(message: bytes, pair: KeyPair) -> bool:
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"sel._domainkey.acme.example."
        return pair.txt_record.encode()

    return bool(dkim.verify(message, dnsfunc=lookup))


def inserted(signature: InsertHeader) -> H:
    """The signature field as the MTA writes it at the top of the message."""
    return H.added(signature.name, signature.value)


def signed_message(headers: list[H], body: bytes, pair: KeyPair) -> bytes:
    signature = sign(headers, body, identity(pair))
    assert signature.name == "DKIM-Signature" and "\r" not in signature.value
    assert signature.index == 0
    return render([inserted(signature), *headers], body)


def tags(message: bytes) -> dict[str, str]:
    """The DKIM-Signature's tags (it is the first header)."""
    first = message.split(b"\r\n\r\n", 1)[0].decode().split("\r\nReceived:", 1)[0]
    value = first.split(":", 1)[1].replace("\r\n", "")
    return {
        k.strip(): v.strip()
        for k, _, v in (item.partition("=") for item in value.split(";") if "=" in item)
    }


def test_signature_verifies_and_covers_the_unsubscribe_headers(key: KeyPair) -> None:
    message = signed_message(HEADERS, BODY, key)
    assert verify(message, key)
    found = tags(message)
    listed = [h.strip() for h in found["h"].replace("\t", "").replace(" ", "").split(":")]
    assert listed.count("list-unsubscribe") == 2, "present once, over-signed once"
    assert listed.count("list-unsubscribe-post") == 2
    assert listed.count("from") == 2
    assert "cc" in listed, "absent Cc is signed: adding one later breaks the signature"
    assert "received" not in listed
    assert found["c"] == "relaxed/relaxed"
    assert found["a"] == ("rsa-sha256" if "k=rsa" in key.txt_record else "ed25519-sha256")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.replace(b"abc>", b"abd>", 1),
        lambda m: m.replace(
            b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://evil.example/>\r\n\r\n", 1
        ),
        lambda m: m.replace(b"\r\n\r\n", b"\r\nCc: more@example.net\r\n\r\n", 1),
        lambda m: m.replace(b"news.", b"NEWS."),
    ],
    ids=["changed link", "second List-Unsubscribe", "added Cc", "changed body"],
)
def test_changes_after_signing_break_the_signature(
    key: KeyPair, tamper: Callable[[bytes], bytes]
) -> None:
    message = signed_message(HEADERS, BODY, key)
    assert not verify(tamper(message), key)


def test_refolding_and_trailing_whitespace_survive(key: KeyPair) -> None:
    message = signed_message(HEADERS, BODY, key)
    refolded = message.replace(b"Subject: Autumn\r\n\tnews", b"Subject: Autumn news")
    refolded = refolded.replace(b"Hello,\r\n", b"Hello,  \r\n")
    assert verify(refolded, key)


def test_lf_only_bodies_are_signed_in_wire_form(key: KeyPair) -> None:
    signature = sign(HEADERS, b"Hello,\nnews.\n", identity(key))
    assert verify(render([inserted(signature), *HEADERS], b"Hello,\r\nnews.\r\n"), key)


def test_header_list_rules() -> None:
    listed = header_list([H("From", b" a"), H("To", b" b"), H("To", b" c"), H("Subject", b" s")])
    assert listed.count("to") == 3 and listed.count("from") == 2
    assert "date" not in listed and "message-id" not in listed, "an MTA may add these"
    assert "list-unsubscribe" in listed and "list-unsubscribe-post" in listed
    assert listed.count("feedback-id") == 1, "absent: listed once, so none can be added later"
    stamped = header_list([H("From", b" a"), H("Feedback-ID", b" c:acme:bulk:relay1")])
    assert stamped.count("feedback-id") == 2, "present: over-signed"


def test_existing_tenant_signature_is_kept(key: KeyPair, tmp_path: Path) -> None:
    tenant_key = make_key(tmp_path, "tenant", "ed25519")
    tenant_identity = SigningIdentity(
        "acme.example", "tenant", load_signing_key(tenant_key.private_key)
    )
    base = [h for h in HEADERS if not h.name.startswith("List-")]
    theirs = inserted(sign(base, BODY, tenant_identity))
    ours = inserted(sign([theirs, *base], BODY, identity(key)))
    message = render([ours, theirs, *base], BODY)

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return (tenant_key if name.startswith(b"tenant.") else key).txt_record.encode()

    checker = dkim.DKIM(message)
    assert checker.verify(idx=0, dnsfunc=lookup)
    assert checker.verify(idx=1, dnsfunc=lookup)
