"""The parts of the test bed's mail path, one class per part; ``testbed.stack.Stack`` composes them.

``RedisServer``, ``MilterDaemon`` and ``UnsubscribeWeb`` are also the
launchers the fast tests use (``tests/support.py``, ``tests/milter/harness.py``,
``tests/web/harness.py``): one way to start Redis, the daemon and the web
service, wherever they run.
"""
