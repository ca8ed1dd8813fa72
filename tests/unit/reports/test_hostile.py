"""Whatever bytes come in, a Report comes out: corpus samples mangled at random."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupmilter.reports.classify import classify_bytes
from aupmilter.reports.model import Kind

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "corpus" / "reports").glob("*.eml"))
PIECES = [
    b"\n", b"\r\n", b"--", b":", b";", b"=?x-unknown?q?=FF?=", b"\xff\xfe", b"<", b">",
    b'Content-Type: multipart/mixed; boundary="x"\n', b"Content-Transfer-Encoding: base64\n",
    b"Action: failed\nStatus: 5.1.1\n", b"Final-Recipient: rfc822; a@example.com\n",
]  # fmt: skip


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    raw = bytearray(SAMPLES[draw(st.integers(0, len(SAMPLES) - 1))].read_bytes())
    for _ in range(draw(st.integers(1, 12))):
        at = draw(st.integers(0, len(raw)))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            raw[at : at + 1] = bytes([draw(st.integers(0, 255))])
        elif choice == 1:
            del raw[at : at + draw(st.integers(1, 64))]
        else:
            raw[at:at] = draw(st.sampled_from(PIECES))
    return bytes(raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled())
def test_mangled_reports_classify_without_an_exception(raw: bytes) -> None:
    report = classify_bytes(raw)
    assert report.kind in Kind
    assert set(report.suppress) <= set(report.recipients)
    assert "cannot be classified" not in report.reason, report.reason
    assert report.reason and "\n" not in report.reason
