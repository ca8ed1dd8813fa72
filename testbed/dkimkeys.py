"""DKIM key pairs for the demo and the tests: made with openssl, published as TXT records.

`make_key(folder, name, "rsa" | "ed25519")` writes `NAME.key` (mode 0600, the
form aup-milter loads) and returns the TXT record value a receiver looks up
at `SELECTOR._domainkey.DOMAIN`.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dns.message
import dns.query

KeyType = Literal["rsa", "ed25519"]
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    txt_record: str
    """`v=DKIM1; k=...; p=...`"""


def _openssl(*args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["openssl", *args], input=data, capture_output=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {done.stderr.decode(errors='replace')}")
    return done.stdout


def make_key(folder: Path, name: str, kind: KeyType = "rsa", bits: int = 2048) -> KeyPair:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.key"
    if not path.exists():
        if kind == "rsa":
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}",
                     "-out", str(path))  # fmt: skip
        else:
            _openssl("genpkey", "-algorithm", "ed25519", "-out", str(path))
        path.chmod(0o600)
    public_der = _openssl("pkey", "-in", str(path), "-pubout", "-outform", "DER")
    if kind == "ed25519":
        # RFC 8463: p= is the bare 32-byte public key, not the SubjectPublicKeyInfo.
        if not public_der.startswith(ED25519_SPKI_PREFIX):
            raise RuntimeError(f"{path}: unexpected Ed25519 public key encoding")
        public = public_der[len(ED25519_SPKI_PREFIX) :]
    else:
        public = public_der
    record = f"v=DKIM1; k={kind}; p={base64.b64encode(public).decode('ascii')}"
    return KeyPair(path, record)


def dns_txt_lookup(host: str, port: int) -> Callable[..., bytes]:
    """A dkimpy ``dnsfunc`` that asks the DNS server at host:port over the real protocol.

    UDP first, TCP when the answer is truncated (long RSA keys), as a resolver does.
    """

    def lookup(name: bytes | str, timeout: float = 5.0) -> bytes:
        qname = name.decode("ascii") if isinstance(name, bytes) else name
        query = dns.message.make_query(qname, "TXT")
        answer, _tcp = dns.query.udp_with_fallback(query, host, timeout=timeout, port=port)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return b""

    return lookup
