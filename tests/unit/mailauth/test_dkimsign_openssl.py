"""RSA signing through OpenSSL: the same DKIM-Signature dkimpy makes alone, and it verifies.

dkimpy's pure-Python RSA is the reference: RSASSA-PKCS1-v1_5 is
deterministic, so for the same message, key and second (`t=`) both paths must
give the same bytes. The keys are the shipped test keys (testbed/dkim) and an
Ed25519 key made with openssl; dkimpy's verifier gets the public key directly.
"""

from __future__ import annotations

import base64
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from aupmilter.config import SigningIdentity
from aupmilter.mailauth.dkimkeys import SigningKey, UnusableKey, load_signing_key
from aupmilter.mailauth.dkimsign import OpenSSLSigner, SigningError, header_list, render, sign
from aupmilter.policy.headers import HeaderField as H
from testbed.dkimkeys import make_key
from testbed.zones import KEY_DIR, private_key_path

HEADERS = [
    H("Received", b" from client by relay; Tue, 14 Nov 2023 22:13:20 +0000"),
    H("From", b" News <news@acme.example>"),
    H("To", b" x@example.net"),
    H("Subject", b" Autumn\n\tnews  and   more"),
    H("Date", b" Tue, 14 Nov 2023 22:13:20 +0000"),
    H("Message-ID", b" <1@acme.example>"),
    H("MIME-Version", b" 1.0"),
    H("Content-Type", b" text/plain; charset=utf-8"),
    H("List-Unsubscribe", b" <https://unsub.relay.example/u/abc>, <mailto:u+abc@unsub.example>"),
    H("List-Unsubscribe-Post", b" List-Unsubscribe=One-Click"),
    H("Feedback-ID", b" c1:acme:bulk:relay1"),
]
BODY = b"Hello,  \r\nnews.\t\r\n\r\n" + b"A line of the newsletter.\r\n" * 60 + b"\r\n\r\n"
CANONICALIZATIONS = [
    (b"relaxed", b"relaxed"),
    (b"relaxed", b"simple"),
    (b"simple", b"simple"),
    (b"simple", b"relaxed"),
]


class Key:
    """A loaded signing key and the TXT record that publishes its public half."""

    def __init__(self, signing_key: SigningKey, txt_record: str) -> None:
        self.signing_key = signing_key
        self.txt_record = txt_record

    def verify(self, message: bytes) -> bool:
        def lookup(name: bytes, timeout: int = 5) -> bytes:
            assert name == b"sel._domainkey.acme.example."
            return self.txt_record.encode()

        return bool(dkim.verify(message, dnsfunc=lookup))


def shipped_key(folder: Path, name: str) -> Key:
    path = folder / f"{name}.key"
    shutil.copy(private_key_path(name), path)
    path.chmod(0o600)
    public = (KEY_DIR / f"{name}.pub").read_text().strip()
    return Key(load_signing_key(path), f"v=DKIM1; k=rsa; p={public}")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    folder = tmp_path_factory.mktemp("keys")
    ed25519 = make_key(folder, "ed", "ed25519")
    return {
        "rsa2048": shipped_key(folder, "test-rsa2048"),
        "rsa4096": shipped_key(folder, "test-rsa4096"),
        "ed25519": Key(load_signing_key(ed25519.private_key), ed25519.txt_record),
    }


def identity(key: SigningKey) -> SigningIdentity:
    return SigningIdentity("acme.example", "sel", key)


def dkimpy_alone(key: SigningKey) -> SigningKey:
    """The same key with no OpenSSL object: dkimsign.sign hands it to dkimpy's own signer."""
    return dataclasses.replace(key, openssl=None)


