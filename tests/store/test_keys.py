"""Every Redis key and tenant-hash field is spelled in store/keys.py; the hash is parsed once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aupmilter.policy.limits import LimitOverrides
from aupmilter.policy.tenancy import TenantRecord
from aupmilter.store import keys
from aupmilter.store.tenants import limit_overrides, tenant_record

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "milter" / "aupmilter"
SCRIPTS = PACKAGE / "store" / "scripts"
FIELDS = {value for name, value in vars(keys).items() if name.startswith("FIELD_")}


def lua_code(path: Path) -> str:
    """The script without its comments: the headers document keys, the code gets them passed."""
    lines = path.read_text("utf-8").splitlines()
    return "\n".join(line.split("--", 1)[0] for line in lines)


def test_no_other_module_spells_a_key() -> None:
    texts = {path: path.read_text("utf-8") for path in PACKAGE.rglob("*.py")}
    texts |= {path: lua_code(path) for path in SCRIPTS.glob("*.lua")}
    spelled = [
        str(path.relative_to(ROOT))
        for path, text in sorted(texts.items())
        if path != PACKAGE / "store" / "keys.py" and keys.PREFIX in text
    ]
    assert spelled == []


def test_the_field_the_mail_from_script_spells_is_the_one_in_keys() -> None:
    code = lua_code(SCRIPTS / "sender_state.lua")
    spelled = set(re.findall(r"fields\[f\] == '([^']*)'", code))
    assert spelled == {keys.FIELD_PLAN}
    assert spelled <= FIELDS


def test_the_keys_docstring_lists_every_field() -> None:
    doc = keys.__doc__ or ""
    listed = doc.split("Fields of aup:tenant:<id>", 1)[1].split("\n\n", 2)[1]
    for name in FIELDS:
        assert re.search(rf"(^|, ){re.escape(name)}", listed, re.MULTILINE), name


def test_a_missing_hash_parses_as_a_record_that_does_not_exist() -> None:
    assert tenant_record("ghost", {}) == TenantRecord("ghost", exists=False)


def test_the_record_keeps_only_what_the_policy_reads() -> None:
    record = tenant_record(
        "acme",
        {
            "status": "active",
            "plan": "standard",
            "reason": "",
            "created_at": "1700000000",
            "allowed_domains": " Crm.Example,,help.example  not..a.domain [1.2.3.4]",
        },
        ["acme.example"],
    )
    assert record == TenantRecord(
        "acme",
        status="active",
        plan="standard",
        domains=frozenset({"acme.example"}),
        allowed_domains=frozenset({"crm.example", "help.example"}),
    )


@pytest.mark.parametrize(
    ("fields", "overrides"),
    [
        ({}, LimitOverrides()),
        ({"status": "active", "max_recipients_per_message": "5"}, LimitOverrides(5)),
        ({"window.a": "0", "window.b": "7"}, LimitOverrides(None, {"a": 0, "b": 7})),
        (
            {"max_recipients_per_message": "-1", "window.a": "1" * 13},
            LimitOverrides(
                problems=(
                    "field 'max_recipients_per_message' must be a whole number, got '-1'",
                    "field 'window.a' must be a whole number, got '1111111111111'",
                )
            ),
        ),
    ],
)
def test_limit_overrides(fields: dict[str, str], overrides: LimitOverrides) -> None:
    assert limit_overrides(fields) == overrides
