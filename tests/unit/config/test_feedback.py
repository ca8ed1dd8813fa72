"""Config section [feedback_id]: optional, its relay id required and in Gmail's form."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import FeedbackIdSettings, load_config
from tests.unit.configfiles import problems, write


def test_off_without_the_section(confdir: Path) -> None:
    assert load_config(write(confdir, "")).feedback_id is None


def test_relay_id(confdir: Path) -> None:
    config = load_config(write(confdir, '[feedback_id]\nrelay_id = "relay-eu_1"\n'))
    assert config.feedback_id == FeedbackIdSettings("relay-eu_1")


@pytest.mark.parametrize(
    "value", ['"abcd"', '"abcdefghijklmnop"', '"relay:1"', '"relay 1"', '"r\\u00e9lay1"', "12345"]
)
def test_bad_relay_id_names_file_key_and_form(confdir: Path, value: str) -> None:
    found = problems(confdir, f"[feedback_id]\nrelay_id = {value}\n")
    assert len(found) == 1, found
    assert str(confdir / "aup-milter.toml") in found[0]
    assert "key 'feedback_id.relay_id'" in found[0]
    assert "expected 5 to 15 letters, digits, '-' or '_'" in found[0]


def test_relay_id_is_required_and_unknown_keys_refused(confdir: Path) -> None:
    found = problems(confdir, '[feedback_id]\nsender_id = "relay1"\n')
    assert sorted(p.split("'")[1] for p in found) == [
        "feedback_id.relay_id",
        "feedback_id.sender_id",
    ]
