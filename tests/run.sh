#!/bin/bash
# Builds regfs and runs every test: the sanitizer builds of the library tests
# (ASan+UBSan, TSan) first, then the full suite. Installs what it needs.
# Usage: tests/run.sh            (from a fresh Debian 12 machine, as root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-$(nproc)}

bash packaging/install-deps.sh

# Library tests under sanitizers. FUSE and integration tests run in the plain
# build only: they exec the daemon and tools, which sanitizers would slow ~5x.
SAN_TESTS=(base_tests image_tests http_tests cache_tests layer_tests fs_tests)
# fs_tests under sanitizers: the tree, layer trees, merge and layer
# lifecycle; the suites that mount stay in the plain build (libfuse itself
# is not instrumented), and so do the session holder's, which fork the test
# process and signal it (sanitizers defer signals to their own points).
FS_SAN_FILTER='-FuseDaemonTrustTest.*:ImageFsLifecycleTest.*:ImageFsMountTest.*:SessionHolderTest.*'

run_sanitized() {
  local dir=$1; shift
  # -O1: sanitizer builds compile faster and still run the tests quickly.
  cmake -S "$ROOT" -B "$dir" -G Ninja -DREGFS_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
    -DREGFS_BUILD_BENCH=OFF "$@" >/dev/null
  local targets=() all
  # Listed once into a variable: `ninja | grep -q` under pipefail fails when
  # grep exits early and ninja gets SIGPIPE.
  all=$(ninja -C "$dir" -t targets all)
  for t in "${SAN_TESTS[@]}"; do
    if grep -q "^tests/$t:" <<<"$all"; then targets+=("$t"); fi
  done
  if [[ ${#targets[@]} -ne ${#SAN_TESTS[@]} ]]; then
    echo "tests/run.sh: sanitizer targets missing: have ${targets[*]}, want ${SAN_TESTS[*]}" >&2
    exit 1
  fi
  ninja -C "$dir" -j "$JOBS" "${targets[@]}"
  for t in "${targets[@]}"; do
    echo "== $dir: $t"
    local filter=()
    if [[ $t == fs_tests ]]; then filter=(--gtest_filter="$FS_SAN_FILTER"); fi
    "$dir/tests/$t" --gtest_brief=1 "${filter[@]}"
  done
}
if [[ "${REGFS_SKIP_SANITIZERS:-0}" != 1 ]]; then
  ASAN_OPTIONS=detect_leaks=1 run_sanitized build-asan -DREGFS_ASAN=ON
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" run_sanitized build-tsan -DREGFS_TSAN=ON
fi

# Fuzz smoke: a short libFuzzer run of each target (clang builds them).
if [[ "${REGFS_SKIP_FUZZ:-0}" != 1 ]] && command -v clang++-14 >/dev/null; then
  CC=clang-14 CXX=clang++-14 cmake -S "$ROOT" -B build-fuzz -G Ninja -DREGFS_BUILD_FUZZ=ON \
    -DREGFS_BUILD_TESTS=OFF -DREGFS_BUILD_BENCH=OFF -DREGFS_WERROR=ON >/dev/null
  FUZZ_TARGETS=(tar_header_fuzz index_builder_fuzz layer_tree_fuzz rootfs_merge_fuzz toc_fuzz)
  ninja -C build-fuzz -j "$JOBS" "${FUZZ_TARGETS[@]}"
  for f in "${FUZZ_TARGETS[@]}"; do
    echo "== fuzz smoke: $f"
    # Seeds (tests/fuzz/corpus/<target>/, the hostile cases) are copied: a
    # run adds what it finds to its corpus directory.
    corpus=$(mktemp -d)
    if [[ -d tests/fuzz/corpus/$f ]]; then cp tests/fuzz/corpus/$f/* "$corpus"/; fi
    # A fixed seed: CI replays the same inputs each run (deeper, random runs
    # are done by hand); on a failure the whole report is printed.
    log=$(mktemp)
    if ! build-fuzz/tests/$f -seed=1 -runs=20000 -max_total_time=10 "$corpus" >"$log" 2>&1; then
      grep -v '^regfs ' "$log" | tail -60
      rm -rf "$corpus" "$log"
      exit 1
    fi
    tail -2 "$log"
    rm -rf "$corpus" "$log"
  done
fi

cmake -S "$ROOT" -B build -G Ninja -DREGFS_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j "$JOBS"
ctest --test-dir build --output-on-failure -j "$JOBS"
