"""Whatever bytes come in, a Report comes out: corpus samples mangled at random."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings

from aupmilter.reports.classify import classify_bytes
from aupmilter.reports.model import Kind
from tests.fuzz.strategies import mangled_reports


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled_reports())
def test_mangled_reports_classify_without_an_exception(raw: bytes) -> None:
    report = classify_bytes(raw)
    assert report.kind in Kind
    assert set(report.suppress) <= set(report.recipients)
    assert "cannot be classified" not in report.reason, report.reason
    assert report.reason and "\n" not in report.reason


def test_a_charset_with_a_nul_in_it_still_classifies() -> None:
    """Found by make fuzz: email's get_payload raises ValueError on such a charset."""
    sample = Path(__file__).resolve().parents[2] / "corpus" / "reports" / "arf-unknown-charset.eml"
    raw = sample.read_bytes().replace(b"charset=x-unknown", b"charset=\x00-unknown", 1)
    assert b"\x00" in raw
    report = classify_bytes(raw)
    assert "cannot be classified" not in report.reason, report.reason
    assert report.kind is Kind.COMPLAINT, report
