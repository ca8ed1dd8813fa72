#!/usr/bin/env bash
# Build the Debian package offline (make deb): dist/aup-milter_VERSION_all.deb.
#   1. Install the build tools if missing (debhelper, dh-python with the
#      pyproject plugin), like scripts/bootstrap.sh: as root with apt-get,
#      otherwise print the command and stop.
#   2. Copy the working tree (tracked and new files, not what .gitignore
#      ignores) to build/deb/aup-milter-VERSION/, with packaging/debian as debian/.
#   3. dpkg-buildpackage -b there, with Debian's own python3 (not a pyenv or
#      venv interpreter that may come first on PATH).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"

say() { echo "build-deb: $*"; }
die() { echo "build-deb: error: $*" >&2; exit 1; }

# Debian's tools and interpreter only.
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

BUILD_PACKAGES=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools dpkg-dev)

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for pkg in "${BUILD_PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    install_cmd="DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ "$(id -u)" != 0 ]]; then
        echo "build-deb: missing Debian packages: ${missing[*]}" >&2
        echo "build-deb: as root, run: apt-get update && $install_cmd" >&2
        exit 1
    fi
    say "installing build tools: ${missing[*]}"
    apt-get update -q >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${missing[@]}" || die "apt-get install failed for: ${missing[*]}"
fi

command -v git >/dev/null || die "git is needed to list the files of the working tree"

version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
deb_version="$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)"
[[ "${deb_version%-*}" == "$version" ]] \
    || die "packaging/debian/changelog is at $deb_version but pyproject.toml at $version: add a changelog entry"

out="build/deb"
src="$out/aup-milter-$version"
rm -rf "$out"
mkdir -p "$src" dist

# The working tree as it is (tracked files and new, not ignored ones), so a
# build before a commit packages what is being tested.
git ls-files -z --cached --others --exclude-standard \
    | grep -zv '^packaging/debian/' \
    | while IFS= read -r -d '' file; do [[ -e "$file" ]] && printf '%s\0' "$file"; done \
    | tar --null -T - -cf - | tar -xf - -C "$src"
cp -a packaging/debian "$src/debian"

say "building aup-milter $deb_version in $src"
(cd "$src" && dpkg-buildpackage -b -us -uc) > "$out/build.log" 2>&1 || {
    tail -n 40 "$out/build.log" >&2
    die "dpkg-buildpackage failed (full log: $out/build.log)"
}

deb="aup-milter_${deb_version}_all.deb"
[[ -f "$out/$deb" ]] || die "dpkg-buildpackage produced no $out/$deb"
rm -f dist/aup-milter_*_all.deb
cp "$out/$deb" dist/
say "dist/$deb"
