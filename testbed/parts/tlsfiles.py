"""A throw-away CA and a server certificate for 127.0.0.1, made with openssl, for TLS tests.

The server certificate names 127.0.0.1 as an IP subjectAltName, so clients
that check the host name accept it; the keys are EC P-256 (quick to make).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from testbed.proc import run


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    if files.cert.exists():
        return files
    ca_key = folder / "ca.key"
    csr = folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(files.ca),
         "-days", "2", "-subj", "/CN=aup-milter test CA"], what="openssl: the test CA")  # fmt: skip
    run(["openssl", "req", *ec, "-keyout", str(files.key), "-out", str(csr),
         "-subj", "/CN=127.0.0.1"], what="openssl: the server key")  # fmt: skip
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(files.ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(files.cert), "-days", "2", "-extfile", str(ext)],
        what="openssl: the server certificate")  # fmt: skip
    files.key.chmod(0o644)  # redis-server runs as us; the folder is the test's
    return files