def same_second(make: Callable[[], tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """Two signatures made within one second of the clock (t=), retried if a second turned."""
    for _ in range(5):
        first, second = make()
        if tag(first, b"t") == tag(second, b"t"):
            return first, second
    raise AssertionError("the clock turned a second on every try")


def tag(signature: bytes, name: bytes) -> bytes:
    value = signature.split(b":", 1)[1]
    for item in value.split(b";"):
        key, _, found = item.partition(b"=")
        if key.strip() == name:
            return b"".join(found.split())
    raise AssertionError(f"no {name!r}= in {signature!r}")


def test_rsa_keys_are_loaded_into_openssl_once_and_ed25519_stays_dkimpys(
    keys: dict[str, Key],
) -> None:
    for name, bits in (("rsa2048", 2048), ("rsa4096", 4096)):
        key = keys[name].signing_key
        assert key.openssl is not None and key.openssl.key_size == bits
        assert key.material.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert keys["ed25519"].signing_key.openssl is None
    assert "openssl" not in repr(keys["rsa2048"].signing_key).lower()


@pytest.mark.parametrize("name", ["rsa2048", "rsa4096"])
@pytest.mark.parametrize("canonicalize", CANONICALIZATIONS, ids=lambda c: b"/".join(c).decode())
def test_openssl_signer_makes_dkimpys_header_byte_for_byte_and_it_verifies(
    keys: dict[str, Key], name: str, canonicalize: tuple[bytes, bytes]
) -> None:
    key = keys[name].signing_key
    openssl = key.openssl
    assert openssl is not None
    message = render(HEADERS, BODY)
    include = [h.encode() for h in header_list(HEADERS)]

    def both() -> tuple[bytes, bytes]:
        ours = OpenSSLSigner(message, openssl).sign(
            b"sel", b"acme.example", key.material, canonicalize=canonicalize,
            include_headers=include,
        )  # fmt: skip
        reference = dkim.sign(
            message, b"sel", b"acme.example", key.material, canonicalize=canonicalize,
            include_headers=include,
        )  # fmt: skip
        return bytes(ours), bytes(reference)

    ours, reference = same_second(both)
    assert ours == reference
    assert tag(ours, b"c") == b"/".join(canonicalize)
    assert len(base64.b64decode(tag(ours, b"b"))) == keys[name].signing_key.bits // 8
    assert keys[name].verify(ours + message)
    assert not keys[name].verify(ours + message.replace(b"abc>", b"abd>", 1))


@pytest.mark.parametrize("name", ["rsa2048", "rsa4096", "ed25519"])
def test_sign_gives_the_header_dkimpy_alone_gives_and_it_verifies(
    keys: dict[str, Key], name: str
) -> None:
    key = keys[name].signing_key

    def both() -> tuple[bytes, bytes]:
        ours = sign(HEADERS, BODY, identity(key))
        alone = sign(HEADERS, BODY, identity(dkimpy_alone(key)))
        assert ours.name == alone.name == "DKIM-Signature" and ours.index == alone.index == 0
        return f"{ours.name}:{ours.value}".encode(), f"{alone.name}:{alone.value}".encode()

    ours, alone = same_second(both)
    assert ours == alone
    assert b"\r" not in ours
    signed = render([H.added("DKIM-Signature", ours.decode().split(":", 1)[1]), *HEADERS], BODY)
    assert keys[name].verify(signed)
    assert tag(ours, b"d") == b"acme.example" and tag(ours, b"s") == b"sel"
    assert tag(ours, b"a") == (b"ed25519-sha256" if name == "ed25519" else b"rsa-sha256")
    assert b"x=" not in ours


def test_openssl_computes_the_signature(keys: dict[str, Key]) -> None:
    """The PEM dkimpy is handed is not the key that signs: OpenSSL's key object is."""
    rsa2048, rsa4096 = keys["rsa2048"], keys["rsa4096"]
    mixed = dataclasses.replace(rsa2048.signing_key, material=rsa4096.signing_key.material)
    header = sign(HEADERS, BODY, identity(mixed))
    signed = render([H.added(header.name, header.value), *HEADERS], BODY)
    assert rsa2048.verify(signed)
    assert not rsa4096.verify(signed)


@pytest.mark.parametrize("name", ["rsa2048", "ed25519"])
def test_a_key_dkimpy_cannot_read_is_a_signing_error_where_dkimpy_signs(
    keys: dict[str, Key], name: str
) -> None:
    key = keys[name].signing_key
    broken = dataclasses.replace(dkimpy_alone(key), material=b"bm90IGEga2V5")
    with pytest.raises(SigningError, match="KeyFormatError"):
        sign(HEADERS, BODY, identity(broken))


def test_the_openssl_path_signs_with_the_openssl_key_alone(keys: dict[str, Key]) -> None:
    """dkimpy's PEM form is checked once, when the key loads (load_signing_key); per
    message only the OpenSSL key is used, so nothing parses the PEM again."""
    key = keys["rsa2048"]
    unread = dataclasses.replace(key.signing_key, material=b"bm90IGEga2V5")
    signature = sign(HEADERS, BODY, identity(unread))
    signed = f"{signature.name}: {signature.value}".replace("\n", "\r\n").encode() + b"\r\n"
    assert key.verify(signed + render(HEADERS, BODY))


def der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return b"\x02" + der_length(len(body)) + body


def der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def test_a_key_openssl_refuses_is_refused_when_the_config_loads(
    keys: dict[str, Key], tmp_path: Path
) -> None:
    """Parameters that do not belong together: dkimpy reads them, OpenSSL's check refuses."""
    key = keys["rsa2048"].signing_key
    assert key.openssl is not None
    numbers = key.openssl.private_numbers()
    fields = [
        0,
        numbers.public_numbers.n,
        numbers.public_numbers.e,
        numbers.d + 2,  # wrong private exponent
        numbers.p,
        numbers.q,
        numbers.dmp1,
        numbers.dmq1,
        numbers.iqmp,
    ]
    content = b"".join(der_integer(value) for value in fields)
    der = b"\x30" + der_length(len(content)) + content
    encoded = base64.b64encode(der).decode()
    lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    path = tmp_path / "bad.key"
    path.write_text(
        "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----\n"
    )
    path.chmod(0o600)
    with pytest.raises(UnusableKey, match="OpenSSL") as refused:
        load_signing_key(path)
    assert "_OpenSSLError" not in str(refused.value), "a text for the config error, not a repr"
