#!/bin/bash
# The one benchmark entry point (README, "Performance").
#
#   tests/bench/run_all.sh [--wan] [--wan-only] [--no-build] [--out DIR]
#
# Installs the dependencies (packaging/install-deps.sh), builds regfs and the
# benchmark programs (in $BUILD_DIR, default build-bench), runs every
# tests/bench/*.cc program on loopback and, with --wan, the WAN scenarios of
# tests/bench/wan/wan_bench.sh over two emulated links (20 ms RTT / 200 Mbit/s
# and 80 ms RTT / 50 Mbit/s; among them store_bench's podman pull + run, normal
# and through `regfs store`, and toc_bench's cold eStargz image) and draws
# their plots. Results go to DIR (default $BUILD_DIR/bench-results/<UTC
# time>): results.jsonl (one JSON object per figure), results.md (the Markdown
# tables, also printed), one .txt per program, and with --wan ttfr.png,
# throughput-*.png and toc.png.
#
# toc_bench (issue 16: a cold eStargz image through `regfs mount` and `regfs
# store` against skopeo+umoci and podman) converts its image with ctr-remote
# and a private containerd (packages stargz-snapshotter, containerd).
#
# Each program runs under a time bound; a failing program is reported and the
# run goes on; the exit status is non-zero if any failed. Needs root (FUSE,
# network namespaces, dropping the page cache).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-build-bench}
WAN=0 LOCAL=1 BUILD=1 OUT=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --wan) WAN=1 ;;
    --wan-only) WAN=1 LOCAL=0 ;;
    --no-build) BUILD=0 ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: $0 [--wan] [--wan-only] [--no-build] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
# Every tests/bench/*.cc is a benchmark program of the same name.
BENCHES=()
for src in tests/bench/*.cc; do BENCHES+=("$(basename "$src" .cc)"); done

if ((BUILD)); then
  bash packaging/install-deps.sh >&2 || exit 1
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DREGFS_WERROR=ON >/dev/null || exit 1
  ninja -C "$BUILD_DIR" regfs "${BENCHES[@]}" >&2 || exit 1
fi
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
OUT=${OUT:-$BUILD_DIR/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export REGFS_BENCH_JSON=$OUT/results.jsonl
export REGFS_BINARY=$BUILD_DIR/cli/regfs
: >"$REGFS_BENCH_JSON"
MACHINE="$(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r)"
echo "run_all: results in $OUT; $(date -u '+%Y-%m-%d %H:%M UTC'); $MACHINE"

failed=()
if ((LOCAL)); then
  for b in "${BENCHES[@]}"; do
    bin=$BUILD_DIR/tests/$b
    echo "== $b"
    if [[ ! -x $bin ]]; then
      echo "  not built: $bin"
      failed+=("$b")
      continue
    fi
    timeout --kill-after=30 900 "$bin" 2>&1 | tee "$OUT/$b.txt"
    rc=${PIPESTATUS[0]}
    if ((rc != 0)); then
      echo "  $b exited with $rc"
      failed+=("$b")
    fi
  done
fi

if ((WAN)); then
  for prof in "wan-20ms-200mbit 20 200" "wan-80ms-50mbit 80 50"; do
    read -r name rtt rate <<<"$prof"
    echo "== $name"
    REGFS=$BUILD_DIR/cli/regfs timeout --kill-after=30 1800 \
      bash tests/bench/wan/wan_bench.sh "$name" "$rtt" "$rate" "$OUT" 2>&1 |
      tee "$OUT/$name.txt"
    rc=${PIPESTATUS[0]}
    if ((rc != 0)); then
      echo "  $name exited with $rc"
      failed+=("$name")
    fi
  done
  bash tests/bench/wan/plots.sh "$OUT" "$(date -u '+%Y-%m-%d'), $MACHINE" ||
    failed+=(plots)
  rm -rf "$OUT/image"  # the rootfs image wan_bench.sh built (large)
fi

python3 tests/bench/wan/report.py "$REGFS_BENCH_JSON" >"$OUT/results.md"
echo
echo "## Results ($(date -u '+%Y-%m-%d'), $MACHINE)"
echo
cat "$OUT/results.md"
if ((${#failed[@]})); then
  echo "run_all: FAILED: ${failed[*]}"
  exit 1
fi
echo "run_all: all passed"
