"""[metrics]: the Prometheus endpoint's address, its default, "" to disable, and the error texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from tests.unit.configfiles import problems, write


def test_metrics_default_to_loopback_8896(confdir: Path) -> None:
    config = load_config(write(confdir, ""))
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 8896)
    assert config.metrics.listen == "127.0.0.1:8896"


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:9100", "127.0.0.1", 9100),
        ("[::1]:9100", "::1", 9100),
        ("0.0.0.0:1", "0.0.0.0", 1),
    ],
)
def test_metrics_listen_is_read(confdir: Path, value: str, host: str, port: int) -> None:
    config = load_config(write(confdir, f'[metrics]\nlisten = "{value}"\n'))
    assert (config.metrics.host, config.metrics.port) == (host, port)


def test_empty_listen_disables_the_endpoint(confdir: Path) -> None:
    config = load_config(write(confdir, '[metrics]\nlisten = ""\n'))
    assert config.metrics.host is None
    assert config.metrics.listen == ""


@pytest.mark.parametrize(
    "value", ['"8896"', '"127.0.0.1"', '"::1:8896"', '"h:0"', '"h:70000"', "8896"]
)
def test_malformed_listen_is_refused_with_file_key_and_form(confdir: Path, value: str) -> None:
    (problem,) = problems(confdir, f"[metrics]\nlisten = {value}\n")
    assert "key 'metrics.listen': expected 'HOST:PORT', '[IPv6]:PORT' or ''" in problem
    assert str(confdir) in problem


def test_unknown_metrics_key_is_refused(confdir: Path) -> None:
    (problem,) = problems(confdir, "[metrics]\nport = 8896\n")
    assert "metrics.port" in problem
