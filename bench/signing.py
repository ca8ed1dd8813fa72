"""``python -m bench.signing``: CPU per DKIM signature, dkimpy alone against the OpenSSL path.

For each key (the shipped RSA-2048 and RSA-4096 test keys, an Ed25519 key made
with openssl) it signs one bulk-sized message (11 header fields, a 2000-byte
body, as the bench's bulk workload sends) with `aupmilter.mailauth.dkimsign.sign`
twice: "old", the key without its OpenSSL object (dkimpy's pure-Python RSA, as
before issue 12), and "new", as the daemon signs. For RSA it also times the
private-key operation alone (dkimpy's `RSASSA_PKCS1_v1_5_sign` against
OpenSSL's). Figures are process CPU time (`time.process_time`) per signature,
the median of `--rounds` rounds; the last lines, one per key, are for scripts
(Ed25519 has one path: dkimpy through PyNaCl, native already):

    signing: key=rsa-2048 old_ms=7.01 new_ms=0.52 rsa_old_ms=6.80 rsa_new_ms=0.25 speedup=13.5
    signing: key=ed25519 ms=0.25
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256
from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key

from aupmilter.config import SigningIdentity
from aupmilter.mailauth.dkimkeys import SigningKey, load_signing_key
from aupmilter.mailauth.dkimsign import sign
from aupmilter.policy.headers import HeaderField as H
from testbed.dkimkeys import make_key
from testbed.zones import private_key_path

HEADERS = [
    H("Received", b" from client.example (client.example [192.0.2.10]) by relay.example"),
    H("From", b" News <news@acme.example>"),
    H("To", b" reader@example.net"),
    H("Subject", b" Autumn news from Acme"),
    H("Date", b" Tue, 14 Nov 2023 22:13:20 +0000"),
    H("Message-ID", b" <20231114221320.1@acme.example>"),
    H("MIME-Version", b" 1.0"),
    H("Content-Type", b" text/plain; charset=utf-8"),
    H.added(
        "List-Unsubscribe", "<https://unsub.relay.example/u/abc>, <mailto:u+abc@unsub.example>"
    ),
    H.added("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    H.added("Feedback-ID", "c1:acme:bulk:relay1"),
]
BODY = (b"A line of this autumn's newsletter, as bulk mail carries.\r\n" * 35)[:2000]


def cpu_ms(action: Callable[[], object], count: int, rounds: int) -> float:
    """Median over rounds of the CPU milliseconds per call."""
    action()  # warm: imports, caches
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(count):
            action()
        samples.append((time.process_time() - start) * 1000 / count)
    return statistics.median(samples)


def keys(folder: Path) -> dict[str, SigningKey]:
    loaded = {}
    for name, label in (("test-rsa2048", "rsa-2048"), ("test-rsa4096", "rsa-4096")):
        path = folder / f"{name}.key"
        shutil.copy(private_key_path(name), path)
        path.chmod(0o600)
        loaded[label] = load_signing_key(path)
    loaded["ed25519"] = load_signing_key(make_key(folder, "ed25519", "ed25519").private_key)
    return loaded


def measure(label: str, key: SigningKey, count: int, rounds: int) -> str:
    new = SigningIdentity("acme.example", "sel", key)
    new_ms = cpu_ms(lambda: sign(HEADERS, BODY, new), count, rounds)
    openssl = key.openssl
    if openssl is None:  # Ed25519: dkimpy signs through PyNaCl, there is no other path
        return f"signing: key={label} ms={new_ms:.3f}"
    old = SigningIdentity("acme.example", "sel", dataclasses.replace(key, openssl=None))
    slow = max(1, count // 10)
    old_ms = cpu_ms(lambda: sign(HEADERS, BODY, old), slow, rounds)
    parsed = parse_pem_private_key(key.material)
    digest = hashlib.sha256(BODY).digest()
    rsa_old = cpu_ms(lambda: RSASSA_PKCS1_v1_5_sign(hashlib.sha256(BODY), parsed), slow, rounds)
    rsa_new = cpu_ms(lambda: openssl.sign(digest, PKCS1v15(), Prehashed(SHA256())), count, rounds)
    return (
        f"signing: key={label} old_ms={old_ms:.3f} new_ms={new_ms:.3f}"
        f" rsa_old_ms={rsa_old:.3f} rsa_new_ms={rsa_new:.3f} speedup={old_ms / new_ms:.1f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.signing", description=__doc__)
    parser.add_argument("--count", type=int, default=200, help="signatures per round (new path)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--key", choices=["rsa-2048", "rsa-4096", "ed25519"], action="append", help="default: all"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aup-bench-signing-") as folder:
        loaded = keys(Path(folder))
        lines = [
            measure(label, key, args.count, args.rounds)
            for label, key in loaded.items()
            if not args.key or label in args.key
        ]
    print(
        "CPU ms per signature (median of rounds); old: dkimpy alone, new: the RSA by OpenSSL;"
        " rsa_*: the private-key operation alone"
    )
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
