"""A private mail path for the demo and the end-to-end tests.

Redis, aup-milter, a private Postfix instance and an SMTP sink, all under one
run folder; see :class:`testbed.stack.Stack`.
"""

from testbed.proc import TestbedError
from testbed.stack import SinkMessage, Stack
from testbed.tenants import DEMO_ACCOUNTS, DEMO_SASL_USERS, Tenant

__all__ = ["DEMO_ACCOUNTS", "DEMO_SASL_USERS", "SinkMessage", "Stack", "Tenant", "TestbedError"]
