"""The parts of the test bed's mail path, one class per part; ``testbed.stack.Stack`` composes them.

``RedisServer`` and ``MilterDaemon`` are also the launchers the fast tests
use (``tests/support.py``, ``tests/milter/harness.py``): one way to start
Redis and one way to start the daemon, wherever they run.
"""
