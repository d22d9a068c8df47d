#!/bin/bash
# Makes a fresh Debian 12 root for package_test: tests/packaging/debian_root.sh
# CACHE ROOT unpacks CACHE/bookworm.tar (a debootstrap --variant=minbase
# root with systemd, man-db and ca-certificates, as a Debian 12 machine
# has them) into ROOT, making the tarball first if it is missing (about 2.5
# minutes with Debian's archive; later runs take seconds). Needs root and
# debootstrap; uses only Debian's archive.
set -euo pipefail
CACHE=$1
ROOT=$2
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9
if [[ ! -s $CACHE/bookworm.tar ]]; then
  tmp=$(mktemp -d "$CACHE/bootstrap.XXXXXX")
  start=$(date +%s)
  if ! debootstrap --variant=minbase --include=systemd,man-db,ca-certificates bookworm \
    "$tmp/root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
    tail -20 "$CACHE/debootstrap.log" >&2
    rm -rf "$tmp"
    exit 1
  fi
  tar -C "$tmp/root" -cf "$tmp/bookworm.tar" .
  mv "$tmp/bookworm.tar" "$CACHE/bookworm.tar"
  rm -rf "$tmp"
  echo "debian_root: debootstrap took $(($(date +%s) - start)) s (cached in $CACHE/bookworm.tar)"
fi
mkdir -p "$ROOT"
start=$(date +%s%N)
tar -C "$ROOT" -xf "$CACHE/bookworm.tar"
echo "debian_root: unpacked in $((($(date +%s%N) - start) / 1000000)) ms"
