#!/usr/bin/env bash
# Install what `make test` and `make demo` need, idempotently:
#   1. Debian packages (Postfix, Redis, libmilter, Cyrus SASL, swaks, a C toolchain),
#      installed only if missing. The system's Postfix is installed with "No
#      configuration" and never configured or started: the testbed runs its own
#      private instance under run/.
#   2. The project's virtualenv .venv with `pip install -e '.[test]'`, redone
#      only when pyproject.toml is newer than the last install.
#   3. .venv-intake: the environment of the test bed's mailto intake, made by
#      Debian's /usr/bin/python3 (see below), redone on the same condition.
#   4. .sendmail: Debian's sendmail-bin unpacked (dpkg -x), not installed (see
#      below), for the test bed's private Sendmail; done once.
#   5. .promtool: Debian's prometheus unpacked the same way, for promtool alone.
# Quiet when there is nothing to do. Exits non-zero with a reason on failure.
set -euo pipefail

cd "$(dirname "$0")/.."

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: error: $*" >&2; exit 1; }

PACKAGES=(postfix redis-server redis-tools libmilter-dev sasl2-bin libsasl2-modules swaks build-essential)
# The shared-state tests' Sentinel deployment (testbed/parts/redissentinel.py): Debian
# ships the redis-sentinel command in a package of its own. Where systemd runs, the
# package starts its own sentinel on 26379; the tests never use it (theirs run on
# free loopback ports, from config files of their own).
PACKAGES+=(redis-sentinel)
# The sample and unit tests: m4 with Sendmail's macros (no Sendmail daemon),
# systemd-analyze, and man to render the manual pages.
PACKAGES+=(sendmail-cf systemd man-db)
# The test bed's private Sendmail (testbed/parts/sendmailinstance.py): sendmail-bin
# conflicts with postfix, so it is unpacked into .sendmail/ rather than installed
# (step 4); what it links against comes from Debian as usual, m4 and sendmail-cf
# build its .cf, and util-linux's unshare gives it a host name of its own.
SENDMAIL_DIR=.sendmail
SENDMAIL_BIN="$SENDMAIL_DIR/usr/libexec/sendmail/sendmail"
SENDMAIL_STAMP="$SENDMAIL_DIR/.unpacked-stamp"
PACKAGES+=(m4 util-linux libwrap0 libldap-2.5-0 libnsl2 libdb5.3 libsasl2-2 libssl3)
# The monitoring files' cross-checks: PyYAML under Debian's python3 reads the alert
# rules, and promtool (unpacked from Debian's prometheus into .promtool/, step 5)
# checks them.
PACKAGES+=(python3-yaml)
PROMTOOL_DIR=.promtool
MIN_PYTHON="3.11"
VENV=.venv
STAMP="$VENV/.installed-stamp"

command -v python3 >/dev/null || die "python3 is not on PATH (need Python >= $MIN_PYTHON)"
PYTHON3="$(command -v python3)"

# The test bed's Postfix delivers mailto unsubscribes through pipe(8), which
# runs `aup-milter intake` as `nobody` (pipe never runs commands as root) with
# the interpreter the Debian package runs in production: /usr/bin/python3.
# .venv's interpreter may be one nobody cannot even read (a pyenv build under
# /root). The intake therefore gets an environment of its own, made by that
# interpreter and filled by its own pip, instead of borrowing .venv's
# site-packages: pip evaluates environment markers and builds C extensions for
# the interpreter it runs under, so what it installed for .venv's Python can
# lack what Debian's needs (redis-py requires async-timeout only on Python
# < 3.11.3: Debian 12 has 3.11.2, pyenv builds are often newer). Declaring
# such a package ourselves would fix one symptom and wait for the next.
# That interpreter needs python3-venv for ensurepip and python3-dev for the
# headers pymilter compiles against, whatever runs .venv.
INTAKE_PYTHON=/usr/bin/python3
INTAKE_VENV=.venv-intake
INTAKE_STAMP="$INTAKE_VENV/.installed-stamp"
PACKAGES+=(python3 python3-venv python3-dev)

python_has_headers() {
    python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1
}

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

if ! python_has_headers; then
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

# The same repair-or-create-then-install as for .venv, with the intake's interpreter.
# nobody must be able to read all of it, whatever umask root has.
umask 022
if [[ -d "$INTAKE_VENV" ]] && ! "$INTAKE_VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "$INTAKE_VENV is broken; recreating it"
    rm -rf "$INTAKE_VENV"
fi
if [[ ! -x "$INTAKE_VENV/bin/python" ]]; then
    say "creating $INTAKE_VENV with $INTAKE_PYTHON (the test bed's intake runs it as nobody)"
    "$INTAKE_PYTHON" -m venv "$INTAKE_VENV" || die "$INTAKE_PYTHON -m venv $INTAKE_VENV failed"
