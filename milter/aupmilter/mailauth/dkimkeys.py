"""DKIM private keys: read, check and normalise them once, when the config loads.

Accepted files:
- RSA of at least 2048 bits, PEM, PKCS#1 (`BEGIN RSA PRIVATE KEY`, as `openssl genrsa
  -traditional` and opendkim-genkey write) or PKCS#8 (`BEGIN PRIVATE KEY`, OpenSSL 3's default);
- Ed25519 (RFC 8463), PEM PKCS#8 (`openssl genpkey -algorithm ed25519`) or the bare
  base64 32-byte seed that dkimpy's `dknewkey --ktype ed25519` writes.

The result is what dkimpy's signer takes (PKCS#1 PEM for RSA, the base64 seed
for Ed25519), so dkimpy versions without PKCS#8 support sign just as well. An
RSA key is also loaded into OpenSSL (python3-cryptography) here, once per
load: the signer computes RSA signatures with it (see dkimsign.py), and a key
OpenSSL refuses (inconsistent parameters) is refused at load like any other
unusable key. A rotated key file is read again at the next config load, as
every key is.

A key must not be accessible by "other" users nor writable by its group: a
readable signing key lets anyone sign mail as the tenant's domain.
"""

from __future__ import annotations

import base64
import binascii
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from dkim.crypto import UnparsableKeyError, parse_private_key

MIN_RSA_BITS = 2048
MAX_KEY_FILE_BYTES = 64 * 1024
FORBIDDEN_MODE_BITS = stat.S_IRWXO | stat.S_IWGRP
RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption
ED25519_OID = bytes.fromhex("2b6570")  # 1.3.101.112
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]


class UnusableKey(Exception):
    """A key file that cannot be used; the text says why and what is expected."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    algorithm: Algorithm
    material: bytes
    """dkimpy's form: PKCS#1 PEM (RSA) or the base64 seed (Ed25519)."""
    bits: int
    path: Path
    openssl: RSAPrivateKey | None = field(default=None, compare=False)
    """The RSA key loaded into OpenSSL, which signs with it; None: dkimpy signs alone."""

    def __repr__(self) -> str:  # never print key material into logs or error texts
        return f"SigningKey({self.algorithm}, {self.bits} bits, {self.path})"


def load_signing_key(path: Path) -> SigningKey:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UnusableKey("file not found") from None
    except OSError as exc:
        raise UnusableKey(f"cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UnusableKey("not a regular file")
    if info.st_mode & FORBIDDEN_MODE_BITS:
        raise UnusableKey(
            f"mode {stat.S_IMODE(info.st_mode):04o} lets other users read or change the key;"
            " expected 0600 or 0640 (chmod o-rwx,g-w)"
        )
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise UnusableKey(f"larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise UnusableKey(
            "permission denied while reading (the daemon's user must read it)"
        ) from None
    except OSError as exc:
        raise UnusableKey(f"cannot read: {exc.strerror}") from None
    return parse_signing_key(data, path)


def parse_signing_key(data: bytes, path: Path) -> SigningKey:
    match = _PEM.search(data)
    if match is None:
        return _bare_ed25519(data, path)
    label, body = match.group(1).decode("ascii"), match.group(2)
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UnusableKey("PEM body is not valid base64") from None
    if label == "RSA PRIVATE KEY":
        return _rsa(der, path)
    if label == "PRIVATE KEY":
        algorithm_oid, inner = _pkcs8(der)
        if algorithm_oid == RSA_OID:
            return _rsa(inner, path)
        if algorithm_oid == ED25519_OID:
            seed = _der_octet_string(inner)
            if seed is None or len(seed) != 32:
                raise UnusableKey("Ed25519 PKCS#8 key without a 32-byte seed")
            return SigningKey("ed25519-sha256", base64.b64encode(seed), 256, path)
        raise UnusableKey("PKCS#8 key of an algorithm other than RSA or Ed25519")
    if label == "ENCRYPTED PRIVATE KEY":
        raise UnusableKey("the key is encrypted; the daemon cannot ask for a passphrase")
    raise UnusableKey(f"unsupported PEM block {label!r}: expected an RSA or Ed25519 private key")


def _rsa(der: bytes, path: Path) -> SigningKey:
    try:
        parsed = parse_private_key(der)
    except (UnparsableKeyError, ValueError, IndexError) as exc:
        raise UnusableKey(f"not a valid RSA private key ({exc})") from None
    bits = int(parsed["modulus"]).bit_length()
    if bits < MIN_RSA_BITS:
        raise UnusableKey(f"RSA key of {bits} bits; at least {MIN_RSA_BITS} are required")
    pem = b"-----BEGIN RSA PRIVATE KEY-----\n"
    encoded = base64.b64encode(der)
    pem += b"\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    pem += b"\n-----END RSA PRIVATE KEY-----\n"
    try:
        loaded = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # cryptography 38 adds OpenSSL's error list to the text: its first words suffice
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        raise UnusableKey(f"not a valid RSA private key (OpenSSL: {reason})") from None
    if not isinstance(loaded, RSAPrivateKey):  # the PEM label says RSA: never seen
        raise UnusableKey("not a valid RSA private key (OpenSSL read another kind)")
    return SigningKey("rsa-sha256", pem, bits, path, openssl=loaded)


def _bare_ed25519(data: bytes, path: Path) -> SigningKey:
    text = b"".join(data.split())
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise UnusableKey(
            "neither a PEM private key nor a base64 Ed25519 seed; expected an RSA (>= 2048 bits)"
            " or Ed25519 private key"
        )
    return SigningKey("ed25519-sha256", base64.b64encode(seed), 256, path)


# --- just enough DER to unwrap PKCS#8 (RFC 5958) --------------------------------


def _der_item(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, content, offset after the item); raises UnusableKey on malformed input."""
    if offset + 2 > len(data):
        raise UnusableKey("truncated DER")
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise UnusableKey("bad DER length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    end = offset + length
    if end > len(data):
        raise UnusableKey("truncated DER")
    return tag, data[offset:end], end


def _pkcs8(der: bytes) -> tuple[bytes, bytes]:
    """(algorithm OID, private key octets) of a OneAsymmetricKey."""
    tag, body, _ = _der_item(der, 0)
    if tag != 0x30:
        raise UnusableKey("PKCS#8 key is not a DER SEQUENCE")
    tag, _version, offset = _der_item(body, 0)
    if tag != 0x02:
        raise UnusableKey("PKCS#8 key without a version")
    tag, algorithm, offset = _der_item(body, offset)
    if tag != 0x30:
        raise UnusableKey("PKCS#8 key without an algorithm identifier")
    tag, oid, _ = _der_item(algorithm, 0)
    if tag != 0x06:
        raise UnusableKey("PKCS#8 algorithm identifier without an OID")
    tag, private, _ = _der_item(body, offset)
    if tag != 0x04:
        raise UnusableKey("PKCS#8 key without private key octets")
    return oid, private


def _der_octet_string(data: bytes) -> bytes | None:
    try:
        tag, content, end = _der_item(data, 0)
    except UnusableKey:
        return None
    return content if tag == 0x04 and end == len(data) else None
