"""DKIM signing (dkimpy, the RSA operation by OpenSSL) of the message as the MTA will deliver it.

RFC 8058: mailbox providers offer one-click unsubscribe only when a valid DKIM
signature covers both List-Unsubscribe and List-Unsubscribe-Post, and Gmail's
feedback loop trusts a Feedback-ID only under one. So the milter signs after
deciding its header edits, over the edited header list
(`stages.listmail.ListMail.signature`: the kept fields, then those the milter
adds) and the body, and inserts the DKIM-Signature at the top. A signature
the tenant made itself stays (ours is added beside it).

`h=` lists the identity and content headers below. Each one present is listed
once more than it occurs ("over-signed"): nobody can add another instance
later without breaking the signature. Absent ones are listed once (a later
addition breaks the signature too), except Date, Message-ID and the MIME
headers, which an MTA downstream may legitimately add to a message that
lacks them.

Canonicalisation relaxed/relaxed: header refolding and trailing whitespace on
the way do not break the signature.

Where the signing identities live: `[dkim.tenant.<id>]` tables of the config
file (and `[dkim.default]`), not tenant fields in Redis. Keys are files on the
relay; naming them in the config lets `aup-milter check` and every start-up
and reload verify that each key exists, is readable only by the daemon, and is
RSA >= 2048 bits or Ed25519, before any mail is signed with it. A key named
in Redis could only fail when a message needs it.

Why OpenSSL signs: dkimpy's RSA is pure Python, and on bulk mail it was the
largest single cost of the milter (issue 12: 7 ms CPU per RSA-2048 signature,
against 0.25-0.4 ms through OpenSSL, python3-cryptography). dkimpy still does
everything else: canonicalisation, the DKIM-Signature's tags (`v a c d i q s t
h bh b`, `t=` from the clock, no `x=`) and their folding, the hash of the
header, and verification. `OpenSSLSigner` is a `dkim.DKIM` whose
`gen_header` (dkimpy's step that hashes the header and makes `b=`) is
dkimpy's own, line for line, except that the SHA-256 digest it computes is
signed (RSASSA-PKCS1-v1_5, RFC 8017) by the key that dkimkeys.py loaded into
OpenSSL once, when the config loaded. PKCS#1 v1.5 is deterministic: the header
is byte for byte the one dkimpy alone makes (tests/unit/mailauth/
test_dkimsign_openssl.py). Nothing of dkimpy is patched; a key without an
OpenSSL object (`SigningKey.openssl` None) is signed by dkimpy alone.
Ed25519 stays dkimpy's: it signs through PyNaCl (libsodium), native already
(~0.03 ms).

The bound, measured on the bench's bulk message (11 fields, a 2000-byte body)
on a 2-core VM: about 0.6 ms CPU per RSA-2048 signature (dkimpy alone: 6-7 ms),
2 ms for RSA-4096 (40 ms), 0.25 ms for Ed25519. Of the 0.6 ms: the RSA
operation ~0.25 ms (4096 bits ~1.4 ms: RSA costs the cube of the size);
dkimpy's Python ~0.2 ms, growing with the message (parsing what `render`
made, canonicalising, hashing). dkimpy's `DKIM.sign` would first parse the PEM
in pure Python (~0.1 ms more), a result this path never uses:
`OpenSSLSigner.sign_rsa_sha256` builds the same tags in the same order without
it, and the tests compare its header byte for byte with dkimpy's. `python -m
bench.signing` prints the figures on the machine at hand.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Sequence
from typing import Any, cast

import dkim
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256

from aupmilter.config import SigningIdentity
from aupmilter.message.wire import render_header_section
from aupmilter.policy.actions import InsertHeader
from aupmilter.policy.headers import HeaderField

SIGNED_HEADERS = (
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
)
MAY_BE_ADDED_DOWNSTREAM = frozenset(
    {"date", "message-id", "mime-version", "content-type", "content-transfer-encoding"}
)
_BARE_LF = re.compile(rb"(?<!\r)\n")


class SigningError(Exception):
    """dkimpy or OpenSSL refused to sign; the text says why (logged, the message is not signed)."""


class OpenSSLSigner(dkim.DKIM):  # type: ignore[misc]  # dkimpy has no type hints
    """dkimpy's signer, the RSA-SHA256 signature computed by OpenSSL with `key`."""

    def __init__(self, message: bytes, key: RSAPrivateKey) -> None:
        super().__init__(message, signature_algorithm=b"rsa-sha256")
        self._openssl_key = key

    def sign_rsa_sha256(
        self,
        selector: bytes,
        domain: bytes,
        canonicalize: tuple[bytes, bytes],
        include_headers: Sequence[bytes],
    ) -> bytes:
        """dkimpy's `DKIM.sign` (1.1.x) for RSA-SHA256 with `i=@domain` and no `l=`, step
        for step, without parsing the PEM in pure Python first (~0.1 ms per message):
        the signature comes from the OpenSSL key, so dkimpy's parse of it is never used.
        """
        canon_policy = dkim.CanonicalizationPolicy.from_c_value(b"/".join(canonicalize))
        include = tuple(name.lower() for name in include_headers)
        self.include_headers = include
        if b"from" not in include:
            raise dkim.ParameterError("The From header field MUST be signed")
        for name in set(include).intersection(self.should_not_sign):
            raise dkim.ParameterError(f"The {name!r} header field SHOULD NOT be signed")
        body = canon_policy.canonicalize_body(self.body)
        self.hasher = dkim.HASH_ALGORITHMS[self.signature_algorithm]
        body_hash = self.hasher()
        body_hash.update(body)
        fields = [
            (b"v", b"1"),
            (b"a", self.signature_algorithm),
            (b"c", canon_policy.to_c_value()),
            (b"d", domain),
            (b"i", b"@" + domain),
            (b"q", b"dns/txt"),
            (b"s", selector),
            (b"t", str(int(time.time())).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", base64.b64encode(body_hash.digest())),
            # As dkimpy: b= folds onto a line of its own.
            (b"b", b"0" * 60),
        ]
        header = self.gen_header(fields, include, canon_policy, b"DKIM-Signature", None)
        self.domain = domain
        self.selector = selector
        self.signature_fields = dict(fields)
        return b"DKIM-Signature: " + header

    def gen_header(
        self,
        fields: list[tuple[bytes, bytes]],
        include_headers: Sequence[bytes],
        canon_policy: Any,
        header_name: bytes,
        pk: object,
        standardize: bool = False,
    ) -> bytes:
        """dkimpy's DomainSigner.gen_header (dkimpy 1.0.5-1.1.x), the signature from OpenSSL.

        `pk` is what dkimpy parsed from the PEM; unused here. Anything but a
        DKIM RSA-SHA256 signature (ARC's standardized form) is dkimpy's own.
        """
        if standardize or self.signature_algorithm != b"rsa-sha256":
            return cast(
                bytes,
                super().gen_header(
                    fields, include_headers, canon_policy, header_name, pk, standardize
                ),
            )
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        header = (header_name, b" " + header_value)
        hasher = self.hasher()
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(
            hasher, canon_policy, headers, include_headers, header, dict(fields)
        )
        try:
            signature = self._openssl_key.sign(hasher.digest(), PKCS1v15(), Prehashed(SHA256()))
        except ValueError as exc:  # where dkimpy raises ParameterError; never seen
            raise SigningError(f"OpenSSL: {exc}") from exc
        index = next(i for i, (tag, _) in enumerate(fields) if tag == b"b")
        fields[index] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return cast(bytes, dkim.fold(header_value, namelen=len(header_name), linesep=self.linesep))


def header_list(headers: Sequence[HeaderField]) -> list[str]:
    """The h= list, lower-case, with over-signing."""
    counts: dict[str, int] = {}
    for field in headers:
        counts[field.key] = counts.get(field.key, 0) + 1
    listed: list[str] = []
    for name in SIGNED_HEADERS:
        key = name.lower()
        present = counts.get(key, 0)
        if present:
            listed.extend([key] * (present + 1))
        elif key not in MAY_BE_ADDED_DOWNSTREAM:
            listed.append(key)
    return listed


def render(headers: Sequence[HeaderField], body: bytes) -> bytes:
    """The message in wire form (CRLF), as dkimpy reads it: the header list, a blank line, body."""
    body = _BARE_LF.sub(b"\r\n", body)
    return render_header_section(headers) + b"\r\n" + body


def sign(headers: Sequence[HeaderField], body: bytes, identity: SigningIdentity) -> InsertHeader:
    """The DKIM-Signature to insert at the top; its value folded with LF as libmilter expects.

    `headers`: the header list as the MTA will deliver it (fields the milter
    adds made with `HeaderField.added`).
    """
    message = render(headers, body)
    key = identity.key
    selector, domain = identity.selector.encode("ascii"), identity.domain.encode("ascii")
    canonicalize = (b"relaxed", b"relaxed")
    include_headers = [h.encode("ascii") for h in header_list(headers)]
    try:
        if key.openssl is not None and key.algorithm == "rsa-sha256":
            signer = OpenSSLSigner(message, key.openssl)
            signature = signer.sign_rsa_sha256(selector, domain, canonicalize, include_headers)
        else:
            signature = dkim.sign(
                message,
                selector,
                domain,
                key.material,
                canonicalize=canonicalize,
                signature_algorithm=key.algorithm.encode("ascii"),
                include_headers=include_headers,
            )
    except dkim.DKIMException as exc:
        raise SigningError(f"{type(exc).__name__}: {exc}") from exc
    name, _, value = bytes(signature).decode("ascii").partition(":")
    return InsertHeader(name, value.strip().replace("\r\n", "\n"), index=0)