fi
if [[ ! -f "$INTAKE_STAMP" || pyproject.toml -nt "$INTAKE_STAMP" ]]; then
    say "installing the project into $INTAKE_VENV (pip install -e .)"
    # Editable: the intake under test is this checkout's code, as in .venv.
    "$INTAKE_VENV/bin/python" -m pip install -q -e . || die "pip install -e . into $INTAKE_VENV failed"
    touch "$INTAKE_STAMP"
fi
# Postfix's pipe transport runs the intake as nobody, and never as root: every folder
# above the checkout must let others in (a clone under /root, mode 700, does not).
# Said now, in words, rather than when the test bed's Postfix starts.
if ! runuser -u nobody -- test -r "$INTAKE_VENV/pyvenv.cfg" 2>/dev/null && [[ "$(id -u)" == 0 ]]; then
    blocked="$(pwd)"
    d="$(pwd)"; while [[ "$d" != "/" ]]; do
        if [[ "$(stat -c %A "$d" | cut -c10)" != "x" && "$(stat -c %A "$d" | cut -c10)" != "t" ]]; then blocked="$d"; fi
        d="$(dirname "$d")"
    done
    echo "bootstrap: warning: nobody cannot enter $blocked, so the test bed's Postfix cannot run" >&2
    echo "bootstrap: warning: the mail intake (pipe transport, user=nobody): the end-to-end tests" >&2
    echo "bootstrap: warning: and make demo need it. Clone the project under a folder others can" >&2
    echo "bootstrap: warning: enter (e.g. /srv/aup-milter), or allow entry: chmod o+x $blocked" >&2
fi

# Step 4. `apt-get download` fetches the .deb from the configured archive (as
# any user, when the package lists are there); dpkg -x unpacks it without
# running its scripts or touching the dpkg database, so Postfix stays.
# unpack_deb PACKAGE DIR BINARY: PACKAGE's files under DIR; BINARY (relative to
# DIR) must find every library it links against.
unpack_deb() {
    local package="$1" dir="$2" binary="$3" tmp deb
    tmp="$(mktemp -d)"
    # apt downloads as its sandbox user _apt when that user can write there.
    if [[ "$(id -u)" == 0 ]]; then chown _apt "$tmp" 2>/dev/null || true; fi
    if ! (cd "$tmp" && apt-get download -q "$package" >/dev/null 2>&1); then
        if [[ "$(id -u)" != 0 ]]; then
            rm -rf "$tmp"
            echo "bootstrap: could not download $package (the test bed unpacks it into $dir)" >&2
            echo "bootstrap: as root, run: apt-get update && bash scripts/bootstrap.sh" >&2
            exit 1
        fi
        apt-get update -q >/dev/null || { rm -rf "$tmp"; die "apt-get update failed"; }
        (cd "$tmp" && apt-get download -q "$package" >/dev/null 2>&1) \
            || { rm -rf "$tmp"; die "apt-get download $package failed"; }
    fi
    deb="$(ls "$tmp"/"$package"_*.deb)"
    rm -rf "$dir.new"
    dpkg -x "$deb" "$dir.new" || { rm -rf "$tmp"; die "dpkg -x $deb failed"; }
    local unresolved
    unresolved="$(ldd "$dir.new/$binary" 2>&1 | grep 'not found' || true)"
    if [[ -n "$unresolved" ]]; then
        rm -rf "$tmp" "$dir.new"
        die "the unpacked $package lacks libraries (add their packages to PACKAGES): $unresolved"
    fi
    dpkg-deb -f "$deb" Version >"$dir.new/.unpacked-stamp"
    rm -rf "$tmp" "$dir"
    mv "$dir.new" "$dir"
}
if [[ ! -x "$SENDMAIL_BIN" || ! -f "$SENDMAIL_STAMP" ]]; then
    say "unpacking Debian's sendmail-bin into $SENDMAIL_DIR (for the test bed; not installed)"
    unpack_deb sendmail-bin "$SENDMAIL_DIR" usr/libexec/sendmail/sendmail
fi
# promtool, to check the shipped alert rules (tests/packaging/test_monitoring.py):
# from Debian's prometheus, unpacked like sendmail-bin so no Prometheus server
# is installed or started.
if [[ ! -x "$PROMTOOL_DIR/usr/bin/promtool" || ! -f "$PROMTOOL_DIR/.unpacked-stamp" ]]; then
    say "unpacking Debian's prometheus into $PROMTOOL_DIR (for promtool; not installed)"
    unpack_deb prometheus "$PROMTOOL_DIR" usr/bin/promtool
fi
