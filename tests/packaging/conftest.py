"""The installed-package tests run only where `make test-deb` asks for them.

They install the built .deb system-wide, start the installed daemon and purge
the package again, so a plain `pytest` run (make test) deselects them: they
are not skipped, they are not part of that run. `make test-deb` names the
package in AUP_DEB_PACKAGE and runs them.
"""

from __future__ import annotations

import os

import pytest

DEB_PACKAGE_ENV = "AUP_DEB_PACKAGE"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(DEB_PACKAGE_ENV):
        return
    deselected = [item for item in items if item.get_closest_marker("deb")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("deb")]
