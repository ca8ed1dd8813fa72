"""Fixtures of the unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.configfiles import ROOT


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    """A config folder with the shipped plans in ``policies/``."""
    (tmp_path / "policies").mkdir()
    shutil.copy(ROOT / "policies" / "plans.toml", tmp_path / "policies" / "plans.toml")
    return tmp_path
