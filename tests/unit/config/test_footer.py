"""A plan's `footer` key: "check" | "insert" | "off", or a `[plan.NAME.footer]` table."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from aupmilter.policy.footer import FooterMode, FooterPlan, Oversize
from tests.unit.configfiles import problems, write


def test_short_form_table_form_and_default(confdir: Path) -> None:
    (confdir / "policies" / "extra.toml").write_text(
        '[plan.lists]\nfooter = "check"\n'
        '[plan.news.footer]\nmode = "insert"\nmax_part_bytes = 4096\noversize = "refuse"\n'
        "max_depth = 3\nmax_parts = 20\n"
    )
    plans = load_config(write(confdir, "")).plans
    assert plans["lists"].footer == FooterPlan(mode=FooterMode.CHECK)
    assert plans["news"].footer == FooterPlan(
        mode=FooterMode.INSERT,
        max_part_bytes=4096,
        oversize=Oversize.REFUSE,
        max_depth=3,
        max_parts=20,
    )
    assert plans["standard"].footer == FooterPlan(mode=FooterMode.OFF)
    assert plans["newsletter"].footer.mode is FooterMode.INSERT


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ('footer = "yes"', "plan.lists.footer", "'check', 'insert' or 'off', or a table"),
        ("footer = 3", "plan.lists.footer", "'check', 'insert' or 'off', or a table"),
        ('[plan.lists.footer]\nmode = "on"', "plan.lists.footer.mode", "'check', 'insert'"),
        (
            "[plan.lists.footer]\nmax_part_bytes = 10",
            "plan.lists.footer.max_part_bytes",
            "a whole number of bytes from 1024 to 67108864",
        ),
        (
            '[plan.lists.footer]\noversize = "skip"',
            "plan.lists.footer.oversize",
            "'check' or 'refuse'",
        ),
        ("[plan.lists.footer]\nmax_depth = 0", "plan.lists.footer.max_depth", "from 1 to 50"),
        ("[plan.lists.footer]\nmax_parts = 0", "plan.lists.footer.max_parts", "from 1 to 10000"),
        ("[plan.lists.footer]\nplacement = 1", "plan.lists.footer.placement", "unknown key"),
    ],
)
def test_bad_values_name_file_key_and_form(
    confdir: Path, body: str, key: str, expected: str
) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text(f"[plan.lists]\n{body}\n")
    found = problems(confdir, "")
    assert len(found) == 1, found
    assert str(extra) in found[0] and f"'{key}'" in found[0]
    assert expected in found[0]
