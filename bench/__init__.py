"""The benchmark behind ``make bench``: bare Postfix against Postfix + aup-milter.

See :mod:`bench.run` and ``bench/README.md``.
"""
