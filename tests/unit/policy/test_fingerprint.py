"""Content fingerprints: equal for the same mail, different for different mail."""

from __future__ import annotations

import base64

from aupmilter.policy.fingerprint import FINGERPRINT_HEX_LENGTH, body_fingerprint

TEXT = "text/plain; charset=utf-8"


def multipart(boundary: str, text: str, html: str, encoding: str = "7bit") -> bytes:
    if encoding == "base64":
        text = base64.encodebytes(text.encode()).decode()
    return (
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n{text}\r\n"
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def test_same_content_other_boundary_encoding_and_ids() -> None:
    a = multipart(
        "b1", "Big sale today!\nOrder 12345\nhttps://shop.example/x?u=aaa",
        "<p>Big <b>sale</b> today!</p>",
    )  # fmt: skip
    b = multipart(
        "zz-99", "Big  sale TODAY!\r\nOrder 99871\r\nhttps://shop.example/x?u=bbb",
        "<div>Big sale&#32;today!</div>", "base64",
    )  # fmt: skip
    fa = body_fingerprint('multipart/alternative; boundary="b1"', None, a)
    fb = body_fingerprint('multipart/alternative; boundary="zz-99"', None, b)
    assert fa == fb
    assert len(fa) == FINGERPRINT_HEX_LENGTH


def test_different_content_differs() -> None:
    assert body_fingerprint(TEXT, None, b"Hello Bob\r\n") != body_fingerprint(
        TEXT, None, b"Goodbye Bob\r\n"
    )
    assert body_fingerprint(TEXT, None, b"x\r\n") != body_fingerprint(
        "application/pdf", "base64", base64.encodebytes(b"x")
    )


def test_quoted_printable_and_missing_headers() -> None:
    assert body_fingerprint(TEXT, "quoted-printable", b"caf=C3=A9 au lait\r\n") == (
        body_fingerprint(TEXT, "8bit", "café au lait\r\n".encode())
    )
    assert body_fingerprint(None, None, b"plain\r\n") == body_fingerprint(TEXT, None, b"plain\n")


def test_huge_bodies_are_bounded() -> None:
    body = b"same start\r\n" + b"x" * (3 * 1024 * 1024)
    assert body_fingerprint(TEXT, None, body) == body_fingerprint(TEXT, None, body + b"tail")
