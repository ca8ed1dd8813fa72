"""The documented Postfix settings (postfix-sample/) are the ones the tests run with."""

from __future__ import annotations

import pytest

from testbed import Stack
from testbed.postfix import snippet_settings

pytestmark = pytest.mark.e2e


def test_sample_milter_settings_are_in_effect(stack: Stack) -> None:
    documented = snippet_settings(stack.milter_socket)
    assert "smtpd_milters" in documented

    assert stack.postconf(*documented) == documented


def test_generated_config_has_no_unknown_or_duplicate_parameters(stack: Stack) -> None:
    # Postfix ignores a misspelt parameter with only a warning: catch it here.
    assert stack.postconf_warnings() == []
