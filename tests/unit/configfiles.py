"""Writing a config file (and extra plan files) for the config tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(confdir: Path, text: str, plans: str = "") -> Path:
    """``aup-milter.toml`` holding ``text``; ``plans`` goes to ``policies/extra.toml``."""
    if plans:
        (confdir / "policies" / "extra.toml").write_text(plans)
    path = confdir / "aup-milter.toml"
    path.write_text(text)
    return path


def problems(confdir: Path, text: str, plans: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(confdir, text, plans))
    return info.value.problems
