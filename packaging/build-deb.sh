#!/bin/bash
# Builds regfs's Debian package: packaging/build-deb.sh OUTDIR writes
# OUTDIR/regfs_<version>_<arch>.deb and runs lintian on it (errors fail).
# debhelper, with the debian/ tree kept in packaging/debian: the Debian
# tooling users and lintian expect, and dh_installsystemd/dh_installtmpfiles
# write the maintainer scripts for the units and directories.
# The sources (git's tracked and new files, as they are in the work tree) are copied
# to a work directory (REGFS_DEB_WORKDIR, default /var/tmp/regfs-deb-build,
# reused so that ccache hits on a rebuild). Needs the build dependencies
# (packaging/install-deps.sh).
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
WORK=${REGFS_DEB_WORKDIR:-/var/tmp/regfs-deb-build}

VERSION=$(sed -n 's/^project(regfs VERSION \([0-9.]*\).*/\1/p' "$SRC/CMakeLists.txt")
if [[ -z $VERSION ]]; then
  echo "build-deb: no project version in $SRC/CMakeLists.txt" >&2
  exit 1
fi
REVISION=unknown
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
  REVISION=$(git -C "$SRC" describe --always --dirty --abbrev=12)
fi

# One build at a time per work directory.
mkdir -p "$WORK"
exec 9>"$WORK.lock"
flock 9

TREE=$WORK/regfs-$VERSION
rm -rf "$TREE" "$WORK"/*.deb "$WORK"/*.buildinfo "$WORK"/*.changes "$WORK"/*.ddeb
mkdir -p "$TREE"
if [[ $REVISION != unknown ]]; then
  # Tracked and new (not ignored) files; a deleted tracked file is skipped.
  (cd "$SRC" && git ls-files -z --cached --others --exclude-standard |
    grep -zv '^packaging/debian/' |
    tar --null --no-recursion --ignore-failed-read -cf - -T -) | tar -xf - -C "$TREE"
else
  tar -C "$SRC" --exclude='./build*' --exclude=./.git --exclude=./packaging/debian -cf - . |
    tar -xf - -C "$TREE"
fi
cp -r "$SRC/packaging/debian" "$TREE/debian"
cat >"$TREE/debian/changelog" <<CHANGELOG
regfs ($VERSION) unstable; urgency=medium

  * Built from git revision $REVISION.

 -- regfs maintainers <maintainers@users.noreply.r-seed-9069c76d.example>  $(date -R)
CHANGELOG

(cd "$TREE" && REGFS_GIT_REVISION=$REVISION DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" \
  dpkg-buildpackage -b -us -uc >"$WORK/build.log" 2>&1) || {
  tail -40 "$WORK/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed; whole log: $WORK/build.log" >&2
  exit 1
}
ARCH=$(dpkg --print-architecture)
DEB=regfs_${VERSION}_${ARCH}.deb
cp "$WORK/$DEB" "$OUT/$DEB"

# lintian: errors fail the build; warnings are printed.
if command -v lintian >/dev/null; then
  if ! lintian --fail-on error "$OUT/$DEB" >&2; then
    echo "build-deb: lintian reports errors" >&2
    exit 1
  fi
else
  echo "build-deb: lintian is not installed (packaging/install-deps.sh installs it)" >&2
  exit 1
fi
echo "$OUT/$DEB"
