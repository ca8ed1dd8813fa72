#!/usr/bin/env bash
# Install what `make test` and `make demo` need, idempotently:
#   1. Debian packages (Postfix, Redis, libmilter, Cyrus SASL, swaks, a C toolchain),
#      installed only if missing. The system's Postfix is installed with "No
#      configuration" and never configured or started: the testbed runs its own
#      private instance under run/.
#   2. The project's virtualenv .venv with `pip install -e '.[test]'`, redone
#      only when pyproject.toml is newer than the last install.
# Quiet when there is nothing to do. Exits non-zero with a reason on failure.
set -euo pipefail

cd "$(dirname "$0")/.."

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: error: $*" >&2; exit 1; }

PACKAGES=(postfix redis-server redis-tools libmilter-dev sasl2-bin libsasl2-modules swaks build-essential)
# The sample and unit tests: m4 with Sendmail's macros (no Sendmail daemon),
# systemd-analyze, and man to render the manual pages.
PACKAGES+=(sendmail-cf systemd man-db)
MIN_PYTHON="3.11"
VENV=.venv
STAMP="$VENV/.installed-stamp"

command -v python3 >/dev/null || die "python3 is not on PATH (need Python >= $MIN_PYTHON)"
PYTHON3="$(command -v python3)"

# Debian's own python3 needs python3-venv for ensurepip and python3-dev for the
# headers pymilter compiles against; another python3 (pyenv, a container's
# /usr/local build) brings both itself, and must not trigger those packages.
python_is_debian() {
    # Ask the interpreter, not its path: a pyenv shim may select the system Python.
    python3 -c 'import sys; raise SystemExit(sys.base_prefix != "/usr")' >/dev/null 2>&1
}
python_has_venv() { python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }
python_has_headers() {
    python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1
}
if python_is_debian; then
    python_has_venv || PACKAGES+=(python3-venv)
    python_has_headers || PACKAGES+=(python3-dev)
fi

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]})); then
    install_cmd="DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ "$(id -u)" != 0 ]]; then
        echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
        echo "bootstrap: as root, run:" >&2
        echo "  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections" >&2
        echo "  apt-get update && $install_cmd" >&2
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    # "No configuration": the package installs binaries only; no /etc/postfix/main.cf
    # is written and no system mail service is set up.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -q >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed for: ${missing[*]}"
fi

if ! python_is_debian && ! python_has_headers; then
    die "$PYTHON3 has no C headers (Python.h); pymilter is built from source and needs them"
fi

python3 -c "import sys; raise SystemExit(sys.version_info < (${MIN_PYTHON/./, }))" \
    || die "$PYTHON3 is Python $(python3 -c 'import platform; print(platform.python_version())'); need >= $MIN_PYTHON"

# A venv whose interpreter went away (e.g. the Python it was made from was
# replaced) cannot be repaired in place: make it again.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "$VENV is broken; recreating it"
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV with $PYTHON3"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
fi

if [[ ! -f "$STAMP" || pyproject.toml -nt "$STAMP" ]]; then
    say "installing the project into $VENV (pip install -e '.[test]')"
    "$VENV/bin/python" -m pip install -q -e '.[test]' || die "pip install -e '.[test]' failed"
    touch "$STAMP"
fi
