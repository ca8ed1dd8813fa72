"""Fixtures for the end-to-end tests: real Postfix, Redis, aup-milter and an SMTP sink.

The stack is the same :class:`testbed.Stack` that ``make demo`` runs, under
``run/e2e/`` (not /tmp: the ``postfix`` user must be able to traverse to the
milter socket and the sasldb) on ports of its own, so the demo can keep running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed import DEMO_ACCOUNTS, DEMO_SASL_USERS, Stack
from testbed.client import ClientFactory, SmtpClient
from testbed.stack import default_run_dir, port_offset

E2E_RUN_DIR = default_run_dir("e2e")
REDIS_PORT, SMTP_PORT, SINK_PORT = (port + port_offset() for port in (6395, 2535, 2536))

# Short windows, so that a test can watch one slide (the shipped plans' are minutes and more).
E2E_PLANS = """
[plan.e2e-short]
description = "End-to-end tests: a window of 3 recipients per 6 seconds"
max_recipients_per_message = 100

[plan.e2e-short.windows]
sender-recipients-short = { per = "sender", count = "recipients", limit = 3, period = "6s" }
tenant-recipients-hour = { per = "tenant", count = "recipients", limit = 1000, period = "1h" }

[plan.e2e-footer-check]
description = "End-to-end tests: bulk mail must already show the sender's postal address"
max_recipients_per_message = 100
bulk_recipients = 2
footer = "check"

[plan.e2e-footer-check.windows]
tenant-recipients-hour = { per = "tenant", count = "recipients", limit = 1000, period = "1h" }

[plan.e2e-warmup]
description = "End-to-end tests: a new tenant's windows at 10 % on day 1, doubled per day"
max_recipients_per_message = 100

[plan.e2e-warmup.windows]
tenant-recipients-day = { per = "tenant", count = "recipients", limit = 50, period = "1d" }

[plan.e2e-warmup.warmup]
start_percent = 10
factor = 2
step = "1d"
[plan.e2e-onboard]
description = "End-to-end tests: bulk mail needs a verified domain (tenant verify-domain)"
max_recipients_per_message = 100

[plan.e2e-onboard.onboarding]
mode = "enforce"
max_age = "30d"

[plan.e2e-onboard.windows]
tenant-recipients-hour = { per = "tenant", count = "recipients", limit = 1000, period = "1h" }

[plan.e2e-consent]
description = "End-to-end tests: the consent ledger enforced, a 30-day lapse"
max_recipients_per_message = 100
bulk_recipients = 2

[plan.e2e-consent.consent]
mode = "enforce"
lapse = "30d"
new_recipient_share = 0.5
new_recipient_min = 5

[plan.e2e-consent.windows]
tenant-recipients-hour = { per = "tenant", count = "recipients", limit = 1000, period = "1h" }
"""

# A SASL account that authenticates fine but belongs to no tenant.
STRANGER = ("stranger", "stranger-pw")
PASSWORDS = {account.tenant.id: account.password for account in DEMO_ACCOUNTS}


@pytest.fixture(scope="session")
def session_stack() -> Iterator[Stack]:
    stack = Stack(
        E2E_RUN_DIR,
        redis_port=REDIS_PORT,
        smtp_port=SMTP_PORT,
        sink_port=SINK_PORT,
        sasl_users={**DEMO_SASL_USERS, STRANGER[0]: STRANGER[1]},
        extra_plans=E2E_PLANS,
        unsubscribe=True,
    )
    # A previous run that was killed may have left its stack running: start clean.
    stack.start(clean=True)
    try:
        yield stack
    finally:
        stack.stop()


def reset(stack: Stack) -> None:
    """The state every test starts from: Redis up, demo tenants active, empty hold queue."""
    stack.start_redis()
    stack.add_demo_tenants()
    stack.clear_rate_windows()
    stack.delete_queued("hold")


@pytest.fixture
def stack(session_stack: Stack) -> Iterator[Stack]:
    """The session's stack, reset before and after the test (tests change tenant state)."""
    reset(session_stack)
    yield session_stack
    reset(session_stack)


@pytest.fixture
def stranger() -> tuple[str, str]:
    """Login and password of a SASL account that belongs to no tenant."""
    return STRANGER


@pytest.fixture
def connect(stack: Stack) -> Iterator[ClientFactory]:
    """Open SMTP connections to the relay, optionally authenticated; all closed afterwards.

    ``connect()`` is unauthenticated; ``connect("acme")`` logs in as a demo
    tenant; ``connect(user, password, mechanism="LOGIN")`` as anyone.
    """
    opened: list[SmtpClient] = []

    def open_client(
        user: str | None = None, password: str | None = None, mechanism: str = "PLAIN"
    ) -> SmtpClient:
        client = SmtpClient(stack.host, stack.smtp_port)
        opened.append(client)
        if user is not None:
            secret = password if password is not None else PASSWORDS[user]
            assert mechanism in ("PLAIN", "LOGIN")
            reply = client.login(user, secret, "PLAIN" if mechanism == "PLAIN" else "LOGIN")
            assert reply.code == 235, f"AUTH as {user} failed: {reply}"
        return client

    yield open_client
    for client in opened:
        client.close()
