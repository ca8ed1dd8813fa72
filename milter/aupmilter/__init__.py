"""aup-milter: enforce a bulk-email Acceptable Use Policy on a shared outbound relay."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aup-milter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
