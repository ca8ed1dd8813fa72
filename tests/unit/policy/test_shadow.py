"""Which mode a tenant's mail runs in: its own `mode` field, else its plan's."""

from __future__ import annotations

import pytest

from aupmilter.policy.tenancy import TenantRecord


@pytest.mark.parametrize(
    ("tenant_mode", "plan_mode", "shadow"),
    [
        ("", "enforce", False),
        ("", "shadow", True),
        ("shadow", "enforce", True),
        ("enforce", "shadow", False),
        ("Shadow", "enforce", False),  # not the word: enforce
        ("shadw", "shadow", False),  # a typo never switches enforcement off
    ],
)
def test_tenant_field_wins_and_anything_unknown_enforces(
    tenant_mode: str, plan_mode: str, shadow: bool
) -> None:
    record = TenantRecord("acme", status="active", plan="standard", mode=tenant_mode)
    assert record.shadow(plan_mode) is shadow
