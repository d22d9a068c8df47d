#!/bin/bash
# Installs regfs's build and test dependencies from Debian 12's archive.
# Idempotent: packages already present are left alone. Needs root (or sudo).
set -euo pipefail

PKGS=(
  # build
  build-essential cmake pkg-config ninja-build
  libfuse3-dev fuse3 libcurl4-openssl-dev libsqlite3-dev sqlite3
  nlohmann-json3-dev zlib1g-dev libzstd-dev libssl-dev libcli11-dev
  libisal-dev libdeflate-dev libsystemd-dev
  # registries.conf (TOML)
  libtomlplusplus-dev
  # tests
  libgtest-dev libgmock-dev googletest clang libclang-rt-14-dev
  docker-registry skopeo umoci curl tar libarchive-tools zstd gzip
  iproute2 procps psmisc
  # the Debian package (packaging/build-deb.sh) and its install test
  debhelper lintian debootstrap man-db
  # regfs store: podman pulls and runs through the additional layer store
  podman runc
  # eStargz and zstd:chunked test images (tests/support/toc_images.h):
  # ctr-remote image convert against a private containerd
  stargz-snapshotter containerd
  # benchmarks: the peers we measure against
  httpdirfs archivemount
  # benchmarks over an emulated WAN (tests/bench/wan): a static /bin/sh for
  # the test image, and the plots
  busybox-static gnuplot-nox
)

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
